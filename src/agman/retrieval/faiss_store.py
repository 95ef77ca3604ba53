"""The FAISS-files backend: an index folder of plain files, read for search (:class:`FaissStore`,
the first :class:`~agman.retrieval.store.VectorStore`) and grown by the builder (:func:`append_rows`).

A folder holds::

    index.json            IndexInfo: checkpoint, attributes, D, index type, count (searchable rows)
    items.jsonl           one Item per line, in row order
    vectors/attr-NN.f32   exact float32 embeddings [count, D] of attribute NN (memory-mapped)
    faiss/attr-NN.faiss   the FAISS index of attribute NN (FAISS row i = row i of items.jsonl)
    progress.json, shards/   only while a build is unfinished (see agman.retrieval.build)

Only the ``count`` committed rows are visible: a folder whose build is unfinished answers for
the items of its last completed run.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from agman.retrieval.faiss_index import (
    factory_string,
    fill_faiss_index,
    new_faiss_index,
    read_faiss,
    search_params,
    similarities,
    write_faiss,
)
from agman.retrieval.info import CatalogIndexError, FaissFile, IndexInfo, IndexLayout
from agman.retrieval.items import Item, read_items


class FaissStore:
    """An index folder opened for search: items in memory, exact vectors memory-mapped, FAISS
    indexes read on first use.  ``nprobe`` / ``ef_search`` / ``rerank`` override the settings the
    index was built with.  Safe to share between threads."""

    def __init__(
        self, root: str | Path, *, nprobe: int | None = None, ef_search: int | None = None, rerank: int | None = None
    ):
        self.layout = IndexLayout(root)
        self.root = self.layout.root
        self.location = str(self.root)
        self.info = IndexInfo.read(self.layout.info)
        self.config = self.info.config.tuned(nprobe=nprobe, ef_search=ef_search, rerank=rerank)
        self.count = self.info.count
        self.items = read_items(self.layout.items, limit=self.count)
        if len(self.items) != self.count:
            raise CatalogIndexError(f"{self.layout.items} has {len(self.items)} items; index.json counts {self.count}")
        self._row_of_id = {it.id: i for i, it in enumerate(self.items)}
        self._row_of_path = {os.path.normpath(it.path): i for i, it in enumerate(self.items)}
        self.unfinished = self.layout.progress.is_file()
        self._vectors: dict[int, np.ndarray] = {}
        self._faiss: dict[int, object] = {}
        self._labelled: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def kind(self) -> str:
        return self.config.kind

    def __len__(self) -> int:
        return self.count

    def rows(self) -> np.ndarray:
        return np.arange(self.count, dtype=np.int64)

    # ------------------------------------------------------------------ items
    def item(self, row: int) -> Item:
        return self.items[row]

    def row_of_id(self, item_id: str) -> int | None:
        return self._row_of_id.get(item_id)

    def row_of_path(self, path: str) -> int | None:
        return self._row_of_path.get(os.path.normpath(path))

    def labelled_rows(self, attribute: str) -> np.ndarray:
        with self._lock:
            if attribute not in self._labelled:
                rows = [i for i, it in enumerate(self.items) if attribute in it.labels]
                self._labelled[attribute] = np.asarray(rows, dtype=np.int64)
            return self._labelled[attribute]

    # ------------------------------------------------------------------ vectors
    def vectors(self, attribute: int, rows: np.ndarray | None = None) -> np.ndarray:
        with self._lock:
            if attribute not in self._vectors:
                self._vectors[attribute] = _map_vectors(self.layout.vectors(attribute), self.count, self.info.dim)
            every = self._vectors[attribute]
        return every if rows is None else every[rows]

    def shortlist(
        self, attribute: int, query: np.ndarray, n: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        index = self.faiss_index(attribute)
        params = search_params(index, self.config, n, allowed)
        distances, rows = index.search(np.asarray(query, dtype=np.float32)[None], n, params=params)
        listed = rows[0] >= 0
        return rows[0][listed].astype(np.int64), similarities(index, distances[0][listed])

    def faiss_index(self, attribute: int):
        """Attribute ``attribute``'s FAISS index (read once, then shared; FAISS searches are thread-safe)."""
        with self._lock:
            if attribute not in self._faiss:
                path = self.layout.faiss(attribute)
                index = read_faiss(path)
                if index.ntotal != self.count:
                    raise CatalogIndexError(
                        f"{path} holds {index.ntotal} vectors; index.json counts {self.count}: "
                        "rerun `agman index` on this folder to finish it"
                    )
                self._faiss[attribute] = index
            return self._faiss[attribute]

    def memory_bytes(self) -> dict[str, int]:
        """On-disk bytes per attribute: FAISS index and exact vectors (for the trade-off table)."""
        n = len(self.info.attributes)
        out = {"faiss": 0, "vectors": 0}
        for a in range(n):
            for kind, path in (("faiss", self.layout.faiss(a)), ("vectors", self.layout.vectors(a))):
                out[kind] += path.stat().st_size if path.is_file() else 0
        return {k: v // max(1, n) for k, v in out.items()}


def _map_vectors(path: Path, count: int, dim: int) -> np.ndarray:
    if count == 0:
        return np.zeros((0, dim), np.float32)
    return np.memmap(path, dtype=np.float32, mode="r", shape=(count, dim))


# --------------------------------------------------------------------------- writing
def append_rows(layout: IndexLayout, info: IndexInfo, total: int, blocks: Callable[[], Iterable[np.ndarray]]) -> None:
    """Append rows ``info.count .. total`` to every attribute's vector file and FAISS index.

    ``blocks()`` yields their embeddings ``[n, A, D]`` in row order (it is called once per
    attribute).  Rows a crashed earlier call appended past ``info.count`` are dropped first.  Exact
    and HNSW indexes grow in place; IVF indexes grow in place until the catalog has doubled since
    they were trained, then are retrained.  Updates ``info.faiss``; the caller commits ``info``.
    """
    old = info.count
    d = info.dim
    config = info.config
    for a in range(len(info.attributes)):
        vpath = layout.vectors(a)
        vpath.parent.mkdir(parents=True, exist_ok=True)
        with open(vpath, "ab") as f:
            f.truncate(old * d * 4)
        with open(vpath, "ab") as f:
            for block in blocks():
                f.write(np.ascontiguousarray(block[:, a, :], dtype=np.float32).tobytes())
            f.flush()
            os.fsync(f.fileno())
        vectors = _map_vectors(vpath, total, d)

        fpath = layout.faiss(a)
        made = info.faiss.get(a)
        index = None
        if fpath.is_file() and old > 0:
            index = read_faiss(fpath)
            trained_on = made.trained_on if made is not None else old
            retrain = not config.exact and config.kind != "hnsw" and total > 2 * trained_on
            if index.ntotal != old or retrain:
                index = None
        if index is None:
            index = new_faiss_index(config, d, total)
            fill_faiss_index(index, vectors)
            made = FaissFile(factory_string(config, d, total)[0], total)
        else:
            fill_faiss_index(index, vectors[old:])
        write_faiss(fpath, index)
        info.faiss[a] = made or FaissFile("", old)
        del vectors
