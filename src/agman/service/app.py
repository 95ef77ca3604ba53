"""The HTTP service: search a catalog index by uploaded image or catalog item, see the attention.

``create_app(index_dir)`` opens a :class:`~agman.retrieval.search.Retriever` once (checkpoint
loaded and checked against the index at start-up) and serves:

==========================  ==============================================================
``GET  /``                  the single-page web UI (``static/``)
``GET  /health``            liveness + what is loaded
``GET  /info``              attributes and their values, index size and type, limits
``POST /search``            multipart form: ``image`` (file) | ``item`` (id) | ``query`` (id of an
                            earlier upload), ``attributes`` (``name[:weight],...``), ``k``,
                            ``exclude_self``, ``annotated_only`` -> JSON ranking with URLs
``GET  /items/{id}/image``  a catalog item's image
``GET  /queries/{id}/image``  an uploaded query image (kept for a while after its search)
``GET  /attention``         heatmap PNG: ``attribute`` + ``item`` or ``query`` [+ ``alpha``]
``GET  /docs``              OpenAPI documentation (``/openapi.json``)
==========================  ==============================================================

Bad input answers 4xx with ``{"detail": message}``: not an image or truncated (400), over the
byte or pixel limit (413), unknown attribute / bad weight / bad k (400), unknown item or query
(404), model without attention (409).  Model inference (query embedding, attention) runs on one dedicated
thread, one request at a time; searches and file responses run concurrently in the thread pool.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import mimetypes
import threading
import time
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, urlencode

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from agman.data.images import ImageLoadError
from agman.errors import InvalidValueError
from agman.retrieval.search import (
    NoModelError,
    QueryError,
    Retriever,
    UnknownItemError,
    parse_attribute_weights,
)

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"

DEFAULT_MAX_K = 100
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_QUERY_CACHE = 256
QUERY_THUMBNAIL = 512  # longest side of a kept query image


class ServiceLimits:
    """Bounds on what one request may ask for."""

    def __init__(
        self,
        max_k: int = DEFAULT_MAX_K,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        query_cache: int = DEFAULT_QUERY_CACHE,
    ):
        for name, value in (("max_k", max_k), ("max_upload_bytes", max_upload_bytes), ("max_pixels", max_pixels)):
            if int(value) < 1:
                raise InvalidValueError(f"{name} must be at least 1, got {value}")
        self.max_k = int(max_k)
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_pixels = int(max_pixels)
        self.query_cache = max(1, int(query_cache))


class QueryStore:
    """Recent uploads by id: the model's view of the image and its embeddings ``[A, D]`` (LRU)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._data: OrderedDict[str, tuple[Image.Image, Image.Image, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, qid: str, image: Image.Image, thumb: Image.Image, vectors: np.ndarray) -> None:
        with self._lock:
            self._data[qid] = (image, thumb, vectors)
            self._data.move_to_end(qid)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def get(self, qid: str):
        with self._lock:
            entry = self._data.get(qid)
            if entry is not None:
                self._data.move_to_end(qid)
            return entry


