"""What the catalog retrieval commands share (``cli/index.py``, ``cli/search.py``, ``cli/attention.py``,
``cli/compare.py``, ``cli/serve.py``): option types and groups, the model and runtime options, where
an index is, and the Retriever they open."""
from __future__ import annotations

import argparse
from pathlib import Path

from agman.cli import CLIError

from agman.retrieval.query import DEFAULT_K, MAX_K  # noqa: F401 - the commands' k options


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
