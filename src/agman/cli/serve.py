"""`agman serve`: the HTTP search service and web page over a catalog index (FastAPI + uvicorn)."""
from __future__ import annotations

import argparse
import os

TOKEN_ENV = "AGMAN_TOKEN"


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535 (0: any free port), got {value}")
    return value


def register(subparsers) -> None:
    from agman.cli.retrieval import (
        add_index_location,
        add_model_options,
        add_runtime_options,
        add_search_tuning,
        add_verify_option,
        positive_int,
    )

    p = subparsers.add_parser(
        "serve",
        help="serve an index over HTTP: POST /search, GET /attention, the web page at /, docs at /docs",
        description="Load the index and its checkpoint once, then serve searches by uploaded image or "
        "catalog item, attention heatmaps and a web page.  Every limit is described in docs/retrieval.md "
        "(Limits and security).  The token (--token / $AGMAN_TOKEN) protects the HTTP service: every route, "
        "and the writes of --writable.  It does not protect the index itself: the index folder's files, a "
        "Milvus server (its own credentials), or a Milvus Lite file's database server (a unix socket in a "
        "private folder that processes of the same user can reach).",
    )
    add_index_location(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs a token or --insecure-no-token)")
    p.add_argument("--port", type=port_number, default=8000, help="port (default 8000; 0: any free port)")
    add_model_options(p)
    add_runtime_options(p)
    add_verify_option(p, "full")
    p.add_argument("--threads", type=positive_int,
                   help="torch threads for the model (default: torch's, one per core); 1 keeps a busy machine's "
                   "cores from waiting on each other")
    catalog = p.add_argument_group("a catalog that changes")
    catalog.add_argument("--reload-seconds", type=float, default=2.0,
                         help="check the index for changes (agman index --add/--update/--delete) this often and "
                         "serve them without a restart (default 2; 0: never)")
    catalog.add_argument("--writable", action="store_true",
                         help="allow DELETE /items/{id} and PUT /items/{id} (re-index an item) through the service")
    catalog.add_argument("--insecure-lite-writable", action="store_true",
                         help="allow --writable over a Milvus Lite file: its database server (a unix socket in a "
                         "private folder) answers any process of this user without the token")
    add_search_tuning(p)
    _add_logs_and_limits(p)
    guard = p.add_argument_group("serving beyond localhost")
    guard.add_argument("--token", default=None,
                       help=f"bearer token every HTTP request must carry (default: ${TOKEN_ENV}, which keeps it out "
                       "of the process list); required for a non-loopback --host.  It guards this HTTP service "
                       "only: not the index files, not a Milvus server (its own --uri credentials), not Milvus "
                       "Lite's database server, which any process of this user can reach")
    guard.add_argument("--insecure-no-token", action="store_true",
                       help="serve a non-loopback --host without a token (a trusted network, or a proxy that "
                       "authenticates)")
    guard.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       help="a Host header name to accept besides the bound address and localhost (repeat; "
                       "'*' accepts any; '*.example.com' a domain)")
    guard.add_argument("--forwarded-allow-ips", default=None, metavar="IPS",
                       help="proxies whose X-Forwarded-For/-Proto headers are trusted (default 127.0.0.1)")
    p.set_defaults(func=run_serve)


def _add_logs_and_limits(p: argparse.ArgumentParser) -> None:
    """The logging options and one option per service limit (``SERVE_OPTIONS``)."""
    from agman.cli.retrieval import positive_number
    from agman.service.limits import LOG_LEVELS, SERVE_OPTIONS, ServiceLimits

    logs = p.add_argument_group("logging")
    logs.add_argument("--access-log", action="store_true",
                      help="log one line per request (client, method, path, status) to stderr (default: off)")
    logs.add_argument("--log-level", choices=LOG_LEVELS, default="warning",
                      help="uvicorn's and agman's log level (default warning); --access-log shows its lines "
                      "at any level")
    limits = p.add_argument_group("limits (docs/retrieval.md, Limits and security)")
    defaults = ServiceLimits()
    for option, name, unit, what in SERVE_OPTIONS:
        default = getattr(defaults, name) / unit
        limits.add_argument(option, dest=name, type=positive_number, default=default, metavar="N",
                            help=f"{what} (default {default:g})")


def check_lite_writable(args: argparse.Namespace) -> None:
    """Refuse ``--writable`` over a Milvus Lite file unless ``--insecure-lite-writable``: whatever
    the token says, the catalog can be changed through Milvus Lite's own server."""
    from agman.cli import CLIError
    from agman.retrieval.backends import unguarded_writes

    if args.writable and unguarded_writes(args.index) and not args.insecure_lite_writable:
        raise CLIError(
            f"--writable over the Milvus Lite file {args.index}: Milvus Lite's database server has no authentication "
            "(agman puts it on a unix socket in a private folder, so processes of this user can reach it), so "
            "--token cannot guard writes to this catalog; pass --insecure-lite-writable if that is acceptable, or "
            "serve a Milvus server (--index http://host:19530) for a writable shared catalog"
        )


def run_serve(args: argparse.Namespace) -> int:
    from agman.cli import CLIError
    from agman.cli.retrieval import open_retriever
    from agman.service.app import create_app
    from agman.service.limits import SERVE_OPTIONS, ServiceLimits
    from agman.service.server import (
        check_exposure,
        default_allowed_hosts,
        listen,
        serve,
    )

    token = args.token or os.environ.get(TOKEN_ENV) or None
    check_exposure(args.host, token, args.insecure_no_token)
    check_lite_writable(args)
    limits = ServiceLimits(**{name: round(getattr(args, name) * unit) if unit > 1 else getattr(args, name)
                              for _, name, unit, _ in SERVE_OPTIONS})
    if args.reload_seconds < 0:
        raise CLIError(f"--reload-seconds must be 0 (never) or more, got {args.reload_seconds}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sock = listen(args.host, args.port)  # first: a busy port fails at once, before loading or announcing
    try:
        onnx = args.runtime == "onnx"
        retriever = open_retriever(args, load_model=not onnx, load_index=True)  # a damaged index stops here
        if onnx:  # the ONNX export of the index's checkpoint embeds the queries
            from agman.cli.retrieval import runtime_model

            retriever.set_model(*runtime_model(args, args.checkpoint or retriever.info.checkpoint.path))
        allowed = None if "*" in args.allowed_host else default_allowed_hosts(args.host, args.allowed_host)
        app = create_app(retriever, limits=limits, token=token, allowed_hosts=allowed,
                         reload_seconds=args.reload_seconds, writable=args.writable)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        auth = "token required" if token else "no token"
        print(f"serving {args.index} ({len(retriever)} items) on http://{shown}:{port}/  (docs: /docs; {auth})",
              flush=True)
        serve(app, sock, limits, forwarded_allow_ips=args.forwarded_allow_ips, log_level=args.log_level,
              access_log=args.access_log)
    finally:
        sock.close()
    return 0
