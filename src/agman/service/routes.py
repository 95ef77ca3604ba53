"""The service's endpoints.  Each route reads its typed request, calls the Retriever (searches in the
thread pool, model calls on the model thread) and shapes the JSON or image answer."""
from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import Annotated, BinaryIO
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from agman.retrieval.search import Retriever, SearchResult
from agman.service.limits import QUERY_THUMBNAIL
from agman.service.search_request import (
    FORM_TYPES,
    MAX_FORM_FIELDS,
    SearchForm,
    is_json,
    media_type,
    read_form,
    read_json,
    request_body_schema,
    unsupported,
)
from agman.service.state import CachedQuery, ServiceState, get_retriever, get_state
from agman.service.uploads import QueryPicture, decode_upload, reduce_upload

WEB_IMAGE_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp",
                   "BMP": "image/bmp"}
"""Catalog files served as they are, by the format sniffed from their bytes; other images are sent
as PNG, and a file that is not an image is never sent."""

STATIC_DIR = Path(__file__).resolve().parent / "static"

router = APIRouter()
State = Annotated[ServiceState, Depends(get_state)]
RetrieverDep = Annotated[Retriever, Depends(get_retriever)]


def png_response(image: Image.Image) -> Response:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png", headers={"Cache-Control": "max-age=300"})


def item_url(item_id: str) -> str:
    """The image URL of an item: its id percent-encoded, its ``/`` too when it has a ``.`` or
    ``..`` segment (a browser resolving ``/items/../x/image`` would step up the path)."""
    dots = any(part in (".", "..") for part in item_id.split("/"))
    return f"/items/{quote(item_id, safe='' if dots else '/')}/image"


def attention_url(attribute: str, *, item: str | None = None, query: str | None = None) -> str:
    params = {"attribute": attribute}
    params.update({"item": item} if item is not None else {"query": query})
    return "/attention?" + urlencode(params)


# --------------------------------------------------------------------------- status
@router.get("/health", summary="Liveness, what is loaded, and whether the index files are sound")
def health(state: State):
    """``status``: ``ok``; ``damaged`` (answered 503, like searches) when index files a search reads
    changed under the server and no longer hold what it serves or what index.json records;
    ``degraded`` (200) when the folder on disk is damaged or half written but searches answer from
    the in-memory copy of the version in ``index.serving``.  ``problems`` says what is wrong."""
    retriever = state.retriever
    info = retriever.info
    body = {
        "status": "ok",
        "items": len(retriever),
        "index_type": retriever.store.config.kind,
        "model": retriever.info.model_name,
        "checkpoint": retriever.info.checkpoint.identity,
        "index": {**{k: state.public(v) if isinstance(v, str) else v for k, v in state.watch.status().items()},
                  "serving": {"created": info.created, "updated": info.updated, "count": info.count}},
        "batches": {"forward_passes": state.batcher.batches, "images": state.batcher.images,
                    "seconds": round(state.batcher.seconds, 3), "cpu_seconds": round(state.batcher.cpu_seconds, 3)},
    }
    folder = state.index_health()
    if folder is not None:
        body["notes"] = [state.public(n) for n in folder.notes]
        if not folder.ok:
            body.update(status="damaged", problems=[state.public(d) for d in folder.damage + folder.degraded])
            return JSONResponse(body, status_code=503)
        if folder.degraded:
            body.update(status="degraded", problems=[state.public(d) for d in folder.degraded])
    return body


@router.get("/info", summary="Attributes, their values, index size and request limits")
def info(state: State):
    retriever, limits = state.retriever, state.limits
    return {
        "attributes": [{"name": a.name, "values": list(a.values)} for a in retriever.info.attributes],
        "items": len(retriever),
        "index_type": retriever.store.config.kind,
        "exact": retriever.exact,
        "model": retriever.info.model_name,
        "checkpoint": retriever.info.checkpoint.identity,
        "max_k": limits.max_k,
        "max_page": limits.max_page,
        "max_upload_bytes": limits.max_upload_bytes,
        "max_pixels": limits.max_pixels,
        "examples": [it.id for it in retriever.items(0, 12)],
    }


