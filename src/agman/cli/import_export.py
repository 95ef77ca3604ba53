"""`agman import` (a released checkpoint -> an agman checkpoint) and `agman export` (-> ONNX, optionally INT8)."""
from __future__ import annotations

import argparse
from pathlib import Path

from agman.cli import CLIError, print_json


def register(subparsers) -> None:
    from agman.engine.released_formats import FORMATS

    imp = subparsers.add_parser(
        "import",
        help="read a checkpoint of the released AG-MAN, ASEN or CSN code into an agman checkpoint",
        description="Read checkpoint.pth.tar / model_best.pth.tar written by the authors' training scripts "
        "(Dr-LingXiao/AG-MAN mainFashionAI.py / mainDeepFashion.py / mainZappos50k.py, Maryeon/asen, "
        "andreasveit/conditional-similarity-networks) and write an agman checkpoint that eval, index, search, "
        "serve and attention accept.  The attribute names and order come from the dataset's meta.json "
        "(--meta) or a dataset agman can open (--data).  Every tensor of the file is placed (shapes checked) "
        "or named as one the released forward pass never reads; anything else stops the import.  Formats: "
        + "; ".join(f"{f.name}: {f.source}" for f in FORMATS.values()),
    )
    imp.add_argument("released", help="the released checkpoint (checkpoint.pth.tar, model_best.pth.tar)")
    imp.add_argument("--out", required=True, help="agman checkpoint to write (.pt)")
    names = imp.add_mutually_exclusive_group(required=True)
    names.add_argument("--meta", help="meta.json naming the attributes in the order the network was trained")
    names.add_argument("--data", help="dataset root agman can open (ASEN or CSN layout); recorded in the "
                       "checkpoint's config, so agman eval finds it")
    imp.add_argument("--dataset", help="dataset name: meta.json key / sub-folder (e.g. FashionAI)")
    imp.add_argument("--format", choices=list(FORMATS), help="released format (default: recognised from the names)")
    imp.add_argument("--preset", help="dataset whose packaged config the checkpoint carries (fashionai, deepfashion, "
                     "zappos50k, synthetic; default: --dataset when it is one of them, else fashionai / "
                     "zappos50k for CSN)")
    imp.add_argument("--input-size", type=int, help="input size in pixels (default: the preset's, 224; CSN 112)")
    imp.add_argument("--force", action="store_true", help="replace --out if it exists")
    imp.add_argument("--json", action="store_true", help="print what was placed as JSON")
    imp.set_defaults(func=run_import)

    exp = subparsers.add_parser(
        "export",
        help="export a checkpoint as one ONNX graph (images -> every attribute's embedding), optionally INT8",
        description="Write the model as one ONNX graph: input 'images' [B, 3, S, S] (normalised as agman "
        "prepares images), output 'embeddings' [B, A, D] for all attributes in one pass, dynamic batch, and "
        "with --attention the maps 'attention' [B, A, h, w].  The checkpoint's identity, attributes and input "
        "size are in the file's metadata; agman index/serve --runtime onnx refuse an export of another "
        "checkpoint.  --int8 also writes a statically quantized copy calibrated on catalog images.",
    )
    exp.add_argument("--checkpoint", required=True, help="agman checkpoint (.pt)")
    exp.add_argument("--format", choices=["onnx"], default="onnx", help="export format (onnx)")
    exp.add_argument("--out", required=True, help="ONNX file to write")
    exp.add_argument("--attention", action="store_true", help="also output the attention maps")
    exp.add_argument("--int8", metavar="PATH", help="also write an INT8 (static, QDQ) copy here")
    exp.add_argument("--calibration", metavar="IMAGES",
                     help="with --int8: a folder of catalog images or a catalog CSV to calibrate on")
    exp.add_argument("--calibration-images", type=int, default=64, help="images drawn for calibration (default 64)")
    exp.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    exp.add_argument("--force", action="store_true", help="replace --out / --int8 if they exist")
    exp.set_defaults(func=run_export)


