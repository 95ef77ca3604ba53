"""The service's endpoints.  Each route reads its typed request, calls the Retriever (searches in the
thread pool, model calls on the model thread) and shapes the JSON or image answer."""
from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, BinaryIO
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from agman.retrieval.filters import Filter
from agman.retrieval.query import AttributeWeights
from agman.retrieval.search import Retriever, SearchResult
from agman.service.limits import QUERY_THUMBNAIL
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
    return f"/items/{quote(item_id, safe='/')}/image"


def attention_url(attribute: str, *, item: str | None = None, query: str | None = None) -> str:
    params = {"attribute": attribute}
    params.update({"item": item} if item is not None else {"query": query})
    return "/attention?" + urlencode(params)


# --------------------------------------------------------------------------- status
@router.get("/health", summary="Liveness, what is loaded, and whether the index files are sound")
def health(state: State):
    """``status``: ``ok``, or ``damaged`` (answered 503) when the index files changed under the
    server and no longer hold what it serves or what index.json records (``problems`` says which)."""
    retriever = state.retriever
    body = {
        "status": "ok",
        "items": len(retriever),
        "index_type": retriever.store.config.kind,
        "model": retriever.info.model_name,
        "checkpoint": retriever.info.checkpoint.identity,
        "index": state.watch.status(),
        "batches": {"forward_passes": state.batcher.batches, "images": state.batcher.images,
                    "seconds": round(state.batcher.seconds, 3), "cpu_seconds": round(state.batcher.cpu_seconds, 3)},
    }
    folder = state.index_health()
    if folder is not None:
        body["notes"] = [state.public(n) for n in folder.notes]
        if not folder.ok:
            body.update(status="damaged", problems=[state.public(d) for d in folder.damage])
            return JSONResponse(body, status_code=503)
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
        "max_upload_bytes": limits.max_upload_bytes,
        "max_pixels": limits.max_pixels,
        "examples": [it.id for it in retriever.items(0, 12)],
    }


# --------------------------------------------------------------------------- search
@dataclass
class SearchForm:
    """A checked ``POST /search`` form: exactly one query source, parsed attributes, k and flags."""

    weights: AttributeWeights
    k: int
    exclude_self: bool
    annotated_only: bool
    image: UploadFile | None = None
    item: str | None = None
    query: str | None = None
    filter: Filter | None = None


def _flag(raw: str | None, name: str) -> bool:
    value = (raw or "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise HTTPException(400, f"{name} must be true or false, got {raw!r}")


def search_form(
    state: State,
    attributes: Annotated[
        list[str], Form(description="'name[:weight]' entries, comma-separated or repeated; weight defaults to 1")
    ],
    image: Annotated[UploadFile | None, File(description="query image (JPEG, PNG, ...)")] = None,
    item: Annotated[str | None, Form(description="id of a catalog item to use as the query")] = None,
    query: Annotated[str | None, Form(description="id of an earlier uploaded query (from a previous answer)")] = None,
    k: Annotated[str | None, Form(description="number of results (1..max_k, default 10)")] = None,
    exclude_self: Annotated[str | None, Form(description="leave the query item itself out (true/false)")] = None,
    annotated_only: Annotated[str | None, Form(description="rank only items annotated with the attributes")] = None,
    filter: Annotated[
        str | None, Form(description='only items matching this expression, e.g. category == "dress" and price < 50')
    ] = None,
) -> SearchForm:
    """The form's fields checked in one place; 400 naming the field that is wrong.  ``k`` and the
    flags are read here rather than typed as int/bool so that they answer 400 with these messages
    (FastAPI's own validation would answer 422), as documented."""
    given = [name for name, v in (("image", image), ("item", item), ("query", query)) if v not in (None, "")]
    if len(given) != 1:
        raise HTTPException(400, f"give exactly one of image, item or query (got {', '.join(given) or 'none'})")
    max_k = state.limits.max_k
    if k is None or not k.strip():
        k_value = min(10, max_k)
    else:
        try:
            k_value = int(k.strip())
        except ValueError:
            raise HTTPException(400, f"k must be an integer, got {k!r}") from None
        if not 1 <= k_value <= max_k:
            raise HTTPException(400, f"k must be between 1 and {max_k}, got {k_value}")
    return SearchForm(
        k=k_value,
        exclude_self=_flag(exclude_self, "exclude_self"),
        annotated_only=_flag(annotated_only, "annotated_only"),
        weights=state.retriever.parse_attributes(attributes),  # the one check of the attributes (400)
        image=image,
        item=item or None,
        query=query or None,
        filter=state.retriever.compile_filter(filter) if filter and filter.strip() else None,  # 400 naming the position
    )


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


@router.post("/search", summary="Rank catalog items by (weighted) attribute similarity to a query")
async def search(state: State, form: Annotated[SearchForm, Depends(search_form)]):
    started = time.perf_counter()
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
    """The JSON of a search: the query with its URLs, and every hit with its image and attention URLs
    (server paths stay private)."""
    names = list(result.weights)
    query["labels"] = result.query_labels
    query["attention_urls"] = {n: attention_url(n, **source) for n in names}
    results = []
    for hit in result.hits:
        d = hit.to_dict()
        del d["path"]
        d["image_url"] = item_url(hit.id)
        d["attention_urls"] = {n: attention_url(n, item=hit.id) for n in names}
        results.append(d)
    return {
        "query": query,
        "attributes": result.weights,
        "filter": result.filter,
        "k": k,
        "exact": result.exact,
        "candidates": result.candidates,
        "took_ms": round(1000 * (time.perf_counter() - started), 3),
        "results": results,
    }


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
