"""Ranking a catalog for one query: weighted exact scores, the tie rule, and exact top k from any
:class:`~agman.retrieval.store.VectorStore` — one implementation for every backend.

An item's score is the weighted sum of its per-attribute similarities (paper §2.1), ``s(x) =
sum_a w_a <q_a, x_a>`` with ``w_a > 0``, each the dot product of unit embeddings, always computed
exactly from the stored float32 vectors (:func:`exact_scores`) and summed in float64 in the
query's attribute order.  Results are ranked by score, descending, ties by row ascending — the
evaluation's rule.  A search ranks only the rows of its :class:`~agman.retrieval.store.Selection`
(filter, exclusions, deleted rows: the store's business), and returns k items whenever k are
selected.

Two ways to the top k, chosen by the store:

* **scan** — the store holds its vectors in this process (``store.in_memory``) and its index is
  exact: every selected row is scored exactly (one matrix-vector product per queried attribute,
  the cost of a numpy brute force), the top k picked with ``argpartition``;
* **threshold** (Fagin et al.'s threshold algorithm) — a database that answers "the m best rows of
  attribute a among the selected" (Milvus), or an approximate index: per-attribute shortlists,
  their union re-scored exactly.  For an exact store each shortlist ends at a *border* ``b_a`` (the
  store's score of its last row): no row outside it scores above ``b_a + BORDER_EPS`` in that
  attribute, so a row outside every shortlist totals at most ``sum_a w_a (b_a + eps)``.  Candidates
  are re-scored in the order of their upper bound until the k-th exact total is above the bound of
  every row not re-scored; the shortlists grow (x4) until it is also above the outside bound — up to
  the store's shortlist limit, where an exact scan answers.  For an approximate index the borders
  promise nothing: one round of ``k * rerank`` rows per attribute is re-scored and the result is
  marked approximate (a scan answers when the shortlists hold fewer than k selected rows).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agman.retrieval.query import AttributeWeights
from agman.retrieval.store import Selection, VectorStore

BORDER_EPS = 1e-5  # float error allowed between a store's and the exact score of the same pair
GROWTH = 4  # shortlist growth per threshold round


def exact_scores(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Similarities ``vectors [n, D] . query [D]`` in float32, each row's sum computed the same way
    whatever the other rows are (a BLAS matrix-vector product rounds a row differently depending on
    its position in the block), so re-scoring a shortlist gives the bits of a full scan."""
    return np.einsum("ij,j->i", np.asarray(vectors, dtype=np.float32), np.asarray(query, dtype=np.float32))


