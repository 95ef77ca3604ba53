"""`agman index`, `agman search`, `agman attention`, `agman compare`: the catalog retrieval commands."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from agman.cli import CLIError, print_json

MAX_K = 1000
"""Largest ``--k`` the CLI accepts (the service's cap is lower and configurable)."""


# --------------------------------------------------------------------------- shared options
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_number(text: str) -> float:
    """An option's value: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def k_value(text: str) -> int:
    value = positive_int(text)
    if value > MAX_K:
        raise argparse.ArgumentTypeError(f"k must be at most {MAX_K}, got {value}")
    return value


def add_query_arguments(parser: argparse.ArgumentParser, attention: bool = False) -> None:
    """``--image`` / ``--item`` (one of them) and ``--attribute/-a NAME[:WEIGHT]`` (repeatable),
    parsed the same way by every command (``retrieval.query.AttributeWeights.parse``)."""
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", help="query image file")
    if attention:
        item_help = ("catalog item (its id, or its image file's path) whose image to draw the map over "
                     "(the index's checkpoint is loaded to compute the map)")
        attribute_help = ("attribute whose attention map to draw; repeat for one map per attribute, side by side "
                          "(the NAME[:WEIGHT] syntax of search; a map has no weight, so WEIGHT must be 1 if given)")
    else:
        item_help = ("catalog item (its id, or its image file's path) to use as the query: its stored embeddings "
                     "are used, no model needed")
        attribute_help = ("attribute to match, optionally weighted (repeat, or a:1,b:2, for a weighted "
                          "multi-attribute query: the score is the weighted sum of per-attribute similarities; "
                          "an attribute may appear once)")
    query.add_argument("--item", metavar="ID_OR_PATH", help=item_help)
    parser.add_argument("--attribute", "-a", action="append", required=True, metavar="NAME[:WEIGHT]",
                        help=attribute_help)


def add_model_options(parser: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    """``--checkpoint`` (the index's own by default) and ``--device``, for commands that embed queries."""
    if checkpoint:
        parser.add_argument("--checkpoint", help="checkpoint (default: the one recorded when the index was built)")
    parser.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """``--runtime torch|onnx`` and ``--onnx FILE``: embed with PyTorch or with ONNX Runtime on the CPU."""
    parser.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                        help="embed with PyTorch (default) or with ONNX Runtime on the CPU (an agman export of the "
                        "same checkpoint: agman export --format onnx)")
    parser.add_argument("--onnx", metavar="FILE", help="with --runtime onnx: the export (default: the checkpoint's "
                        "path with .onnx)")


def runtime_model(args: argparse.Namespace, checkpoint):
    """``(model, CheckpointInfo)`` for ``--runtime``: the checkpoint's model, or its ONNX export run by
    ONNX Runtime (refused when the export was made from another checkpoint)."""
    from agman.engine.checkpoint import info_from, load_checkpoint, load_model

    if getattr(args, "runtime", "torch") != "onnx":
        if getattr(args, "onnx", None):
            raise CLIError("--onnx is read with --runtime onnx")
        return load_model(checkpoint, device=args.device)
    from agman.engine.onnx_runtime import OnnxModel

    info = info_from(load_checkpoint(checkpoint), checkpoint)
    model = OnnxModel(args.onnx or Path(checkpoint).with_suffix(".onnx"), identity=info.identity)
    return model.to(args.device), info


def add_search_tuning(parser: argparse.ArgumentParser) -> None:
    """The index's search-time settings: stored by `agman index`, overridden by search/serve/compare."""
    from agman.retrieval.info import IndexConfig

    d = IndexConfig()
    parser.add_argument("--nprobe", type=positive_int, help=f"IVF cells searched (index default {d.nprobe})")
    parser.add_argument("--ef-search", type=positive_int, help=f"HNSW search breadth (index default {d.ef_search})")
    parser.add_argument(
        "--rerank",
        type=positive_int,
        help=f"approximate: shortlist k x RERANK per attribute, re-scored exactly (index default {d.rerank})",
    )


def add_index_location(parser: argparse.ArgumentParser, repeat: bool = False) -> None:
    """``--index`` (a folder, or a Milvus URI: a ``.db`` Milvus Lite file or ``http://host:19530``),
    ``--collection`` and ``--root``, for commands that open an index."""
    parser.add_argument(
        "--index", "--uri", dest="index", required=True, action="append" if repeat else "store",
        help="index folder, or a Milvus URI: a Milvus Lite file (catalog.db) or http://host:19530"
        + (" (repeat: one per checkpoint)" if repeat else ""),
    )
    parser.add_argument("--collection", help="Milvus collection (default 'catalog')")
    add_milvus_access(parser)
    parser.add_argument(
        "--root", help="catalog root the index's image paths are relative to (default: the one recorded at build "
        "time; for an index moved or copied to another machine)",
    )


SEARCH_TIMEOUT = 30.0  # seconds a Milvus call of a search may take
MILVUS_WRITE_TIMEOUT = 600.0  # ... of agman index (a flush of a big batch is slow)


def add_milvus_access(parser, request_timeout: float = SEARCH_TIMEOUT) -> None:
    """``--milvus-token``, ``--consistency`` and ``--milvus-timeout``: how a Milvus server is logged
    into and read, and how long one call may take (``request_timeout`` by default)."""
    from agman.retrieval.backends import CONSISTENCY_ENV, CONSISTENCY_LEVELS, DEFAULT_CONSISTENCY, TOKEN_ENV

    parser.add_argument(
        "--milvus-timeout", type=positive_number, default=request_timeout, metavar="SECONDS",
        help=f"seconds one Milvus call may take before it fails (default {request_timeout:g}): a search answers 503 "
        "naming Milvus rather than wait for a server that stopped answering",
    )
    parser.add_argument(
        "--milvus-token", metavar="USER:PASSWORD",
        help=f"Milvus credentials, user:password or an API key (default ${TOKEN_ENV}, which keeps them out of the "
        "process list); never logged or stored",
    )
    parser.add_argument(
        "--consistency", choices=CONSISTENCY_LEVELS,
        help=f"Milvus read consistency (default ${CONSISTENCY_ENV} or {DEFAULT_CONSISTENCY}: this process's writes "
        "and everything committed before it opened the collection; Strong: every other process's writes at once, "
        "each read waiting for the server's next time tick)",
    )


def located(args: argparse.Namespace, location, collection: str | None, backend: str | None = None):
    """``location`` as its backend's target (or the named ``backend``'s) with the command's
    collection, Milvus token, consistency level and timeout."""
    from agman.retrieval.backends import locate

    return locate(location, backend=backend, collection=collection, token=getattr(args, "milvus_token", None),
                  consistency=getattr(args, "consistency", None),
                  request_timeout=getattr(args, "milvus_timeout", SEARCH_TIMEOUT))


def add_verify_option(parser: argparse.ArgumentParser, default: str) -> None:
    """``--verify``: how the index folder's recorded file hashes are checked when it is opened."""
    from agman.retrieval.store import VERIFY_LEVELS

    parser.add_argument(
        "--verify",
        choices=VERIFY_LEVELS,
        default=default,
        help="check the index files against the sizes and hashes index.json recorded: sizes only, sampled "
        f"blocks (about 1 MiB a file) or every byte (default {default})",
    )


def open_retriever(
    args: argparse.Namespace, index_dir: str | None = None, load_model: bool = False, load_index: bool = False
):
    """The Retriever of ``--index`` (or ``index_dir``: a folder or a Milvus URI) with the command's
    model options, search settings, ``--root`` and ``--verify`` level; ``load_index`` reads every
    FAISS file now."""
    from agman.retrieval.backends import open_store
    from agman.retrieval.info import IndexConfig
    from agman.retrieval.search import Retriever

    store = open_store(
        located(args, index_dir or args.index, getattr(args, "collection", None)),
        root=getattr(args, "root", None),
        verify=getattr(args, "verify", "sample"),
        load=load_index,
        **{name: getattr(args, name, None) for name in IndexConfig.SEARCH_SETTINGS},
    )
    retriever = Retriever(store, checkpoint=getattr(args, "checkpoint", None), device=args.device)
    if load_model:
        retriever.model  # noqa: B018 - load and verify the checkpoint now
    return retriever


# --------------------------------------------------------------------------- register
def register(subparsers) -> None:
    from agman.cli.data import add_dataset_arguments
    from agman.retrieval.info import INDEX_TYPES, IndexConfig
    from agman.retrieval.sources import SPLIT_PARTS

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
    where = idx.add_argument_group("where the index is")
    where.add_argument("--out", help="index folder (FAISS files) to create, resume, grow or update")
    where.add_argument("--backend", choices=["faiss", "milvus"], help="faiss (a folder, default) or milvus (--uri)")
    where.add_argument("--uri", help="Milvus: a Milvus Lite file (catalog.db) or a server (http://host:19530)")
    where.add_argument("--collection", default="catalog", help="Milvus collection (default 'catalog')")
    where.add_argument("--work", help="Milvus: folder for the resumable embedding shards (default beside the .db "
                       "file, or ./agman-work-<collection>)")
    add_milvus_access(where, request_timeout=MILVUS_WRITE_TIMEOUT)
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
    idx.set_defaults(func=run_index)

    search = subparsers.add_parser(
        "search",
        help="items with the same attribute value(s) as a query image or catalog item",
        description="Rank catalog items by (weighted) attribute similarity to the query and print them.",
    )
    add_index_location(search)
    add_query_arguments(search)
    search.add_argument(
        "--filter", metavar="EXPR",
        help='only items matching this expression over metadata and labels, e.g. \'category == "dress" and '
        "price < 50' (docs/retrieval.md: Filters)",
    )
    search.add_argument("--k", type=k_value, default=10, help=f"results (1..{MAX_K}, default 10)")
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    search.add_argument("--exclude-self", action="store_true", help="leave the query item itself out of the results")
    search.add_argument(
        "--annotated-only",
        action="store_true",
        help="rank only items annotated with every queried attribute (as the evaluation does)",
    )
    search.add_argument("--grid", metavar="PNG", help="also save the query + top-k grid picture (Fig. 5)")
    add_model_options(search)
    add_search_tuning(search)
    add_verify_option(search, "sample")
    search.set_defaults(func=run_search)

    att = subparsers.add_parser(
        "attention",
        help="save the model's attention heatmap for (image, attribute) (Fig. 7)",
    )
    add_index_location(att)
    add_query_arguments(att, attention=True)
    att.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity 0..1 (default 0.5)")
    att.add_argument("--view", choices=("original", "model"), default="original",
                     help="original (default): the original image beside the map drawn on it at its own resolution "
                          "(what the model's crop cut away dimmed); model: the map over the model's input crop only")
    att.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1",
                     help="a region to draw on the original (pixels, x1/y1 exclusive), e.g. the attribute's "
                          "ground-truth box; repeatable")
    att.add_argument("--out", required=True, help="PNG to write")
    add_model_options(att)
    add_verify_option(att, "sample")
    att.set_defaults(func=run_attention)

    cmp_ = subparsers.add_parser(
        "compare",
        help="side-by-side top-k of several checkpoints' indexes of one catalog for one query (Fig. 6)",
        description="One row per --index: the same query ranked by each index's checkpoint.  The indexes must "
        "hold the same catalog (the same item ids); indexes of different catalogs are refused.",
    )
    add_index_location(cmp_, repeat=True)
    cmp_.add_argument("--name", action="append", help="row label per --index (default: model name + folder)")
    add_query_arguments(cmp_)
    cmp_.add_argument("--k", type=k_value, default=5, help="results per row (default 5)")
    cmp_.add_argument("--exclude-self", action="store_true")
    cmp_.add_argument("--annotated-only", action="store_true")
    cmp_.add_argument("--out", required=True, help="PNG to write")
    add_model_options(cmp_, checkpoint=False)  # each index embeds with its own checkpoint
    add_search_tuning(cmp_)
    add_verify_option(cmp_, "sample")
    cmp_.set_defaults(func=run_compare)


