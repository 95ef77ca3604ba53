"""The ``agman`` command: one entry point; each sub-command lives in its own module of this package.

A command module exposes ``register(subparsers)``; it adds its parser(s) and sets ``func`` to a
function taking the parsed arguments and returning an exit code.  The CLI is thin: it parses,
calls one function of the layer below, and formats the answer.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from agman.errors import AgmanError, UsageError

# Sub-command modules, in the order they are listed by --help.
COMMAND_MODULES = ("data", "models", "train", "demo", "retrieval", "serve")


class CLIError(UsageError):
    """A wrong command line: printed as ``agman: error: <message>`` with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agman", description="Attribute-specific fashion retrieval (AG-MAN and baselines)."
    )
    from agman import __version__

    parser.add_argument("--version", action="version", version=f"agman {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"agman.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_rank = os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 reports progress
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if quiet_rank else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except AgmanError as exc:  # the one place errors become messages; anything else is a bug
        print(f"agman: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
