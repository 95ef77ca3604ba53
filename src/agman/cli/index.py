"""`agman index`: embed a catalog into an index (FAISS folder or Milvus collection), grow, update,
extend or delete from it; the work is :func:`agman.retrieval.build.build_index` and the registry
(:mod:`agman.retrieval.backends`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from agman.cli import CLIError, print_json
from agman.cli.retrieval import (
    MILVUS_WRITE_TIMEOUT,
    add_milvus_access,
    add_model_options,
    add_runtime_options,
    add_search_tuning,
    located,
    positive_int,
    runtime_model,
)


def register(subparsers) -> None:
    from agman.retrieval.info import INDEX_TYPES

    idx = subparsers.add_parser(
        "index",
        help="embed a catalog with a checkpoint into an index: FAISS files or Milvus (resumable, --add, --update, "
        "--delete)",
        description="Embed every image for every attribute (one backbone pass per image) into an index: a folder "
        "of FAISS files (--out, the default) or a Milvus collection (--backend milvus --uri catalog.db for Milvus "
        "Lite, --uri http://host:19530 for a server).  Rerunning an interrupted run continues where it stopped; "
        "--add adds images not yet indexed, --update re-indexes changed ones, --delete removes items.  Under "
        "torchrun (torchrun --nproc_per_node=N -m agman index ...) the images are shared out among the processes "
        "and rank 0 writes the index.  An index only ever holds embeddings of one checkpoint.  Index types: "
        + "; ".join(f"{k}: {v}" for k, v in INDEX_TYPES.items()),
    )
    _add_source_options(idx)
    _add_location_options(idx)
    _add_change_options(idx)
    _add_catalog_options(idx)
    _add_build_options(idx)
    idx.set_defaults(func=run_index)


def _add_source_options(idx: argparse.ArgumentParser) -> None:
    """What to index: the checkpoint, the images, a dataset split."""
    from agman.cli.datasets import add_dataset_arguments
    from agman.retrieval.imagesets import SPLIT_PARTS

    idx.add_argument("--checkpoint", help="trained checkpoint (.pt); not needed with --delete")
    idx.add_argument(
        "--images",
        help="a folder of images, a catalog CSV (path,<attribute>...,<metadata>...), or a dataset root with --split",
    )
    idx.add_argument("--split", help="index this split of the dataset at --images (train/valid/test)")
    idx.add_argument(
        "--part",
        choices=SPLIT_PARTS,
        default="all",
        help="with --split: all images, or only the candidate / query images with those rows' labels",
    )
    split_options = idx.add_argument_group("dataset split (with --split; --images is the dataset root)")
    add_dataset_arguments(split_options, root=False)


def _add_location_options(idx: argparse.ArgumentParser) -> None:
    """Where the index is: a folder, or a Milvus collection and how to reach it."""
    where = idx.add_argument_group("where the index is")
    where.add_argument("--out", help="index folder (FAISS files) to create, resume, grow or update")
    where.add_argument("--backend", choices=["faiss", "milvus"], help="faiss (a folder, default) or milvus (--uri)")
    where.add_argument("--uri", help="Milvus: a Milvus Lite file (catalog.db) or a server (http://host:19530)")
    where.add_argument("--collection", default="catalog", help="Milvus collection (default 'catalog')")
    where.add_argument("--work", help="Milvus: folder for the resumable embedding shards (default beside the .db "
                       "file, or ./agman-work-<collection>)")
    add_milvus_access(where, request_timeout=MILVUS_WRITE_TIMEOUT)


def _add_change_options(idx: argparse.ArgumentParser) -> None:
    """How an existing index changes: add, extend, update, delete."""
    change = idx.add_argument_group("changing an index")
    change.add_argument("--add", action="store_true", help="add the images not yet in an existing index")
    change.add_argument("--extend", action="store_true",
                        help="add the attributes of --checkpoint (a model made by `agman train --extend`) that the "
                             "index lacks: only their vectors are written; the old ones are kept after their "
                             "weight identities and a re-embedded sample are checked (no --images needed)")
    change.add_argument("--tolerance", type=float, default=0.0,
                        help="with --extend: the largest difference the re-embedded sample may show (default 0: "
                             "bit for bit)")
    change.add_argument("--update", action="store_true",
                        help="re-index the items of --images that the index holds (unknown ids are an error; "
                        "with --add, new ones are added too)")
    change.add_argument("--delete", nargs="+", metavar="ID",
                        help="remove these items (unknown ids are an error); a later --add does not bring them back")
    change.add_argument("--include-deleted", action="store_true",
                        help="with --add: also add again the items deleted earlier (--delete, DELETE /items/{id})")


def _add_catalog_options(idx: argparse.ArgumentParser) -> None:
    """A catalog CSV's columns: metadata, ids, the root."""
    catalog = idx.add_argument_group("catalog CSV columns")
    catalog.add_argument(
        "--metadata", action="append", metavar="NAME[:TYPE],...",
        help="declare metadata columns of the CSV, typed string (default), number or bool (repeatable); columns "
        "named after an attribute hold its labels; any other column is an error",
    )
    catalog.add_argument("--id-column", help="CSV column holding the item ids (default: the path)")
    catalog.add_argument("--id-prefix", default="", help="put in front of every item id (e.g. shopA/)")
    catalog.add_argument(
        "--root", help="catalog root the index stores image paths relative to (a new index; default: the folder, "
        "the CSV's folder or the dataset root)",
    )