# --------------------------------------------------------------------------- index
def image_set_from_args(args: argparse.Namespace, attributes=None):
    """The source ``--images`` names; a CSV is read as a typed catalog against the checkpoint's
    ``attributes`` with the declared ``--metadata``, ``--id-column``, ``--id-prefix`` and ``--root``."""
    from agman.retrieval import sources

    src = Path(args.images)
    declared = args.metadata or args.id_column
    if args.split:
        from agman.cli.data import open_from_args

        spec = open_from_args(args, allow_singletons=True, root=args.images)
        images = sources.from_split(spec, args.split, args.part)
    elif src.is_file() and src.suffix.lower() == ".csv":
        from agman.retrieval.catalog import CatalogColumns, parse_metadata_declarations

        columns = CatalogColumns(
            metadata=parse_metadata_declarations(args.metadata or []), id_column=args.id_column,
            id_prefix=args.id_prefix,
        )
        return sources.from_csv(src, attributes, columns, root=args.root)
    elif src.is_dir():
        images = sources.from_directory(src)
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
def run_query(retriever, args: argparse.Namespace, attributes, k: int):
    flags = {"exclude_self": args.exclude_self, "annotated_only": args.annotated_only,
             "filter": getattr(args, "filter", None)}
    if args.item is not None:
        return retriever.search_item(retriever.find_item(args.item).id, attributes, k, **flags)
    return retriever.search(args.image, attributes, k, **flags)


