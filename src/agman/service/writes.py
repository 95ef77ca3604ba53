"""Changing the catalog through the service (only when started ``--writable``): delete an item
(a tombstone: ``agman index --add`` does not bring it back), re-index one (labels and metadata
merged by key, or a new image file).  Unknown ids answer 404, a read-only server 403,
an index another process is writing 409.  The FAISS folder is written under its lock, then reopened
(the index watch); a Milvus collection is written through the served store.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)
from starlette.concurrency import run_in_threadpool

from agman.data.images import load_image
from agman.retrieval.backends import open_writer
from agman.retrieval.reindex import changed_item, commit_reindexed
from agman.service.json_body import parse_json
from agman.service.state import ServiceState, get_state

router = APIRouter()
State = Annotated[ServiceState, Depends(get_state)]
_write_lock = threading.Lock()  # one write at a time per process


class ItemChange(BaseModel):
    """What ``PUT /items/{id}`` changes; omitted fields keep their values, and so do the labels and
    metadata keys a change does not name (merged by key; ``null`` removes a key's value).
    ``path``: the item's image file, relative to the catalog root (re-embedded either way)."""

    model_config = ConfigDict(extra="forbid")

    path: StrictStr | None = None
    labels: dict[StrictStr, StrictStr | None] | None = None
    metadata: dict[StrictStr, StrictStr | StrictBool | StrictInt | StrictFloat | None] | None = None


def _writable(state: ServiceState) -> None:
    if not state.writable:
        raise HTTPException(403, "this server is read-only: start it with --writable to change the catalog")


def _writer(state: ServiceState):
    """The writer of the served index and whether it must be closed after use."""
    store = state.retriever.store
    if store.capabilities.writes:  # a database: the served store writes too
        return store, False
    return open_writer(store.location), True


def _apply(state: ServiceState, change) -> dict:
    with _write_lock:
        writer, close = _writer(state)
        try:
            result = change(writer)
        finally:
            if close:
                writer.close()
        state.watch.check()
    return result


@router.delete("/items/{item_id:path}", summary="Delete a catalog item (server started --writable)")
async def delete_item(item_id: str, state: State):
    _writable(state)
    state.retriever.item(item_id)  # 404 for an unknown id before anything is written
    done = await run_in_threadpool(_apply, state, lambda w: {"deleted": w.delete([item_id])})
    return done | {"items": len(state.retriever)}


@router.put("/items/{item_id:path}", summary="Re-index a catalog item: labels, metadata, image (server --writable)",
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/json": {"schema": ItemChange.model_json_schema()}}}})
async def update_item(item_id: str, state: State, request: Request):
    """The JSON body is an :class:`ItemChange`: labels and metadata are merged into the item's by
    key (``null`` removes one), the image is re-embedded."""
    _writable(state)
    change = _change(await request.body())
    retriever = state.retriever
    old = retriever.item(item_id)  # 404 for an unknown id
    store = retriever.store
    path = old.path if change.path is None else _inside_root(change.path, store.catalog_root)
    item = changed_item(store.info, old, path, change.labels, change.metadata)
    picture = await run_in_threadpool(load_image, path)
    vectors = await state.batcher.embed(picture)
    row = retriever.row(item_id)

    def write(writer):
        return {"updated": 1, "row": commit_reindexed(writer, [item], lambda: iter([vectors[None]]), [row])}

    done = await run_in_threadpool(_apply, state, write)
    return done | {"items": len(state.retriever)}


def _change(raw: bytes) -> ItemChange:
    """The body as an :class:`ItemChange` (bounded JSON: 400; a field of the wrong type: 422)."""
    data = parse_json(raw)
    try:
        return ItemChange.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def _inside_root(path: str, root: str | None) -> str:
    """``path`` (relative to the catalog root) as an absolute path that stays inside the root."""
    if root is None:
        raise HTTPException(400, "this index records no catalog root: its items' paths cannot be changed here")
    if os.path.isabs(path) or "\\" in path:
        raise HTTPException(400, f"path must be relative to the catalog root, got {path!r}")
    resolved = os.path.normpath(os.path.join(root, path))
    if Path(os.path.commonpath([resolved, root])) != Path(root):
        raise HTTPException(400, f"path {path!r} leaves the catalog root")
    return resolved
