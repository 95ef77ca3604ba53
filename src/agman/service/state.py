"""What the service holds while it runs: the Retriever, the limits, recent uploads, the model thread,
the decoding slots; what it may say about itself (server paths hidden); and the FastAPI
dependencies that hand them to the routes."""
from __future__ import annotations

import asyncio
import os
import re
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from fastapi import HTTPException, Request

from agman.data.decode import ImageLimits
from agman.retrieval.search import Retriever
from agman.service.batcher import EmbedBatcher
from agman.service.limits import ServiceLimits
from agman.service.uploads import QueryPicture
from agman.service.watch import IndexWatch

ENTRY_OVERHEAD = 1024  # bytes of bookkeeping counted per cached query besides its pixels and vectors
ABSOLUTE_PATH = re.compile(r"(?<![\w/.~>-])/(?:[\w.@+~-]+/)+[\w.@+~-]*")


@dataclass
class CachedQuery:
    """An uploaded query kept for later requests (the same upload again, ``query=ID``, /attention):
    only what they need — the model's input, a thumbnail, the embeddings — never the full upload."""

    id: str
    picture: QueryPicture
    vectors: np.ndarray  # its embeddings [A, D]

    @property
    def nbytes(self) -> int:
        return self.picture.nbytes + self.vectors.nbytes + ENTRY_OVERHEAD


class QueryStore:
    """Recent uploads by id, at most ``capacity`` of them and ``max_bytes`` in all; the least
    recently used are dropped first (a single query larger than ``max_bytes`` is not kept)."""

    def __init__(self, capacity: int, max_bytes: int):
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._data: OrderedDict[str, CachedQuery] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def put(self, query: CachedQuery) -> None:
        if query.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(query.id, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._data[query.id] = query
            self.nbytes += query.nbytes
            while self._data and (len(self._data) > self.capacity or self.nbytes > self.max_bytes):
                _, dropped = self._data.popitem(last=False)
                self.nbytes -= dropped.nbytes

    def get(self, qid: str) -> CachedQuery | None:
        with self._lock:
            entry = self._data.get(qid)
            if entry is not None:
                self._data.move_to_end(qid)
            return entry

    def require(self, qid: str, detail: str = "") -> CachedQuery:
        """The query ``qid``, or a 404."""
        entry = self.get(qid)
        if entry is None:
            raise HTTPException(404, f"no recent query {qid!r}{detail}")
        return entry


class Workers:
    """Dedicated threads for one kind of heavy work, so requests waiting for it queue here (holding
    nothing but their request) and do not hold the thread pool that item queries and file responses
    need.  The model runs on one such thread, one call at a time; uploads are decoded on
    ``decode_slots`` of them, which also bounds the decoding buffers (and the malloc arenas that
    keep them) to that many."""

    def __init__(self, threads: int, name: str):
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    async def run(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args, **kwargs))


@dataclass
class ServiceState:
    """Everything the routes share (``app.state.service``)."""

    retriever: Retriever
    limits: ServiceLimits
    queries: QueryStore = field(init=False)
    model_thread: Workers = field(init=False)
    decoders: Workers = field(init=False)
    image_limits: ImageLimits = field(init=False)
    private_paths: list[tuple[str, str]] = field(init=False)
    batcher: EmbedBatcher = field(init=False)
    watch: IndexWatch = field(init=False)
    reload_seconds: float = 2.0
    writable: bool = False

    def __post_init__(self):
        limits = self.limits
        self.queries = QueryStore(limits.query_cache, limits.query_cache_bytes)
        self.model_thread = Workers(1, "agman-model")
        self.decoders = Workers(limits.decode_slots, "agman-decode")
        self.image_limits = ImageLimits(max_source_pixels=limits.max_pixels, max_aspect=limits.max_aspect)
        self.batcher = EmbedBatcher(self.retriever.embed_batch, limits.batch_size, limits.batch_wait_ms / 1000)
        self.watch = IndexWatch(self.retriever, self.reload_seconds)
        store = self.retriever.store
        paths = [(str(store.location), "<index>"), (str(self.retriever.info.checkpoint.path), "<checkpoint>")]
        root = store.catalog_root
        if root is not None:
            paths.append((root, "<catalog>"))
        elif store.in_memory:  # absolute paths (an index of an older agman): their common folder
            dirs = {os.path.dirname(it.path) for it in store.items_of(store.rows()[:10_000])}
            if dirs:
                paths.append((os.path.commonpath(sorted(dirs)) if len(dirs) > 1 else dirs.pop(), "<catalog>"))
        self.private_paths = sorted(((p, name) for p, name in paths if len(p) > 1), key=lambda x: -len(x[0]))

    def close(self) -> None:
        self.batcher.close()
        self.watch.close()

    def public(self, message: str) -> str:
        """``message`` without server paths: the index, checkpoint and catalog folders by name, any
        other absolute path as ``<path>`` (every message the service sends passes through here)."""
        for path, name in self.private_paths:
            message = message.replace(path, name)
        return ABSOLUTE_PATH.sub("<path>", message)

    def index_health(self):
        """The store's :meth:`health` where it declares one (files that can be damaged under the
        running server), else None."""
        store = self.retriever.store
        return store.health() if store.capabilities.health else None

    def require_sound_index(self) -> None:
        """503 while index files a search reads are damaged under the running server (a store
        answering from memory alone is only ``degraded`` by a damaged folder: it keeps answering)."""
        health = self.index_health()
        if health is not None and not health.ok:
            raise HTTPException(503, "the index is damaged: " + "; ".join(health.damage))


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def get_retriever(request: Request) -> Retriever:
    return get_state(request).retriever