def query_image(retriever, args: argparse.Namespace):
    """The query as a picture: the catalog item's image or the image file, loaded once."""
    from agman.retrieval.query import load_query_image

    return load_query_image(retriever.find_item(args.item).path if args.item is not None else args.image)


def grid_results(retriever, result):
    from agman.retrieval.query import load_query_image

    return [(load_query_image(h.path), h.score, h.correct) for h in result.hits]


def run_search(args: argparse.Namespace) -> int:
    retriever = open_retriever(args)
    result = run_query(retriever, args, args.attribute, args.k)
    if args.grid:
        from agman.render import result_grid, save_picture

        title = " + ".join(f"{w:g} x {n}" if w != 1 else n for n, w in result.weights.items())
        image = query_image(retriever, args)
        save_picture(result_grid(image, grid_results(retriever, result), title=title), args.grid)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1, ensure_ascii=False, allow_nan=False))  # strict JSON
        return 0
    print(format_table(result))
    if args.grid:
        print(f"grid: {args.grid}")
    return 0


def format_table(result) -> str:
    names = list(result.weights)
    lines = [result.describe_query()]
    cols = ["rank", "score"] + ([f"{n}" for n in names] if len(names) > 1 else []) + ["match", "id"]
    lines.append("  ".join(cols))
    for h in result.hits:
        mark = {True: "yes", False: "no", None: "-"}[h.correct]
        row = [f"{h.rank:>4}", f"{h.score:.4f}"]
        if len(names) > 1:
            row += [f"{h.scores[n]:.4f}" for n in names]
        row += [f"{mark:>5}", h.id]
        labels = ", ".join(f"{n}={h.labels[n]}" for n in names if n in h.labels)
        lines.append("  ".join(row) + (f"  [{labels}]" if labels else ""))
    if result.predicted:
        lines.append(f"predicted (vote of the {result.k} nearest labelled items in each attribute): "
                     + ", ".join(str(p) for p in result.predicted.values()))
    queried = [s for s in result.summary.values() if s.queried]
    if queried:
        lines.append("matches: " + "; ".join(str(s) for s in queried))
    return "\n".join(lines)