def _add_build_options(idx: argparse.ArgumentParser) -> None:
    """The index type, its settings, and how the images are embedded."""
    from agman.retrieval.info import INDEX_TYPES, IndexConfig

    idx.add_argument("--on-error", choices=["stop", "skip"], default="stop",
                     help="an unreadable image: stop (default, it is named) or skip it and list it in skipped.jsonl")
    idx.add_argument(
        "--type", dest="index_type", choices=list(INDEX_TYPES), help="index type (new index; default flat)"
    )
    idx.add_argument("--nlist", type=positive_int, help="IVF cells (default about 4*sqrt(items))")
    idx.add_argument("--hnsw-m", type=positive_int, help=f"HNSW neighbours per node (default {IndexConfig.hnsw_m})")
    idx.add_argument(
        "--ef-construction", type=positive_int, help=f"HNSW build breadth (default {IndexConfig.ef_construction})"
    )
    idx.add_argument("--pq-m", type=positive_int, help="PQ sub-quantizers (default D/8)")
    add_search_tuning(idx)
    idx.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    idx.add_argument("--shard-size", type=positive_int, default=1024, help="images per resumable shard (default 1024)")
    idx.add_argument("--workers", type=int, default=0, help="image-loading worker processes (default 0)")
    add_model_options(idx, checkpoint=False)  # --checkpoint is declared above
    add_runtime_options(idx)
    idx.add_argument("--no-progress", action="store_true", help="no progress bar")
    idx.add_argument("--json", action="store_true",
                     help="print the summary as JSON (schema agman/index/1, docs/retrieval.md)")


def image_set_from_args(args: argparse.Namespace, attributes=None):
    """The source ``--images`` names; a CSV is read as a typed catalog against the checkpoint's
    ``attributes`` with the declared ``--metadata``, ``--id-column``, ``--id-prefix`` and ``--root``."""
    from agman.retrieval import imagesets

    src = Path(args.images)
    declared = args.metadata or args.id_column
    if args.split:
        from agman.cli.datasets import open_from_args

        spec = open_from_args(args, allow_singletons=True, root=args.images)
        images = imagesets.from_split(spec, args.split, args.part)
    elif src.is_file() and src.suffix.lower() == ".csv":
        from agman.data.catalog_csv import CatalogColumns, parse_metadata_declarations

        columns = CatalogColumns(
            metadata=parse_metadata_declarations(args.metadata or []), id_column=args.id_column,
            id_prefix=args.id_prefix,
        )
        return imagesets.from_csv(src, attributes, columns, root=args.root)
    elif src.is_dir():
        images = imagesets.from_directory(src)
    else:
        raise CLIError(f"--images {src}: not a folder or a .csv file (for a dataset split add --split)")
    if declared:
        raise CLIError("--metadata and --id-column describe the columns of a catalog CSV; --images is not one")
    return images.prefixed(args.id_prefix)


BUILD_SETTINGS = ("nlist", "hnsw_m", "ef_construction", "pq_m", "nprobe", "ef_search", "rerank")


INDEX_SCHEMA = "agman/index/1"


def index_target(args: argparse.Namespace):
    """The folder or Milvus collection ``agman index`` writes: ``--out DIR`` or ``--uri`` (milvus)."""
    milvus = args.backend == "milvus" or (args.backend is None and args.uri is not None)
    if milvus:
        if args.uri is None or args.out is not None:
            raise CLIError("--backend milvus writes to --uri (catalog.db or http://host:19530), not --out")
        return located(args, args.uri, args.collection, backend="milvus")
    if args.out is None or args.uri is not None:
        raise CLIError("give --out INDEX_FOLDER (FAISS files), or --backend milvus --uri URI")
    return args.out


