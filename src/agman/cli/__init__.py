"""The ``agman`` command: one entry point; each sub-command lives in its own module of this package.

A command module exposes ``register(subparsers)``; it adds its parser(s) and sets ``func`` to a
function taking the parsed arguments and returning an exit code.  The CLI is thin: it parses,
calls one function of the layer below, and formats the answer.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import json
import logging
import math
import os
import sys

from agman.errors import AgmanError, UsageError

# Sub-command modules, in the order they are listed by --help.
COMMAND_MODULES = ("data", "models", "train", "demo", "index", "search", "attention", "compare", "serve",
                   "import_export")


class CLIError(UsageError):
    """A wrong command line: printed as ``agman: error: <message>`` with exit code 2."""


class _StoreOnce(argparse._StoreAction):
    """An option that takes one value refuses a second one (argparse would silently keep the last)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_agman_given", set())
        if self.dest in given:
            parser.error(f"{'/'.join(self.option_strings)} given twice: it takes one value "
                         "(the options that may repeat say so in --help)")
        given.add(self.dest)
        super().__call__(parser, namespace, values, option_string)


class Parser(argparse.ArgumentParser):
    """``agman``'s argument parser (and its sub-commands'): every option that takes one value
    (``store``) refuses to be given twice; options meant to repeat use ``action="append"`` and
    combine; flags may repeat harmlessly."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def parse_known_args(self, args=None, namespace=None):
        namespace, rest = super().parse_known_args(args, namespace)
        namespace.__dict__.pop("_agman_given", None)
        return namespace, rest


def print_json(data) -> None:
    """One JSON document on stdout: strict (no NaN or Infinity: they become null), UTF-8 as is."""
    print(json.dumps(_finite(data), indent=1, ensure_ascii=False, allow_nan=False))


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    stdout, sys.stdout = sys.stdout, _Output(sys.stdout)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit: a full disk under `> file` is reported like any error
        return code
    except AgmanError as exc:  # the one place errors become messages; anything else is a bug
        print(f"agman: error: {exc}", file=sys.stderr)
        if isinstance(exc, OutputError):
            _drop_output(stdout)
        return exc.exit_code
    except OSError as exc:  # a write the machine refused (disk full, quota, I/O error): not a bug
        if exc.errno not in WRITE_ERRORS:
            raise
        print(f"agman: error: could not write {exc.filename or 'a file'}: {exc.strerror}", file=sys.stderr)
        return 1
    finally:
        sys.stdout = stdout


WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}
"""``OSError`` numbers of a write the machine refused, reported in one line (exit 1)."""


class OutputError(AgmanError):
    """The command's output could not be written to stdout (``> file`` on a full disk)."""


class _Output:
    """``sys.stdout`` while a command runs: a write the machine refuses becomes an
    :class:`OutputError` (one line, exit 1) rather than a traceback."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise _output_error(exc) from None

    def flush(self):
        try:
            self._stream.flush()
        except OSError as exc:
            raise _output_error(exc) from None

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _output_error(exc: OSError) -> Exception:
    if exc.errno not in WRITE_ERRORS:
        return exc
    return OutputError(f"could not write the output (stdout): {exc.strerror}")


def _drop_output(stream) -> None:
    """Send what ``stream`` (stdout) still buffers to ``/dev/null``: the interpreter's flush at exit
    would fail again, with a traceback."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):  # a stdout without a descriptor (captured)
        pass