# --------------------------------------------------------------------------- pictures
def _box(text: str) -> tuple[float, ...]:
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or not (0 <= box[0] < box[2] and 0 <= box[1] < box[3]):
        raise CLIError(f"--box {text!r}: expected X0,Y0,X1,Y1 with 0 <= X0 < X1 and 0 <= Y0 < Y1 (pixels)")
    return box


def run_attention(args: argparse.Namespace) -> int:
    from agman.render import save_picture

    if not 0 <= args.alpha <= 1:
        raise CLIError(f"--alpha must be in [0, 1], got {args.alpha}")
    boxes = [_box(text) for text in args.box]
    if boxes and args.view == "model":
        raise CLIError("--box draws on the original image: leave out --view model")
    retriever = open_retriever(args)
    terms = list(retriever.parse_attributes(args.attribute))
    weighted = [f"{t.name}:{t.weight:g}" for t in terms if t.weight != 1]
    if weighted:
        raise CLIError(f"-a {', '.join(weighted)}: an attention map has no weight; give the attribute name alone")
    image = query_image(retriever, args)
    if args.view == "model":
        overlays = [retriever.attention_image(image, t.index, alpha=args.alpha) for t in terms]
    else:
        overlays = [retriever.attention_beside_original(image, t.index, alpha=args.alpha, boxes=boxes) for t in terms]
    if overlays[0] is None:
        raise CLIError(f"model {retriever.info.model_name!r} has no spatial attention map")
    if len(overlays) == 1:
        picture = overlays[0]
    elif args.view == "model":
        from agman.render import captioned_strip

        picture = captioned_strip(overlays, [t.name for t in terms], "attention (red = high)")
    else:  # each is already the original beside its map, captioned with the attribute: one under the other
        from agman.render import stack_vertically

        picture = stack_vertically(overlays)
    save_picture(picture, args.out)
    print(f"attention of {', '.join(t.name for t in terms)}: {args.out}")
    return 0


