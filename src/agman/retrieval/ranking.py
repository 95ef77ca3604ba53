"""Ranking a catalog for one query: weighted exact scores, the tie rule, filters, and when a
store's shortlist can be trusted — the same for every :class:`~agman.retrieval.store.VectorStore`.

An item's score is the weighted sum of its per-attribute similarities (paper §2.1), each the dot
product of unit embeddings, always re-computed exactly from the stored float32 vectors.  Results
are ranked by score, descending, ties by row ascending — the evaluation's rule.

* **Exact stores** (``flat``): a single-attribute search takes the store's shortlist, re-scores it
  and falls back to a full scan when the shortlist's border is within float error of the k-th
  score; multi-attribute and filtered searches scan exactly.
* **Approximate stores**: ``k * rerank`` candidates per attribute from the shortlist (restricted to
  the allowed rows), their union re-scored exactly; a scan when they hold fewer than k.

Filters restrict the rows before ranking (``allowed``); a filtered search returns k items whenever
k are allowed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agman.retrieval.query import AttributeWeights
from agman.retrieval.store import VectorStore

SCAN_CHUNK = 1 << 16  # rows per block of an exact scan
BORDER_EPS = 1e-5  # float error allowed between a shortlist's and the exact score of the same pair


def exact_scores(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Similarities ``vectors [n, D] . query [D]`` in float32, each row's sum computed the same way
    whatever the other rows are (a BLAS matrix-vector product rounds a row differently depending on
    its position in the block), so re-scoring a shortlist gives the bits of a full scan."""
    return np.einsum("ij,j->i", np.asarray(vectors, dtype=np.float32), np.asarray(query, dtype=np.float32))


def rank_order(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions sorting by score descending, then row ascending (the evaluation's tie rule)."""
    return np.lexsort((rows, -scores))


@dataclass
class Ranking:
    """The top rows, best first, with per-attribute similarities ``per [n_attributes, n]`` (float32,
    in the order of the query's attributes) and weighted totals ``total [n]`` (float64);
    ``candidates``: how many rows could be ranked (allowed and not excluded)."""

    rows: np.ndarray
    per: np.ndarray
    total: np.ndarray
    candidates: int


def rank(
    store: VectorStore,
    query: np.ndarray,
    weights: AttributeWeights,
    k: int,
    *,
    allowed: np.ndarray | None = None,
    excluded: np.ndarray | None = None,
) -> Ranking:
    """The top ``k`` rows of ``store`` for ``query [A, D]`` (every attribute's embedding) under
    ``weights``, among the ``allowed`` rows (all when None) minus the ``excluded`` ones."""
    scorer = _Scorer(store, query, weights)
    every = store.rows()
    excluded = np.unique(np.zeros(0, np.int64) if excluded is None else np.asarray(excluded, dtype=np.int64))
    excluded = excluded[_members(every, excluded)]
    pool = every if allowed is None else allowed
    candidates = len(pool) - int(_members(pool, excluded).sum())
    k = min(int(k), candidates)
    if k == 0:
        found = scorer.top(np.zeros(0, np.int64), 0)
    elif store.config.exact:
        found = _exact(scorer, k, allowed, excluded)
    else:
        found = _approximate(scorer, k, allowed, excluded)
    found.candidates = candidates
    return found


def _members(ascending: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Which ``values`` are in the ascending array ``ascending`` (binary search: a catalog-sized
    ``np.isin`` would sort the whole catalog for one excluded row)."""
    at = np.minimum(np.searchsorted(ascending, values), max(len(ascending) - 1, 0))
    return (ascending[at] == values) if len(ascending) else np.zeros(len(values), bool)


class _Scorer:
    """Exact weighted scores of rows for one query."""

    def __init__(self, store: VectorStore, query: np.ndarray, weights: AttributeWeights):
        self.store, self.query, self.weights = store, query, weights

    def top(self, rows: np.ndarray, k: int) -> Ranking:
        """The best ``k`` of ``rows``, exactly scored."""
        per = np.stack([exact_scores(self.store.vectors(t.index, rows), self.query[t.index]) for t in self.weights])
        total = np.zeros(len(rows), dtype=np.float64)
        for j, t in enumerate(self.weights):
            total += t.weight * per[j].astype(np.float64)
        order = rank_order(total, rows)[:k]
        return Ranking(rows[order], per[:, order], total[order], len(rows))

    def scan(self, pool: np.ndarray, k: int, excluded: np.ndarray) -> Ranking:
        """Exact top k by scanning every row of ``pool`` not ``excluded``, block by block."""
        best = np.zeros(0, np.int64)
        for lo in range(0, len(pool), SCAN_CHUNK):
            block = pool[lo : lo + SCAN_CHUNK]
            if len(excluded):
                block = block[~np.isin(block, excluded)]
            best = self.top(np.concatenate([best, block]), k).rows
        return self.top(np.sort(best), k)


def _exact(scorer: _Scorer, k: int, allowed: np.ndarray | None, excluded: np.ndarray) -> Ranking:
    store = scorer.store
    if len(scorer.weights) > 1 or allowed is not None:
        return scorer.scan(store.rows() if allowed is None else allowed, k, excluded)
    (term,) = scorer.weights
    n = len(store)
    listed, similarity = store.shortlist(term.index, scorer.query[term.index], min(n, k + len(excluded) + max(16, k)))
    border = float(similarity[-1]) if len(listed) else -np.inf
    rows = listed[~np.isin(listed, excluded)] if len(excluded) else listed
    top = scorer.top(rows, k)
    if len(listed) < n and (len(top.rows) < k or not float(top.per[0, -1]) > border + BORDER_EPS):
        return scorer.scan(store.rows(), k, excluded)  # an item past the shortlist may tie the k-th
    return top


def _approximate(scorer: _Scorer, k: int, allowed: np.ndarray | None, excluded: np.ndarray) -> Ranking:
    store = scorer.store
    want = min(len(store), (k + len(excluded)) * store.config.rerank)
    found = [store.shortlist(t.index, scorer.query[t.index], want, allowed)[0] for t in scorer.weights]
    rows = np.unique(np.concatenate(found)).astype(np.int64)
    if len(excluded):
        rows = rows[~np.isin(rows, excluded)]
    if len(rows) < k:  # the probed cells / graph held too few (allowed) items: scan them exactly
        return scorer.scan(store.rows() if allowed is None else allowed, k, excluded)
    return scorer.top(rows, k)
