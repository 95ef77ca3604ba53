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
    parser.add_argument("--checkpoint", metavar="CKPT",
                        help="print this checkpoint's card instead: its attributes with their weight identities, "
                             "which design made each, and its lineage (the parents it was extended from)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON instead of a table (schema agman/models/1, docs/model-card.md)")
    parser.set_defaults(func=run)


def run_card(args: argparse.Namespace) -> int:
    """`agman models --checkpoint CKPT`: the checkpoint's attributes, identities and lineage."""
    from agman.engine.checkpoint import load_model
    from agman.models.extension import attribute_identities

    model, info = load_model(args.checkpoint)
    ids = dict(zip(info.attribute_names, attribute_identities(model)))
    lineage = info.lineage
    designs = lineage.get("designs") or {}
    in_parent = (lineage.get("parent") or {}).get("attribute_identities") or {}
    check = {n: ("" if n not in in_parent else "same as parent" if in_parent[n] == ids[n] else "CHANGED") for n in ids}
    parents = [*(lineage.get("ancestors") or []), *([lineage["parent"]] if lineage.get("parent") else [])]
    if args.json:
        print_json({"schema": "agman/model-card/1", "checkpoint": str(args.checkpoint), "model": info.model_name,
                    "identity": info.identity,
                    "attributes": [{"name": n, "identity": ids[n], "design": designs.get(n, "trained"),
                                    "parent_identity": in_parent.get(n)} for n in ids],
                    "lineage": [{"identity": p["identity"], "path": p["path"], "attributes": p["attributes"]}
                                for p in parents]})
        return 0
    print(f"{args.checkpoint}: {info.model_name}, identity {info.identity}, {len(ids)} attributes")
    width = max(len("attribute"), *(len(n) for n in ids))
    print(f"\n{'attribute':<{width}}  {'identity':<16}  made by")
    for name, identity in ids.items():
        print(f"{name:<{width}}  {identity:<16}  {designs.get(name, 'trained'):<8}  {check[name]}".rstrip())
    if parents:
        print("\nlineage (oldest first):")
        for p in parents:
            print(f"  {p['identity']}  {p['path']}  ({', '.join(p['attributes'])})")
        print(f"  {info.identity}  {args.checkpoint}  (this model)")
    else:
        print("\nlineage: none (trained, not extended)")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.checkpoint:
        return run_card(args)
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