def same_catalog(first, other, first_dir: str, other_dir: str) -> None:
    """Refuse to compare an index that holds another catalog (another set of item ids) than the first."""
    a, b = first.item_ids(), other.item_ids()
    if a == b:
        return
    only_a, only_b = sorted(a - b), sorted(b - a)
    examples = "; ".join(f"{len(ids)} only in {where} (e.g. {ids[0]!r})"
                         for ids, where in ((only_a, first_dir), (only_b, other_dir)) if ids)
    raise CLIError(f"--index {other_dir} holds another catalog than --index {first_dir} ({len(b)} vs {len(a)} items: "
                   f"{examples}); compare ranks one catalog under several checkpoints: index the same images "
                   "with each checkpoint")


def run_compare(args: argparse.Namespace) -> int:
    from agman.render import ranking_comparison, save_picture

    if args.name and len(args.name) != len(args.index):
        raise CLIError(f"--name given {len(args.name)} times for {len(args.index)} --index folders")
    retrievers = [open_retriever(args, index_dir) for index_dir in args.index]
    for index_dir, retriever in zip(args.index[1:], retrievers[1:]):
        same_catalog(retrievers[0], retriever, args.index[0], index_dir)
    rows = {}
    image = None
    weights = None
    for i, (index_dir, retriever) in enumerate(zip(args.index, retrievers)):
        result = run_query(retriever, args, args.attribute, args.k)
        weights = result.weights
        name = args.name[i] if args.name else f"{retriever.info.model_name} ({Path(index_dir).name})"
        if name in rows:
            name = f"{name} #{i + 1}"
        rows[name] = grid_results(retriever, result)
        if image is None:
            image = query_image(retriever, args)
    title = ", ".join(f"{n}:{w:g}" for n, w in weights.items())
    save_picture(ranking_comparison(image, rows, title=title), args.out)
    print(f"comparison of {len(rows)} indexes: {args.out}")
    return 0