def decode_upload(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes of an uploaded file -> RGB image; 400 when not a (complete) image, 413 when too large."""
    if not data:
        raise HTTPException(400, "the uploaded image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise HTTPException(
                        413, f"image is {w}x{h} = {w * h} pixels; this service accepts at most {max_pixels}"
                    )
                im.load()
                return im.convert("RGB")
    except HTTPException:
        raise
    except UnidentifiedImageError:
        raise HTTPException(400, "the upload is not an image this service can read (JPEG, PNG, WebP, ...)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise HTTPException(413, f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise HTTPException(400, f"cannot decode the image (truncated or corrupt?): {exc}") from None


class BodyLimit:
    """ASGI middleware: a POST whose ``Content-Length`` exceeds ``max_bytes`` is answered 413 before
    its body is read (multipart parsing would otherwise spool it to disk first)."""

    def __init__(self, app, max_bytes: int, upload_bytes: int):
        self.app = app
        self.max_bytes = max_bytes
        self.upload_bytes = upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None:
                try:
                    too_big = int(length) > self.max_bytes
                except ValueError:
                    await JSONResponse({"detail": "invalid Content-Length header"}, 400)(scope, receive, send)
                    return
                if too_big:
                    detail = f"request body of {int(length)} bytes exceeds the {self.upload_bytes}-byte upload limit"
                    await JSONResponse({"detail": detail}, 413)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def png_response(image: Image.Image) -> Response:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png", headers={"Cache-Control": "max-age=300"})


def item_url(item_id: str) -> str:
    return f"/items/{quote(item_id, safe='/')}/image"


def attention_url(attribute: str, *, item: str | None = None, query: str | None = None) -> str:
    params = {"attribute": attribute}
    params.update({"item": item} if item is not None else {"query": query})
    return "/attention?" + urlencode(params)


def parse_k(raw: str | None, max_k: int) -> int:
    if raw is None or str(raw).strip() == "":
        return min(10, max_k)
    try:
        k = int(str(raw).strip())
    except ValueError:
        raise HTTPException(400, f"k must be an integer, got {raw!r}") from None
    if k < 1 or k > max_k:
        raise HTTPException(400, f"k must be between 1 and {max_k}, got {k}")
    return k


def parse_flag(raw: str | None, name: str) -> bool:
    if raw is None or raw == "":
        return False
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise HTTPException(400, f"{name} must be true or false, got {raw!r}")


def create_app(
    retriever: Retriever | str | Path,
    *,
    checkpoint: str | Path | None = None,
    limits: ServiceLimits | None = None,
    device: str = "cpu",
) -> FastAPI:
    """The FastAPI app serving ``retriever`` (or the index folder it is opened from)."""
    if not isinstance(retriever, Retriever):
        retriever = Retriever.open(retriever, checkpoint, device=device, load_model=True)
    else:
        retriever.model  # noqa: B018 - load and verify the checkpoint before serving
    limits = limits or ServiceLimits()
    queries = QueryStore(limits.query_cache)
    # The model runs one request at a time on its own thread, so that requests waiting for it do
    # not hold the thread pool that item queries and file responses need.
    model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agman-model")

    async def in_model_thread(fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(model_thread, partial(fn, *args, **kwargs))

    meta = retriever.index.meta

    app = FastAPI(
        title="agman retrieval",
        version=__import__("agman").__version__,
        description="Attribute-specific fashion retrieval (AG-MAN): items sharing an attribute's value with a query "
        "image, single or weighted multi-attribute, with the model's attention heatmap.",
    )
    app.state.retriever = retriever
    app.state.limits = limits

    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes + 64 * 1024, upload_bytes=limits.max_upload_bytes)

    @app.exception_handler(UnknownItemError)
    async def _unknown_item(request: Request, exc: UnknownItemError):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(ImageLoadError)
    async def _unreadable_item(request: Request, exc: ImageLoadError):
        return JSONResponse({"detail": f"catalog image unavailable: {exc}"}, status_code=404)

    @app.exception_handler(NoModelError)
    async def _no_model(request: Request, exc: NoModelError):
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(QueryError)
    async def _bad_query(request: Request, exc: QueryError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.get("/health", summary="Liveness and what is loaded")
    def health():
        return {
            "status": "ok",
            "items": len(retriever),
            "index_type": retriever.index.kind,
            "model": meta["model_name"],
            "checkpoint": retriever.index.identity,
        }

    @app.get("/info", summary="Attributes, their values, index size and request limits")
    def info():
        return {
            "attributes": [{"name": n, "values": retriever.index.attribute_values[n]} for n in retriever.attributes],
            "items": len(retriever),
            "index_type": retriever.index.kind,
            "exact": retriever.index.config.exact,
            "model": meta["model_name"],
            "checkpoint": retriever.index.identity,
            "max_k": limits.max_k,
            "max_upload_bytes": limits.max_upload_bytes,
            "max_pixels": limits.max_pixels,
            "examples": [it.id for it in retriever.index.items[:12]],
        }

    @app.post("/search", summary="Rank catalog items by (weighted) attribute similarity to a query")
    async def search(
        attributes: Annotated[
            list[str], Form(description="'name[:weight]' entries, comma-separated or repeated; weight defaults to 1")
        ],
        image: Annotated[UploadFile | None, File(description="query image (JPEG, PNG, ...)")] = None,
        item: Annotated[str | None, Form(description="id of a catalog item to use as the query")] = None,
        query: Annotated[str | None, Form(description="id of an earlier uploaded query (from a previous answer)")] = None,
        k: Annotated[str | None, Form(description="number of results (1..max_k, default 10)")] = None,
        exclude_self: Annotated[str | None, Form(description="leave the query item itself out (true/false)")] = None,
        annotated_only: Annotated[str | None, Form(description="rank only items annotated with the attributes")] = None,
    ):
        started = time.perf_counter()
        given = [name for name, v in (("image", image), ("item", item), ("query", query)) if v not in (None, "")]
        if len(given) != 1:
            raise HTTPException(400, f"give exactly one of image, item or query (got {', '.join(given) or 'none'})")
        k_value = parse_k(k, limits.max_k)
        flags = {"exclude_self": parse_flag(exclude_self, "exclude_self"), "annotated_only": parse_flag(annotated_only, "annotated_only")}
        weights_spec = [a for a in attributes if a is not None]
        if item:
            result = await run_in_threadpool(retriever.search_item, item, weights_spec, k_value, **flags)
            q = {"kind": "item", "id": item, "image_url": item_url(item)}
            key = {"item": item}
        else:
            if image is not None:
                data = await image.read(limits.max_upload_bytes + 1)
                if len(data) > limits.max_upload_bytes:
                    raise HTTPException(413, f"image file exceeds the {limits.max_upload_bytes}-byte upload limit")
                parse_attribute_weights(weights_spec, retriever.attributes)  # reject before decoding
                picture = await run_in_threadpool(decode_upload, data, limits.max_pixels)
                qid = "q" + hashlib.sha256(data).hexdigest()[:20]
                entry = queries.get(qid)
                if entry is None:
                    vectors = await in_model_thread(retriever.embed, picture)
                    thumb = picture.copy()
                    thumb.thumbnail((QUERY_THUMBNAIL, QUERY_THUMBNAIL))
                    entry = (picture, thumb, vectors)
                    queries.put(qid, *entry)
            else:
                qid = query
                entry = queries.get(qid)
                if entry is None:
                    raise HTTPException(404, f"no recent query {qid!r} (uploads are kept for the last {limits.query_cache})")
            result = await run_in_threadpool(
                retriever.search, entry[2], weights_spec, k_value, annotated_only=flags["annotated_only"]
            )
            result.query_id = qid
            q = {"kind": "upload", "id": qid, "image_url": f"/queries/{qid}/image"}
            key = {"query": qid}
        names = list(result.weights)
        q["labels"] = result.query_labels
        q["attention_urls"] = {n: attention_url(n, **key) for n in names}
        results = []
        for hit in result.hits:
            d = hit.to_dict()
            del d["path"]
            d["image_url"] = item_url(hit.id)
            d["attention_urls"] = {n: attention_url(n, item=hit.id) for n in names}
            results.append(d)
        return {
            "query": q,
            "attributes": result.weights,
            "k": k_value,
            "exact": result.exact,
            "candidates": result.candidates,
            "took_ms": round(1000 * (time.perf_counter() - started), 3),
            "results": results,
        }

    @app.get("/items/{item_id:path}/image", summary="A catalog item's image", response_class=Response)
    def item_image(item_id: str):
        it = retriever.item(item_id)
        path = Path(it.path)
        if not path.is_file():
            raise HTTPException(404, f"image file of item {item_id!r} is missing on the server")
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "max-age=3600"})

    @app.get("/queries/{qid}/image", summary="An uploaded query image (recent uploads only)", response_class=Response)
    def query_image(qid: str):
        entry = queries.get(qid)
        if entry is None:
            raise HTTPException(404, f"no recent query {qid!r}")
        return png_response(entry[1])

    @app.get("/attention", summary="Attention heatmap PNG for (catalog item or uploaded query, attribute)", response_class=Response)
    async def attention(
        attribute: Annotated[str, Query(description="attribute name")],
        item: Annotated[str | None, Query(description="catalog item id")] = None,
        query: Annotated[str | None, Query(description="id of a recent uploaded query")] = None,
        alpha: Annotated[float, Query(ge=0.0, le=1.0, description="heatmap opacity")] = 0.5,
    ):
        if (item is None) == (query is None):
            raise HTTPException(400, "give exactly one of item or query")
        if attribute not in retriever.attributes:
            raise HTTPException(400, f"unknown attribute {attribute!r}; this index has: {', '.join(retriever.attributes)}")
        if item is not None:
            picture = await run_in_threadpool(retriever.item_image, item)
        else:
            entry = queries.get(query)
            if entry is None:
                raise HTTPException(404, f"no recent query {query!r}")
            picture = entry[0]
        overlay = await in_model_thread(retriever.attention_image, picture, attribute, alpha=alpha)
        if overlay is None:
            raise HTTPException(409, f"model {meta['model_name']!r} has no spatial attention map")
        return png_response(overlay)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
