"""`agman models`: list the registered models with their trainable parameter counts."""
from __future__ import annotations

import argparse

from agman.cli import print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the models with parameter counts")
    parser.add_argument("--attributes", type=int, default=8, metavar="N",
                        help="number of attributes to count for (default 8, FashionAI)")
    parser.add_argument("--backbone", default="resnet50", choices=("resnet18", "resnet34", "resnet50", "resnet101"),
                        help="backbone (default resnet50)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON instead of a table (schema agman/models/1, docs/model-card.md)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agman.models.agman import released_code_parameter_count
    from agman.models.registry import describe_models

    rows = describe_models(args.attributes, backbone=args.backbone)
    check = None
    if args.backbone == "resnet50":
        official = dict((name, count) for name, count, _ in rows)["agman-official"]
        released = released_code_parameter_count(args.attributes)
        check = {"model": "agman-official", "parameters": official, "released_code": released,
                 "equal": official == released}
    if args.json:
        print_json({"schema": "agman/models/1", "attributes": args.attributes, "backbone": args.backbone,
                    "models": [{"name": name, "parameters": count, "description": description}
                               for name, count, description in rows],
                    "released_code_check": check})
        return 0
    width = max(len(name) for name, _, _ in rows)
    print(f"{'model':<{width}}  {'parameters':>12}  description")
    for name, count, description in rows:
        print(f"{name:<{width}}  {count:>12,}  {description}")
    if check is not None:
        verdict = "equal" if check["equal"] else "DIFFERENT"
        print(f"\nagman-official, {args.attributes} attributes: {check['parameters']:,} trainable parameters; "
              f"the released code's layer list gives {check['released_code']:,} ({verdict}).")
    print(f"(counts for {args.attributes} attributes on {args.backbone}, default options; "
          f"build_model(name, n, **options) for others)")
    return 0
