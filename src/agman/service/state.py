"""What the service holds while it runs: the Retriever, the limits, recent uploads, the model thread;
and the FastAPI dependencies that hand them to the routes."""
from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from fastapi import HTTPException, Request
from PIL import Image

from agman.retrieval.search import Retriever
from agman.service.batcher import EmbedBatcher
from agman.service.limits import ServiceLimits
from agman.service.watch import IndexWatch


@dataclass
class CachedQuery:
    """An uploaded query kept for later requests (the same upload again, ``query=ID``, /attention)."""

    id: str
    image: Image.Image  # the decoded upload: the model's input for its attention maps
    thumbnail: Image.Image  # what GET /queries/{id}/image shows
    vectors: np.ndarray  # its embeddings [A, D]


class QueryStore:
    """Recent uploads by id, least recently used dropped first."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._data: OrderedDict[str, CachedQuery] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, query: CachedQuery) -> None:
        with self._lock:
            self._data[query.id] = query
            self._data.move_to_end(query.id)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

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


class ModelThread:
    """One dedicated thread for model inference, one call at a time, so requests waiting for the
    model do not hold the thread pool that item queries and file responses need."""

    def __init__(self):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agman-model")

    async def run(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args, **kwargs))


@dataclass
class ServiceState:
    """Everything the routes share (``app.state.service``)."""

    retriever: Retriever
    limits: ServiceLimits
    queries: QueryStore = field(init=False)
    model_thread: ModelThread = field(default_factory=ModelThread)
    batcher: EmbedBatcher = field(init=False)
    watch: IndexWatch = field(init=False)

    def __post_init__(self):
        self.queries = QueryStore(self.limits.query_cache)
        limits = self.limits
        self.batcher = EmbedBatcher(self.retriever.embed_batch, limits.batch_size, limits.batch_wait_ms / 1000)
        self.watch = IndexWatch(self.retriever, self.limits.reload_seconds)

    def close(self) -> None:
        self.batcher.close()
        self.watch.close()


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def get_retriever(request: Request) -> Retriever:
    return get_state(request).retriever
