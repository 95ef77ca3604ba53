"""The backend seam: a second VectorStore (in memory, numpy only) behind the same Retriever gives the
FAISS-files store's rankings, and a store with deleted rows (gaps) never returns them."""
from __future__ import annotations

import numpy as np
import pytest
from test_retrieval_index import build_tiny_index

from agman.retrieval.backends.faiss.store import FaissStore
from agman.retrieval.catalog import CatalogSchema
from agman.retrieval.info import IndexConfig, IndexInfo
from agman.retrieval.items import Item
from agman.retrieval.ranking import exact_scores, rank_order
from agman.retrieval.search import Retriever
from agman.retrieval.store import Capabilities, Selection, VectorStore


class MemoryStore:
    """Items and vectors ``[n, A, D]`` in memory; ``live`` rows searchable (the others deleted).
    Like a database it is ranked through shortlists (``in_memory`` False: the threshold algorithm).
    Its shortlist is a numpy brute force (exact), or, with ``config.exact`` False, one that ignores
    the query (rows in reverse order, made-up similarities): the Retriever's exact re-scoring of the
    shortlist has to do all the ranking."""

    in_memory = False
    shortlist_limit = 10**9
    catalog_root = None
    capabilities = Capabilities()

    def __init__(self, info: IndexInfo, items: list[Item], vectors: np.ndarray, config: IndexConfig, live=None):
        self.info, self.items, self._vectors, self.config = info, items, vectors, config
        self.live = np.arange(len(items), dtype=np.int64) if live is None else np.asarray(live, dtype=np.int64)
        self.location = "memory"

    def __len__(self):
        return len(self.live)

    def rows(self, limit=None):
        return self.live[:limit]

    def item(self, row):
        return self.items[row]

    def items_of(self, rows):
        return [self.items[int(r)] for r in rows]

    def row_of_id(self, item_id):
        return next((int(r) for r in self.live if self.items[r].id == item_id), None)

    def row_of_path(self, path):
        return next((int(r) for r in self.live if self.items[r].path == path), None)

    def select(self, flt=None, exclude=()):
        rows = self.live
        if flt is not None:
            rows = rows[flt.mask(CatalogSchema.of(self.info).columns(self.items), len(self.items))[rows]]
        rows = np.setdiff1d(rows, np.asarray(list(exclude), dtype=np.int64))
        return Selection(len(rows), rows)

    def count_selected(self, selection):
        return selection.count

    def vectors(self, attribute, rows):
        return self._vectors[rows, attribute]

    def similarities(self, attribute, query, selection, exact=True):
        return selection.rows, exact_scores(self._vectors[selection.rows, attribute], query)

    def shortlist(self, attribute, query, n, selection):
        pool = selection.rows
        if not self.config.exact:
            return pool[::-1][:n], np.zeros(min(n, len(pool)), np.float32)
        scores = exact_scores(self._vectors[pool, attribute], query)
        order = rank_order(scores, pool)[:n]
        return pool[order], scores[order]

    def reopened(self):
        return None

    def health(self):
        return None

    def close(self):
        pass


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """(spec, the FAISS-files Retriever, a MemoryStore copy of its index)."""
    spec, _, out = build_tiny_index(tmp_path_factory.mktemp("store"))
    faiss_store = FaissStore(out)
    vectors = np.stack([np.asarray(faiss_store.vectors(a)) for a in range(2)], axis=1)
    memory = MemoryStore(faiss_store.info, faiss_store.items, vectors, faiss_store.config)
    return spec, Retriever(faiss_store), memory


def test_both_stores_satisfy_the_protocol(both):
    _, files, memory = both
    assert isinstance(files.store, VectorStore) and isinstance(memory, VectorStore)


@pytest.mark.parametrize("exact", [True, False])
def test_a_second_store_gives_the_same_rankings(both, exact):
    spec, files, memory = both
    if not exact:
        memory = MemoryStore(memory.info, memory.items, memory._vectors, IndexConfig("hnsw", rerank=10))
    other = Retriever(memory)
    item = spec.split("test").paths[5]
    for weights in ("attr0", "attr1:2", {"attr0": 1, "attr1": 0.5}):
        for flags in ({}, {"exclude_self": True}, {"annotated_only": True}):
            a = files.search_item(item, weights, k=7, **flags)
            b = other.search_item(item, weights, k=7, **flags)
            assert [(h.id, h.score, h.scores) for h in a.hits] == [(h.id, h.score, h.scores) for h in b.hits]
            assert a.candidates == b.candidates
    q = files.item_vectors(3)
    assert other.search(q, "attr0", k=30).ids == files.search(q, "attr0", k=30).ids


def test_deleted_rows_of_a_store_are_never_returned(both):
    _spec, files, memory = both
    deleted = {0, 3, 4, 17}
    live = [r for r in range(len(memory.items)) if r not in deleted]
    for config in (memory.config, IndexConfig("ivf", rerank=1)):
        gappy = Retriever(MemoryStore(memory.info, memory.items, memory._vectors, config, live=live))
        q = files.item_vectors(3)
        res = gappy.search(q, ["attr0", "attr1"], k=100)
        assert res.candidates == len(live) == len(res.hits)
        assert not deleted & {h.row for h in res.hits}
        full = files.search(q, ["attr0", "attr1"], k=100)
        assert res.ids == [h.id for h in full.hits if h.row not in deleted]  # same order, gaps left out
        assert gappy.search(q, "attr0", k=5, exclude=[1, 3]).candidates == len(live) - 1  # row 3 is gone already
