"""The options that name a dataset (root, layout, meta, ...), shared by `agman data`, `agman index` and
`agman data cache`, and the dataset they open."""
from __future__ import annotations

import argparse


def add_dataset_arguments(parser, root: bool = True) -> None:
    """The options every command that opens a dataset shares (on a parser or an argument group);
    ``root=False`` leaves out the positional dataset root (a command that names it otherwise)."""
    from agman.data.layouts import LAYOUTS

    if root:
        parser.add_argument("root", help="dataset folder (ASEN or CSN layout) or a catalog .csv file")
    parser.add_argument("--dataset", help="dataset name: sub-folder and/or meta.json key (e.g. FashionAI)")
    parser.add_argument("--layout", choices=LAYOUTS, help="layout (auto-detected by default)")
    parser.add_argument("--meta", help="meta.json to use (default: beside the split files or in their parent)")
    parser.add_argument("--yaml", dest="yaml_config", help="ASEN++ dataset YAML instead of meta.json")
    parser.add_argument("--image-root", help="folder the image paths are relative to (auto-detected by default)")
    parser.add_argument("--seed", type=int, default=0, help="split seed for a catalog CSV (default 0)")


def open_from_args(args: argparse.Namespace, allow_singletons: bool = False, root: str | None = None):
    """The dataset the options of :func:`add_dataset_arguments` name (at ``root``, default ``args.root``)."""
    from agman.data.layouts import open_dataset

    return open_dataset(
        root or args.root,
        args.dataset,
        layout=args.layout,
        allow_singletons=allow_singletons,
        seed=args.seed,
        meta=args.meta,
        yaml_config=args.yaml_config,
        image_root=args.image_root,
    )