def _refuse_existing(args: argparse.Namespace, *paths) -> None:
    from agman.errors import AlreadyExistsError

    for path in paths:
        if path is not None and Path(path).exists() and not args.force:
            raise AlreadyExistsError(f"{path} already exists; pass --force to replace it")


def _attributes(args: argparse.Namespace):
    """The attributes (names, values, order) and the data section to record."""
    from agman.data.meta import attributes_from_meta

    if args.meta:
        meta = Path(args.meta)
        if not meta.is_file():
            raise CLIError(f"--meta {meta}: no such file")
        return attributes_from_meta(meta, args.dataset), None
    from agman.data.layouts import open_dataset

    spec = open_dataset(args.data, args.dataset, allow_singletons=True)
    return spec.attributes, {"root": args.data, "dataset": args.dataset}


def run_import(args: argparse.Namespace) -> int:
    from agman.engine.compose import datasets
    from agman.engine.importer import import_released

    _refuse_existing(args, args.out)
    attributes, data = _attributes(args)
    preset = args.preset or (args.dataset.lower() if args.dataset and args.dataset.lower() in datasets() else None)
    report = import_released(args.released, attributes, args.out, format=args.format, dataset=preset, data=data,
                             input_size=args.input_size)
    placed = sum(len(v) for v in report.placed.values())
    if args.json:
        print_json({"schema": "agman/import/1", "source": str(report.source), "format": report.format.name,
                    "model": report.model_name, "model_config": report.model_config,
                    "attributes": [a.name for a in report.attributes], "identity": report.identity,
                    "out": str(report.out), "epoch": report.epoch, "record": report.record,
                    "stripped_module_prefix": report.stripped_prefix, "placed": report.placed,
                    "unused": report.unused})
        return 0
    unused = f"; {len(report.unused)} tensor(s) the released forward never reads left out" if report.unused else ""
    prefix = " ('module.' prefixes removed)" if report.stripped_prefix else ""
    print(f"{report.source} ({report.format.name}{prefix}): {len(report.placed)} tensors placed into {placed} "
          f"{report.model_name} parameters{unused}")
    print(f"wrote {report.out}: {report.model_name}, {len(report.attributes)} attributes "
          f"({', '.join(a.name for a in report.attributes)}), identity {report.identity}, epoch {report.epoch}")
    if report.format.notes:
        print(f"note: {report.format.notes}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from agman.engine.onnx_export import export_onnx

    if args.calibration and not args.int8:
        raise CLIError("--calibration calibrates the --int8 copy; give --int8 PATH too")
    if args.int8 and not args.calibration:
        raise CLIError("--int8 needs --calibration IMAGES (a folder or catalog CSV to calibrate on)")
    _refuse_existing(args, args.out, args.int8)
    out = export_onnx(args.checkpoint, args.out, attention=args.attention, opset=args.opset)
    print(f"wrote {out} (fp32; inputs 'images' [B, 3, S, S], outputs 'embeddings' [B, A, D]"
          + (", 'attention' [B, A, h, w]" if args.attention else "") + ")")
    if args.int8:
        from agman.engine.checkpoint import info_from, load_checkpoint
        from agman.engine.quantize import calibration_batches, quantize_onnx
        from agman.retrieval import imagesets

        info = info_from(load_checkpoint(args.checkpoint), args.checkpoint)
        src = Path(args.calibration)
        csv = src.suffix.lower() == ".csv"
        images = imagesets.from_csv(src, info.attributes) if csv else imagesets.from_directory(src)
        batches = calibration_batches(images.paths, input_size=info.input_size, crop_ratio=info.crop_ratio,
                                      count=args.calibration_images)
        quantize_onnx(out, args.int8, batches)
        print(f"wrote {args.int8} (int8, calibrated on {min(args.calibration_images, len(images.paths))} images "
              f"of {images.description})")
    return 0
