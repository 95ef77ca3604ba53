"""`agman demo`: the whole system on the synthetic set (the pipeline is :mod:`agman.engine.demo`)."""
from __future__ import annotations

import argparse

from agman.cli.train import add_override_argument

DEMO_CONFIG = "configs/synthetic/demo.yaml"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="generate the synthetic set, train AG-MAN, evaluate and write a report (CPU, minutes)",
        description="The whole system in one command: renders the synthetic garments (if absent), trains AG-MAN "
                    f"with {DEMO_CONFIG}, evaluates it on the test split against the untrained "
                    "network, a colour-histogram ranking and random ranking, and writes a report folder with "
                    "tables, training curves, top-10 retrieval grids and attention heatmaps.",
    )
    p.add_argument("--out", default="agman-demo", help="report folder (default agman-demo)")
    p.add_argument("--data", help="synthetic set folder (default: data.root of the config, data/synthetic)")
    p.add_argument("--config", default=DEMO_CONFIG, help=f"config (default {DEMO_CONFIG})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_override_argument(p)
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from agman.engine import demo

    config = demo.demo_config(args.config, args.out, args.overrides, data=args.data, progress=not args.no_progress)
    result = demo.run_demo(config, args.out, announce=lambda line: print(line, flush=True))
    if result.interrupted:
        print(f"stopped; resume the training with: agman train --resume {result.run_dir}")
        return 130
    s = result.seconds
    print(f"\n{result.table}\n\n{result.verdict}" + (f"\n\n{result.versus}." if result.versus else "")
          + (f"\n\n{result.where}." if result.where else ""))
    print(f"\nreport: {result.out}/report.md (metrics.md, curves.png, grids/, attention/); "
          f"total {s['total'] / 60:.1f} min (data {s['data']:.0f} s, training {s['training']:.0f} s)")
    return 0