def run_extend(args: argparse.Namespace, target) -> int:
    """`agman index --extend`: the new attributes' vectors written into the index in place."""
    from agman.retrieval.backends import extend_index

    if args.checkpoint is None:
        raise CLIError("agman index --extend needs --checkpoint (the extended model)")
    summary = extend_index(target, args.checkpoint, batch_size=args.batch_size, workers=args.workers,
                           device=args.device, progress=not args.no_progress, tolerance=args.tolerance)
    if args.json:
        print_json({"schema": "agman/index-extend/1", **summary.__dict__})
    elif not summary.added:
        print(f"index {summary.index} was already built by {args.checkpoint}: nothing to add")
    else:
        print(f"index {summary.index}: added {', '.join(summary.added)} ({summary.rows} rows embedded"
              f"{f', {summary.resumed_from} before an interruption' if summary.resumed_from else ''}; the old "
              f"attributes kept, {summary.sample_rows} rows re-embedded and equal)")
    return 0


def run_index(args: argparse.Namespace) -> int:
    target = index_target(args)
    if args.delete:
        return run_delete(args, target)
    if args.extend:
        return run_extend(args, target)
    if args.checkpoint is None or args.images is None:
        raise CLIError("agman index needs --checkpoint and --images (or --delete ID ...)")
    from agman.engine.checkpoint import load_model
    from agman.engine.distributed import cleanup, init_distributed
    from agman.retrieval.build import build_index
    from agman.retrieval.info import IndexConfig

    ctx = init_distributed(args.device)
    try:
        if args.runtime == "onnx":
            model, info = runtime_model(args, args.checkpoint)
        else:
            model, info = load_model(args.checkpoint, device=ctx.device)
        images = image_set_from_args(args, info.attributes)
        config = None
        if args.index_type:  # a new index's type and settings (an existing index keeps its own)
            given = {name: getattr(args, name) for name in BUILD_SETTINGS if getattr(args, name) is not None}
            config = IndexConfig(kind=args.index_type, **given)
        summary = build_index(
            target, images, model=model, info=info, config=config, add=args.add, update=args.update,
            include_deleted=args.include_deleted,
            batch_size=args.batch_size, shard_size=args.shard_size, workers=args.workers, device=str(ctx.device),
            progress=not args.no_progress, on_error=args.on_error, root=args.root, work=args.work, distributed=ctx,
        )
    finally:
        cleanup(ctx)
    if not ctx.is_main:
        return 0
    if args.json:
        print_json(index_summary(summary, images))
        return 0
    resumed = f", resumed with {summary.resumed_from} embedded" if summary.resumed_from else ""
    speed = f" ({summary.images_per_second:.1f} images/s)" if summary.embedded else ""
    unreadable = f"; {summary.unreadable} unreadable images skipped (skipped.jsonl)" if summary.unreadable else ""
    ranks = f" on {ctx.world_size} processes" if ctx.world_size > 1 else ""
    updated = f"updated {summary.updated}, " if summary.updated else ""
    if summary.deleted_skipped:
        unreadable += (f"; {summary.deleted_skipped} deleted earlier and left out (--include-deleted adds them "
                       "again)")
    print(
        f"index {summary.location} ({summary.index_type}): {summary.count} items; added {summary.added}, "
        f"{updated}already indexed {summary.skipped}, embedded {summary.embedded} now{ranks}{speed}{resumed}"
        f"{unreadable}"
    )
    if images.left_out:
        shown = ", ".join(images.left_out[:10]) + (", ..." if len(images.left_out) > 10 else "")
        print(f"left out {len(images.left_out)} image file(s) of {images.description} that its lists do not "
              f"name: {shown}")
    return 0


def index_summary(summary, images) -> dict:
    """``agman index --json``: what the run did (schema ``agman/index/1``, docs/retrieval.md)."""
    return {
        "schema": INDEX_SCHEMA,
        "index": str(summary.location),
        "type": summary.index_type,
        "items": summary.count,
        "added": summary.added,
        "updated": summary.updated,
        "unreadable": summary.unreadable,
        "already_indexed": summary.skipped,
        "embedded": summary.embedded,
        "resumed_from": summary.resumed_from,
        "seconds": round(summary.seconds, 3),
        "images_per_second": round(summary.images_per_second, 3),
        "source": images.description,
        "left_out": list(images.left_out),
    }


def run_delete(args: argparse.Namespace, target) -> int:
    from agman.retrieval.backends import open_writer

    writer = open_writer(target)
    try:
        deleted = writer.delete(args.delete)
        print(f"index {writer.location}: deleted {deleted} items; {writer.searchable()} remain (`--add` leaves "
              "them out; --include-deleted adds them again)")
    finally:
        writer.close()
    return 0


# --------------------------------------------------------------------------- search