@router.get("/items", summary="A page of the catalog: items in index order, with their labels and metadata")
def list_items(
    state: State,
    offset: Annotated[int, Query(ge=0, description="position of the first item (0: the first)")] = 0,
    limit: Annotated[int | None, Query(description="items on the page (1..max_page, default max_page)")] = None,
):
    """``{"offset", "limit", "total", "items": [{"id", "image_url", "labels", "metadata"}]}``; an
    offset past the end gives an empty page (``total`` says where it ends)."""
    max_page = state.limits.max_page
    limit = max_page if limit is None else limit
    if not 1 <= limit <= max_page:
        raise HTTPException(400, f"limit must be between 1 and {max_page}, got {limit}")
    retriever = state.retriever
    total = len(retriever)
    items = retriever.items(offset, limit) if offset < total else []
    return {
        "offset": offset,
        "limit": limit,
        "total": total,
        "items": [{"id": it.id, "image_url": item_url(it.id), "labels": it.labels, "metadata": it.metadata}
                  for it in items],
    }


# --------------------------------------------------------------------------- search
def read_upload(file: BinaryIO, state: ServiceState) -> tuple[str, CachedQuery | QueryPicture]:
    """On a decoder thread: the upload's id and its cached query, or the upload decoded and reduced
    at once to what the service keeps (the full picture is dropped here, before the request waits
    for the model)."""
    limits, checkpoint = state.limits, state.retriever.info.checkpoint
    data = file.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise HTTPException(413, f"image file exceeds the {limits.max_upload_bytes}-byte upload limit")
    qid = "q" + hashlib.sha256(data).hexdigest()[:20]
    cached = state.queries.get(qid)
    if cached is not None:
        return qid, cached
    picture = decode_upload(data, state.image_limits)
    del data
    return qid, reduce_upload(picture, checkpoint.input_size, checkpoint.crop_ratio, QUERY_THUMBNAIL)


async def embed_upload(state: ServiceState, image: UploadFile) -> CachedQuery:
    """The uploaded image decoded and embedded, or the cached query of the same bytes.  At most
    ``decode_slots`` uploads are read into memory and decoded at once."""
    qid, found = await state.decoders.run(read_upload, image.file, state)
    if isinstance(found, CachedQuery):
        return found
    tensor = await state.decoders.run(state.retriever.model_input, found.view)  # the batch thread only runs the model
    vectors = await state.batcher.embed(tensor)
    cached = CachedQuery(qid, found, vectors)
    state.queries.put(cached)
    return cached


@router.post("/search", summary="Rank catalog items by (weighted) attribute similarity to a query",
             openapi_extra={"requestBody": request_body_schema()})
async def search(request: Request, state: State):
    """A multipart form (an ``image`` upload, or ``item`` / ``query``), a URL-encoded form, or a JSON
    object with the same fields less the upload; any other content type is answered 415."""
    started = time.perf_counter()
    kind = media_type(request)
    if is_json(kind):
        return await run_search(state, await read_json(request, state), started)
    if kind not in FORM_TYPES:
        raise unsupported(request)
    async with request.form(max_files=1, max_fields=MAX_FORM_FIELDS) as fields:  # closes the spooled upload
        return await run_search(state, read_form(fields, state), started)


async def run_search(state: ServiceState, form: SearchForm, started: float) -> dict:
    state.require_sound_index()
    retriever = state.retriever
    if form.item is not None:
        result = await run_in_threadpool(
            retriever.search_item, form.item, form.weights, form.k,
            exclude_self=form.exclude_self, annotated_only=form.annotated_only, filter=form.filter,
        )
        query = {"kind": "item", "id": form.item, "image_url": item_url(form.item)}
        source = {"item": form.item}
    else:
        if form.image is not None:
            cached = await embed_upload(state, form.image)
        else:
            cached = state.queries.require(form.query, f" (uploads are kept for the last {state.limits.query_cache})")
        result = await run_in_threadpool(
            retriever.search, cached.vectors, form.weights, form.k, annotated_only=form.annotated_only,
            filter=form.filter,
        )
        result.query_id = cached.id
        query = {"kind": "upload", "id": cached.id, "image_url": f"/queries/{cached.id}/image"}
        source = {"query": cached.id}
    return search_answer(result, query, source, form.k, started)


