"""`agman serve`: the HTTP search service and web page over a catalog index (FastAPI + uvicorn)."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from agman.cli.retrieval import add_index_location, add_model_options, add_search_tuning, positive_int
    from agman.service.limits import (
        DEFAULT_BATCH_SIZE,
        DEFAULT_BATCH_WAIT_MS,
        DEFAULT_MAX_K,
        DEFAULT_MAX_PIXELS,
        DEFAULT_MAX_UPLOAD_BYTES,
        DEFAULT_QUERY_CACHE,
        DEFAULT_RELOAD_SECONDS,
    )

    p = subparsers.add_parser(
        "serve",
        help="serve an index over HTTP: POST /search, GET /attention, the web page at /, docs at /docs",
        description="Load the index and its checkpoint once, then serve searches by uploaded image or "
        "catalog item, attention heatmaps and a web page.",
    )
    add_index_location(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    add_model_options(p)
    p.add_argument("--max-k", type=positive_int, default=DEFAULT_MAX_K,
                   help=f"largest k a request may ask (default {DEFAULT_MAX_K})")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_BYTES / 2**20,
                   help="upload size limit in MiB (default 10)")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help=f"decoded image size limit (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--query-cache", type=int, default=DEFAULT_QUERY_CACHE, help="uploaded queries kept for /attention")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                   help=f"uploads embedded in one forward pass at most (default {DEFAULT_BATCH_SIZE}; "
                   "1: one at a time)")
    p.add_argument("--batch-wait-ms", type=float, default=DEFAULT_BATCH_WAIT_MS,
                   help="how long an upload waits for others to share its forward pass "
                   f"(default {DEFAULT_BATCH_WAIT_MS})")
    p.add_argument("--reload-seconds", type=float, default=DEFAULT_RELOAD_SECONDS,
                   help=f"check the index for changes this often and serve them (default {DEFAULT_RELOAD_SECONDS}; "
                   "0: never)")
    p.add_argument("--threads", type=positive_int,
                   help="torch threads for the model (default: torch's, one per core); 1 keeps a busy machine's "
                   "cores from waiting on each other")
    p.add_argument("--writable", action="store_true",
                   help="allow DELETE /items/{id} and PUT /items/{id} (re-index an item) through the service")
    add_search_tuning(p)
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from agman.cli.retrieval import open_retriever
    from agman.service.app import create_app
    from agman.service.limits import ServiceLimits

    limits = ServiceLimits(
        max_k=args.max_k,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        query_cache=args.query_cache,
        batch_size=args.batch_size,
        batch_wait_ms=args.batch_wait_ms,
        reload_seconds=args.reload_seconds,
        writable=args.writable,
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    retriever = open_retriever(args, load_model=True)
    app = create_app(retriever, limits=limits)
    url = f"http://{args.host}:{args.port}/"
    print(f"serving {args.index} ({len(retriever)} items) on {url}  (docs: /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
