"""The HTTP service: search a catalog index by uploaded image or catalog item, see the attention.

``create_app(index_dir)`` opens a :class:`~agman.retrieval.search.Retriever` once (checkpoint
loaded and checked against the index at start-up) and serves (routes in :mod:`agman.service.routes`):

==========================  ==============================================================
``GET  /``                  the single-page web UI (``static/``)
``GET  /health``            liveness + what is loaded
``GET  /info``              attributes and their values, index size and type, limits
``POST /search``            multipart form: ``image`` (file) | ``item`` (id) | ``query`` (id of an
                            earlier upload), ``attributes`` (``name[:weight],...``), ``k``,
                            ``exclude_self``, ``annotated_only``, ``filter``; or the same fields
                            less the upload as JSON -> JSON ranking with URLs, predicted values
                            and the match summary (:mod:`agman.service.search_request`)
``GET  /items``             a page of the catalog (``offset``, ``limit`` up to ``max_page``)
``GET  /items/{id}/image``  a catalog item's image
``GET  /queries/{id}/image``  an uploaded query image (kept for a while after its search)
``GET  /attention``         heatmap PNG: ``attribute`` + ``item`` or ``query`` [+ ``alpha``]
``DELETE /items/{id}``      remove an item (``--writable`` servers; unknown id 404)
``PUT  /items/{id}``        re-index an item: JSON ``{"path", "labels", "metadata"}``, labels and
                            metadata merged by key (``null`` removes one) (``--writable``)
``GET  /docs``, ``/redoc``   OpenAPI documentation from local assets (:mod:`agman.service.docs`)
``GET  /openapi.json``      the OpenAPI schema
==========================  ==============================================================

Bad input answers 4xx with ``{"detail": message}``: not an image or truncated (400), over the
byte or pixel limit (413), unknown attribute / bad weight / bad k (400), unknown item or query
(404), malformed ``filter`` (400 naming the position), model without attention (409); no message
names a server path (``ServiceState.public``).  Index files a search reads damaged under the
server answer 503 (and ``/health`` says what is damaged); a loaded flat index answers from memory
over a damaged folder (``/health``: ``degraded``); an unreachable Milvus 503.  Uploads are embedded
in dynamic batches on one thread (:mod:`agman.service.batcher`), attention maps on the model
thread; searches and file responses run concurrently in the thread pool.  The index is reopened
when ``agman index`` changes it (:mod:`agman.service.watch`).

Guards, outermost first: security headers, the allowed ``Host`` names (``allowed_hosts``), the
bearer token (``token``), the number of requests in progress, the body limit and deadline
(:mod:`agman.service.guard`, :mod:`agman.service.uploads`); connection timeouts are the server's
(:mod:`agman.service.server`).
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from agman.data.images import ImageLoadError
from agman.errors import InvalidValueError
from agman.retrieval.backends import open_store
from agman.retrieval.filters import FilterError
from agman.retrieval.info import CatalogIndexError, IndexBusyError, StoreUnavailableError
from agman.retrieval.search import NoModelError, QueryError, Retriever, UnknownItemError
from agman.service import writes
from agman.service.docs import add_docs
from agman.service.guard import (
    MIN_TOKEN_LENGTH,
    ConcurrencyLimit,
    SecurityHeaders,
    TokenAuth,
)
from agman.service.limits import ServiceLimits
from agman.service.routes import STATIC_DIR, router
from agman.service.state import ServiceState, get_state
from agman.service.uploads import BodyLimit

log = logging.getLogger(__name__)

ERROR_STATUS = [  # Starlette picks the handler of the most specific class: UnknownItemError is a QueryError
    (UnknownItemError, 404, ""),
    (ImageLoadError, 404, "catalog image unavailable: "),
    (NoModelError, 503, ""),
    (QueryError, 400, ""),
    (FilterError, 400, ""),  # names the position in the filter text
    (InvalidValueError, 400, ""),  # a label or metadata value an item cannot take
    (CatalogIndexError, 503, ""),
    (IndexBusyError, 409, ""),  # another process writes the index folder
    (StoreUnavailableError, 503, ""),  # Milvus unreachable or failing
]


def create_app(
    retriever: Retriever | str | Path,
    *,
    checkpoint: str | Path | None = None,
    limits: ServiceLimits | None = None,
    device: str = "cpu",
    token: str | None = None,
    allowed_hosts: list[str] | None = None,
    reload_seconds: float = 2.0,
    writable: bool = False,
) -> FastAPI:
    """The FastAPI app serving ``retriever`` (or the index folder it is opened from: every file
    verified in full, every FAISS index read).  With ``token`` every request must carry it; with
    ``allowed_hosts`` other ``Host`` headers are answered 400.  The index is checked for changes
    every ``reload_seconds`` (0: never); ``writable`` allows DELETE / PUT ``/items/{id}``."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise InvalidValueError(f"the token must have at least {MIN_TOKEN_LENGTH} characters, got {len(token)}")
    if not isinstance(retriever, Retriever):
        retriever = Retriever(open_store(retriever, verify="full", load=True), checkpoint=checkpoint, device=device)
    retriever.model  # noqa: B018 - load and verify the checkpoint before serving
    limits = limits or ServiceLimits()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        app.state.service.close()  # the batcher's and the index watch's threads

    app = FastAPI(
        lifespan=lifespan,
        docs_url=None,  # served from local assets: agman.service.docs
        redoc_url=None,
        title="agman retrieval",
        version=__import__("agman").__version__,
        description="Attribute-specific fashion retrieval (AG-MAN): items sharing an attribute's value with a query "
        "image, single or weighted multi-attribute, with the model's attention heatmap.",
    )
    app.state.service = ServiceState(retriever, limits, reload_seconds=reload_seconds, writable=writable)
    # add_middleware wraps: the last added runs first
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes + 64 * 1024, upload_bytes=limits.max_upload_bytes,
                       timeout=limits.body_timeout)
    app.add_middleware(ConcurrencyLimit, max_requests=limits.max_requests)
    if token is not None:
        app.add_middleware(TokenAuth, token=token)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)
    app.add_middleware(SecurityHeaders)
    for error, status, prefix in ERROR_STATUS:
        app.add_exception_handler(error, _answer(status, prefix))
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _unexpected)
    app.include_router(router)
    app.include_router(writes.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    add_docs(app)
    return app


def _answer(status: int, prefix: str):
    async def handler(request: Request, exc: Exception):
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": get_state(request).public(f"{prefix}{exc}")}, status_code=status)

    return handler


async def _http_error(request: Request, exc: HTTPException):
    """The routes' own 4xx/5xx, their message without server paths."""
    detail = get_state(request).public(str(exc.detail))
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _invalid(request: Request, exc: RequestValidationError):
    """422 naming each invalid field (``k: ...``), without FastAPI's ``body.``/``query.`` prefixes."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return JSONResponse({"detail": get_state(request).public("; ".join(parts) or "invalid request")}, status_code=422)


async def _unexpected(request: Request, exc: Exception):
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)