def search_answer(result: SearchResult, query: dict, source: dict, k: int, started: float) -> dict:
    """The JSON of a search (:meth:`SearchResult.to_dict`: predicted values, match summary, hits
    with labels and matches): the query with its URLs, and every hit with its image and attention
    URLs (server paths stay private)."""
    names = list(result.weights)
    answer = result.to_dict()
    query["labels"] = result.query_labels
    query["attention_urls"] = {n: attention_url(n, **source) for n in names}
    for d in answer["results"]:
        del d["path"]
        d["image_url"] = item_url(d["id"])
        d["attention_urls"] = {n: attention_url(n, item=d["id"]) for n in names}
    answer.update(query=query, k=k, took_ms=round(1000 * (time.perf_counter() - started), 3))
    return answer


# --------------------------------------------------------------------------- images
@router.get("/items/{item_id:path}/image", summary="A catalog item's image", response_class=Response)
def item_image(item_id: str, retriever: RetrieverDep):
    """The file with the content type of the image format its bytes hold (never the name's: a
    ``*.html`` catalog file holding a PNG is ``image/png``); formats browsers do not show are sent
    as PNG; a file that is not an image is not sent (404)."""
    path = Path(retriever.item(item_id).path)
    if not path.is_file():
        raise HTTPException(404, f"image file of item {item_id!r} is missing on the server")
    try:
        with Image.open(path) as im:
            kind = im.format
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise HTTPException(404, f"the file of item {item_id!r} is not an image the service can show") from None
    headers = {"Cache-Control": "max-age=3600", "Content-Security-Policy": "default-src 'none'; sandbox"}
    if kind in WEB_IMAGE_TYPES:
        return FileResponse(path, media_type=WEB_IMAGE_TYPES[kind], headers=headers)
    return png_response(item_picture(retriever, item_id))


def item_picture(retriever: Retriever, item_id: str) -> Image.Image:
    """A catalog item's image decoded (404 when its file is gone or unreadable)."""
    if not Path(retriever.item(item_id).path).is_file():
        raise HTTPException(404, f"image file of item {item_id!r} is missing on the server")
    return retriever.item_image(item_id)


@router.get("/queries/{qid}/image", summary="An uploaded query image (recent uploads only)", response_class=Response)
def query_image(qid: str, state: State):
    return Response(state.queries.require(qid).picture.thumbnail_png, media_type="image/png",
                    headers={"Cache-Control": "max-age=300"})


ATTENTION_SUMMARY = "Attention heatmap PNG for (catalog item or uploaded query, attribute)"


@router.get("/attention", summary=ATTENTION_SUMMARY, response_class=Response)
async def attention(
    state: State,
    attribute: Annotated[str, Query(description="attribute name")],
    item: Annotated[str | None, Query(description="catalog item id")] = None,
    query: Annotated[str | None, Query(description="id of a recent uploaded query")] = None,
    alpha: Annotated[float, Query(ge=0.0, le=1.0, description="heatmap opacity")] = 0.5,
):
    if (item is None) == (query is None):
        raise HTTPException(400, "give exactly one of item or query")
    retriever = state.retriever
    a = retriever.attribute_index(attribute)  # the one check of the name (400), before waiting for the model
    if item is not None:
        picture = await run_in_threadpool(item_picture, retriever, item)
    else:
        picture = state.queries.require(query).picture.view
    overlay = await state.model_thread.run(retriever.attention_image, picture, a, alpha=alpha)
    if overlay is None:
        raise HTTPException(409, f"model {retriever.info.model_name!r} has no spatial attention map")
    return png_response(overlay)


@router.get("/", include_in_schema=False)
def page():
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")
