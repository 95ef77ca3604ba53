"""Dynamic batching of image queries: uploads that arrive together share one forward pass.

The first upload waiting for the model opens a batch; the batch closes ``max_wait`` seconds later
or as soon as it holds ``max_size`` images, and the model embeds all of them in one ``embed_all``
pass (:meth:`agman.retrieval.embedder.Embedder.embed_batch`, through the Retriever).  While it
runs, newer uploads queue and form the next batch, so under load batches fill up without waiting;
a lone upload waits at most ``max_wait``.  ``max_size=1`` is one model call per upload (the behaviour before batching).
One thread runs the model, so uploads never hold the request thread pool while they wait.

An image embedded in a batch can differ from the same image embedded alone by float rounding
(~1e-7): the batch's matrix products are blocked differently.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

log = logging.getLogger(__name__)


class EmbedBatcher:
    """Collects images for ``embed_batch(images) -> [n, A, D]`` into batches of up to ``max_size``,
    waiting at most ``max_wait`` seconds after the first."""

    def __init__(self, embed_batch: Callable[[list], np.ndarray], max_size: int = 16, max_wait: float = 0.005):
        self.embed_batch = embed_batch
        self.max_size = max(1, int(max_size))
        self.max_wait = max(0.0, float(max_wait))
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = 0  # forward passes so far
        self.images = 0  # images embedded so far
        self.seconds = 0.0  # wall time spent in forward passes
        self.cpu_seconds = 0.0  # CPU time of this thread in them (all of it with one torch thread)

    async def embed(self, image) -> np.ndarray:
        """Every attribute's embedding ``[A, D]`` of one image, computed in the next batch."""
        return await asyncio.wrap_future(self.submit(image))

    def submit(self, image) -> Future:
        self._ensure_thread()
        future: Future = Future()
        self._queue.put((image, future))
        return future

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="agman-batcher", daemon=True)
                self._thread.start()

    def _collect(self, first) -> list:
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_size:
            remaining = deadline - time.monotonic()
            try:
                entry = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is None:  # closing: finish this batch, then stop
                self._queue.put(None)
                break
            batch.append(entry)
        return batch

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = self._collect(first)
            live = [(image, future) for image, future in batch if future.set_running_or_notify_cancel()]
            if not live:
                continue
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                vectors = self.embed_batch([image for image, _ in live])
            except BaseException as exc:  # every waiting request hears it
                for _, future in live:
                    future.set_exception(exc)
                continue
            finally:
                self.seconds += time.perf_counter() - started
                self.cpu_seconds += time.thread_time() - cpu
            self.batches += 1
            self.images += len(live)
            for (_, future), v in zip(live, vectors):
                future.set_result(v)
