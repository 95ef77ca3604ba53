"""`agman data cache`: decode, resize and centre-crop a dataset's images once (agman.data.cache)."""
from __future__ import annotations

import argparse


def register(data_subparsers) -> None:
    from agman.cli.datasets import add_dataset_arguments

    cache = data_subparsers.add_parser(
        "cache",
        help="store each image decoded, resized and centre-cropped (uint8) for fast training and evaluation",
        description="Decode every image of the chosen splits once, resize its short side to SIZE / CROP_RATIO, "
        "centre-crop SIZE x SIZE and store the uint8 pixels in memory-mapped arrays. Training and evaluation "
        "read them instead of the image files when the size, crop ratio and files match (bit-identical "
        "inputs); a changed file makes the cache stale, never silently used. Interrupted runs resume.",
    )
    add_dataset_arguments(cache)
    cache.add_argument("--split", nargs="+", metavar="SPLIT",
                       help="splits to cache (default: train valid test, those the dataset has)")
    cache.add_argument("--size", type=int, default=224, help="input size of the model (data.input_size; default 224)")
    cache.add_argument("--crop-ratio", type=float, default=1.0,
                       help="data.crop_ratio of the training config: resize to SIZE/CROP_RATIO, crop SIZE "
                            "(default 1.0: the paper's Resize(224) + CenterCrop(224))")
    cache.add_argument("--cache-dir",
                       help="where the cache lives (default $AGMAN_CACHE_DIR, else IMAGE_ROOT/.agman-cache)")
    cache.add_argument("--workers", type=int, default=4, help="decoding threads (default 4)")
    cache.add_argument("--no-progress", action="store_true", help="no progress bar")
    cache.set_defaults(func=run_cache)


def run_cache(args: argparse.Namespace) -> int:
    from agman.cli.datasets import open_from_args
    from agman.data.cache import build_cache
    from agman.data.spec import SPLIT_NAMES

    spec = open_from_args(args, allow_singletons=True)
    splits = args.split or [s for s in SPLIT_NAMES if s in spec.splits]
    report = None
    for name in splits:
        split = spec.split(name)
        report = build_cache(split.paths, spec.root, args.size, args.crop_ratio, cache_dir=args.cache_dir,
                             workers=args.workers, progress=not args.no_progress, label=name)
        rate = f", {report.new / report.seconds:.0f} images/s" if report.new else ""
        print(f"{name}: {report.images} images, {report.new} newly cached in {report.seconds:.1f} s{rate}")
    if report is not None:
        size = sum(p.stat().st_size for p in report.store.glob("part-*.npy") if ".partial" not in p.name)
        print(f"cache {report.store} ({size / 2**30:.2f} GiB, {args.size}x{args.size} px, "
              f"crop ratio {args.crop_ratio:g})")
    return 0
