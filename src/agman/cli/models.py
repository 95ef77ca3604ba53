"""`agman models`: list the registered models with their trainable parameter counts."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the models with parameter counts")
    parser.add_argument("--attributes", type=int, default=8, metavar="N",
                        help="number of attributes to count for (default 8, FashionAI)")
    parser.add_argument("--backbone", default="resnet50", choices=("resnet18", "resnet34", "resnet50", "resnet101"),
                        help="backbone (default resnet50)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agman.models.agman import released_code_parameter_count
    from agman.models.registry import describe_models

    rows = describe_models(args.attributes, backbone=args.backbone)
    width = max(len(name) for name, _, _ in rows)
    print(f"{'model':<{width}}  {'parameters':>12}  description")
    for name, count, description in rows:
        print(f"{name:<{width}}  {count:>12,}  {description}")
    if args.backbone == "resnet50":
        official = dict((name, count) for name, count, _ in rows)["agman-official"]
        released = released_code_parameter_count(args.attributes)
        verdict = "equal" if official == released else "DIFFERENT"
        print(f"\nagman-official, {args.attributes} attributes: {official:,} trainable parameters; "
              f"the released code's layer list gives {released:,} ({verdict}).")
    print(f"(counts for {args.attributes} attributes on {args.backbone}, default options; "
          f"build_model(name, n, **options) for others)")
    return 0
