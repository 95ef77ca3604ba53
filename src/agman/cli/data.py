"""`agman data ...`: check a dataset, import a catalog CSV, render the synthetic set."""
from __future__ import annotations

import argparse
import json

from agman.cli import data_cache, data_synth
from agman.cli.datasets import add_dataset_arguments, open_from_args


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="dataset tools: check, import-csv, synth")
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")

    check = sub.add_parser(
        "check",
        help="print counts per split/attribute/value and every problem; exit 1 on problems",
        description="Open a dataset, print its counts (per value, by name) and list every problem found "
        "(missing/unreadable/over-limit images, values with a single image, queries without candidates, "
        "a train split that cannot form a triplet). Exit code 0 when clean, 1 when problems were found "
        "or a file is malformed (the message names it, on stderr).",
    )
    add_dataset_arguments(check)
    check.add_argument("--no-images", action="store_true", help="skip opening the image files")
    check.add_argument("--workers", type=int, default=8, help="threads for image checks (default 8)")
    check.add_argument(
        "--json", action="store_true", help="print the report as JSON (schema agman/data-check/1, docs/data.md)"
    )
    check.set_defaults(func=run_check)

    imp = sub.add_parser(
        "import-csv",
        help="split a catalog CSV (path,<attr>,...) 8:1:1 and write it in the ASEN layout",
    )
    imp.add_argument("csv", help="catalog CSV: header 'path,<attribute1>,...'; empty cell = not annotated")
    imp.add_argument("--out", required=True, help="output folder (ASEN layout)")
    imp.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    imp.set_defaults(func=run_import_csv)

    data_synth.register(sub)
    data_cache.register(sub)
    data.set_defaults(func=lambda args: data.print_help() or 2)


def run_check(args: argparse.Namespace) -> int:
    from agman.data.check import check_dataset

    spec = open_from_args(args, allow_singletons=True)
    report = check_dataset(spec, check_images=not args.no_images, workers=args.workers)
    print(json.dumps(report.to_json(), indent=1, ensure_ascii=False) if args.json else report.to_text())
    return 0 if report.ok else 1


def run_import_csv(args: argparse.Namespace) -> int:
    from agman.data.layouts import read_catalog_csv, write_asen

    spec = read_catalog_csv(args.csv, seed=args.seed)
    out = write_asen(spec, args.out)
    counts = ", ".join(f"{name} {len(s)}" for name, s in spec.splits.items())
    print(f"wrote {out} (ASEN layout): {counts} images; {spec.n_attributes} attributes")
    return 0
