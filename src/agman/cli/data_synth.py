"""`agman data synth`: render agman's default dataset (synthetic garments) into a folder."""
from __future__ import annotations

import argparse


def _triplet_counts(text: str) -> tuple[int, int, int]:
    try:
        counts = tuple(int(x) for x in text.split(","))
    except ValueError:
        counts = ()
    if len(counts) != 3 or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VAL,TEST non-negative integers, got {text!r}")
    return counts


def register(data_subparsers) -> None:
    from agman.data.synthetic import DEFAULT_IMAGES, DEFAULT_SIZE, TRIPLETS_PER_IMAGE

    synth = data_subparsers.add_parser(
        "synth",
        help="render the synthetic garment dataset (ASEN + CSN layouts, regions, card)",
        description="Render garments whose attributes (sleeve length, neckline, garment length, waist detail, "
        "pattern) each live in one region or in the texture, with colours, background, pose, lighting and "
        "occluders as nuisances. Writes the ASEN layout, regions_<split>.jsonl, triplets/ (CSN layout), "
        "README.md and contact_sheet.png. The same arguments give byte-identical files.",
    )
    synth.add_argument("--out", required=True, help="output folder (new, empty, or a previous synthetic set)")
    synth.add_argument(
        "--images", type=int, default=DEFAULT_IMAGES, help=f"number of images (default {DEFAULT_IMAGES})"
    )
    synth.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"image side in pixels (default {DEFAULT_SIZE})")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument(
        "--mode",
        choices=["all", "single", "fashionai"],
        default="all",
        help="'all': every image annotated with every attribute (like DeepFashion); "
        "'single': one attribute per image (like FashionAI) (default all)",
    )
    synth.add_argument(
        "--triplets",
        type=_triplet_counts,
        metavar="TRAIN,VAL,TEST",
        help=f"triplets per attribute in the CSN layout (default {TRIPLETS_PER_IMAGE} per image of each split)",
    )
    synth.add_argument("--workers", type=int, default=1, help="rendering processes (default 1; output is identical)")
    synth.add_argument("--reuse", action="store_true", help="do nothing when --out already holds this exact set")
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    synth.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from agman.data.layouts import open_dataset
    from agman.data.synthetic import generate

    out = generate(
        args.out,
        args.images,
        args.size,
        args.seed,
        args.mode,
        progress=not args.no_progress,
        workers=args.workers,
        triplets=args.triplets,
        reuse=args.reuse,
    )
    spec = open_dataset(out)
    counts = ", ".join(
        f"{name} {len(s)}" + (f" ({len(s.queries)} queries, {len(s.candidates)} candidates)" if len(s.queries) else "")
        for name, s in spec.splits.items()
    )
    print(f"wrote {out}: {args.images} images of {args.size} px, mode {args.mode}, seed {args.seed}")
    print(f"  {counts}")
    print(f"  attributes: {', '.join(f'{a.name} ({a.n_values})' for a in spec.attributes)}")
    print(f"  card: {out / 'README.md'}, contact sheet: {out / 'contact_sheet.png'}, triplets: {out / 'triplets'}")
    return 0