def rank_order(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions sorting by score descending, then row ascending (the evaluation's tie rule)."""
    return np.lexsort((rows, -scores))


def top_positions(scores: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Positions of the best ``k`` by :func:`rank_order`, without sorting everything: the k-th
    score by ``argpartition``, then only the rows at or above it (ties included) sorted."""
    if len(scores) <= k:
        return rank_order(scores, rows)
    kth = -np.partition(-scores, k - 1)[k - 1]
    near = np.flatnonzero(scores >= kth)
    return near[rank_order(scores[near], rows[near])][:k]


def weighted_total(per: np.ndarray, weights: AttributeWeights) -> np.ndarray:
    """``sum_j w_j * per[j]`` in float64, summed in the query's attribute order."""
    total = np.zeros(per.shape[1], dtype=np.float64)
    for j, t in enumerate(weights):
        total += t.weight * per[j].astype(np.float64)
    return total


@dataclass
class Ranking:
    """The top rows, best first, with per-attribute similarities ``per [n_attributes, n]`` (float32,
    in the order of the query's attributes) and weighted totals ``total [n]`` (float64);
    ``candidates``: how many rows could be ranked (None when the store could not say without a
    count of its own); ``exact``: proven the top k; ``rounds``: shortlist rounds; ``scanned``:
    every selected row was scored."""

    rows: np.ndarray
    per: np.ndarray
    total: np.ndarray
    candidates: int | None = None
    exact: bool = True
    rounds: int = 0
    scanned: bool = False


def rank(
    store: VectorStore,
    query: np.ndarray,
    weights: AttributeWeights,
    k: int,
    selection: Selection | None = None,
    *,
    start: int | None = None,
) -> Ranking:
    """The top ``k`` rows of ``store`` for ``query [A, D]`` (every attribute's embedding) under
    ``weights``, among the rows of ``selection`` (every searchable row when None).  ``start``: the
    first shortlist size of the threshold algorithm (tests and benchmarks)."""
    selection = store.select() if selection is None else selection
    k = int(k) if selection.count is None else min(int(k), selection.count)
    if k <= 0:
        empty = np.zeros(0, np.int64)
        return Ranking(empty, np.zeros((len(weights), 0), np.float32), np.zeros(0), selection.count or 0)
    if store.config.exact and store.in_memory:
        return _scan(store, query, weights, k, selection)
    return _threshold(store, query, weights, k, selection, start)


def _scan(store: VectorStore, query: np.ndarray, weights: AttributeWeights, k: int, selection: Selection) -> Ranking:
    """Every selected row scored by the store's fast product (a BLAS ``X @ q``: within
    ``BORDER_EPS`` of exact), the best candidates re-scored exactly; more of them only when a row
    outside could still reach the k-th exact total (near-ties at the border)."""
    rows, per = None, []
    for t in weights:
        r, s = store.similarities(t.index, query[t.index], selection, exact=False)
        if rows is not None and not np.array_equal(r, rows):  # an item written between two calls
            common = np.intersect1d(rows, r, assume_unique=True)
            per = [p[np.searchsorted(rows, common)] for p in per]
            s, rows = s[np.searchsorted(r, common)], common
        rows = r if rows is None else rows
        per.append(s)
    rows = np.asarray(rows, dtype=np.int64)
    approx = per[0] if len(per) == 1 else weighted_total(np.stack(per), weights)  # w > 0: one term keeps its order
    slack = sum(t.weight for t in weights) * BORDER_EPS
    n = len(rows)
    m = min(n, k + max(16, k))
    while True:
        if m < n:
            part = np.argpartition(-approx, m)  # the best m first, the (m+1)-th best at position m
            candidates, outside = part[:m], float(approx[part[m]])
        else:
            candidates, outside = np.arange(n), -np.inf
        scored = _Rescored(store, query, weights)
        scored.add(rows[candidates])
        top = scored.top(k)
        if m >= n or top[2][-1] > outside + slack:
            return Ranking(*top, n, True, 0, True)
        m = min(n, m * GROWTH)


class _Rescored:
    """Rows re-scored exactly so far (across rounds): per-attribute scores and weighted totals."""

    def __init__(self, store: VectorStore, query: np.ndarray, weights: AttributeWeights):
        self.store, self.query, self.weights = store, query, weights
        self.rows = np.zeros(0, np.int64)
        self.per = np.zeros((len(weights), 0), np.float32)
        self.total = np.zeros(0, np.float64)

    def add(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        per = np.stack([exact_scores(self.store.vectors(t.index, rows), self.query[t.index]) for t in self.weights])
        self.rows = np.concatenate([self.rows, rows])
        self.per = np.concatenate([self.per, per], axis=1)
        self.total = np.concatenate([self.total, weighted_total(per, self.weights)])

    def kth(self, k: int) -> float:
        """The k-th best exact total so far (-inf with fewer than k)."""
        return -float(np.partition(-self.total, k - 1)[k - 1]) if len(self.total) >= k else -np.inf

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = top_positions(self.total, self.rows, k)
        return self.rows[pos], self.per[:, pos], self.total[pos]


def _threshold(
    store: VectorStore, query: np.ndarray, weights: AttributeWeights, k: int, selection: Selection, start: int | None
) -> Ranking:
    exact = store.config.exact
    limit = max(1, store.shortlist_limit)
    if start is None:  # a weighted sum needs deeper shortlists before the bound holds: start 4x deeper
        start = (k + max(16, k)) * (GROWTH if len(weights) > 1 else 1) if exact else k * store.config.rerank
    m = max(1, min(int(start), limit))
    scored = _Rescored(store, query, weights)
    rounds = 0
    while True:
        rounds += 1
        lists = [store.shortlist(t.index, query[t.index], m, selection) for t in weights]
        complete = any(len(rows) < m for rows, _ in lists)
        rows = np.unique(np.concatenate([r for r, _ in lists]).astype(np.int64))
        fresh = ~np.isin(rows, scored.rows)
        if not exact:  # nothing bounds what the index missed: re-score the whole union
            scored.add(rows[fresh])
            if len(scored.rows) >= k:
                return Ranking(*scored.top(k), selection.count, False, rounds)
            break  # the probed cells / graph held too few selected rows
        upper = np.zeros(len(rows))
        borders = []
        for t, (r, s) in zip(weights, lists):
            border = float(np.min(s)) if len(s) else -np.inf
            borders.append(border)
            bound = np.full(len(rows), border + BORDER_EPS)
            bound[np.searchsorted(rows, r)] = np.asarray(s, np.float64) + BORDER_EPS
            upper += t.weight * bound
        todo, todo_upper = rows[fresh], upper[fresh]
        order = np.argsort(-todo_upper, kind="stable")
        todo, todo_upper = todo[order], todo_upper[order]
        batch = max(k, 16)
        while len(todo) and not scored.kth(k) > todo_upper[0]:  # only candidates that can still make the top k
            scored.add(todo[:batch])
            todo, todo_upper = todo[batch:], todo_upper[batch:]
            batch *= 2
        top = scored.top(k)
        if complete:
            return Ranking(*top, len(rows), True, rounds)
        outside = sum(t.weight * (b + BORDER_EPS) for t, b in zip(weights, borders))
        if len(top[0]) == k and top[2][-1] > outside:
            return Ranking(*top, selection.count, True, rounds)
        if m >= limit:
            break
        m = min(limit, m * GROWTH)
    found = _scan(store, query, weights, k, selection)
    found.rounds = rounds
    return found
