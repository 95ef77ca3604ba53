"""Exact weighted top k from per-attribute shortlists (the threshold algorithm, Fagin et al. 2001).

A multi-attribute query scores an item by ``s(x) = sum_a w_a <q_a, x_a>`` with ``w_a >= 0`` (paper
§2.1).  A vector database answers per attribute -- "the m best items of attribute a among those the
filter allows" -- and merging each attribute's top m is not the top of the sum.  This module makes
it exact:

* each attribute's shortlist ends at a *border* ``b_a`` (the backend's score of its last item):
  no item outside it scores above ``b_a + eps`` in that attribute (``eps`` covers the backend's
  own float rounding, ``BORDER_EPS`` as in ``agman.retrieval.search``);
* every item in the union of the shortlists is re-scored exactly from its stored float32 vectors,
  with the same ``exact_scores`` and weighted float64 sum as the FAISS path, so scores are
  bit-identical whichever backend found the item;
* an item outside every shortlist totals at most ``sum_a w_a (b_a + eps)``; when the k-th exact
  total of the union is above that bound -- or one shortlist already holds every allowed item --
  the union's top k is the catalog's top k.  Otherwise the shortlists grow (x4) and the check
  repeats, up to the backend's limit, where an exact scan of every allowed item answers.

With an approximate backend index (HNSW, IVF) the borders promise nothing, so one round of
``k * rerank`` candidates per attribute is re-scored exactly and returned as approximate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from agman.retrieval.ranking import BORDER_EPS, rank_order

GROWTH = 4


@dataclass
class Shortlist:
    """One attribute's best rows, best first, with the backend's (approximate) scores: ``border`` is
    the score of the last one; ``complete``: the backend returned every row the filter allows (fewer
    than it was asked for)."""

    rows: np.ndarray
    scores: np.ndarray
    border: float
    complete: bool


@dataclass
class TopK:
    """Ranked rows with their exact per-attribute scores ``per [n_attrs, n]`` (float32) and weighted
    totals (float64); how many shortlist rounds it took and whether it ended in a full scan."""

    rows: np.ndarray
    per: np.ndarray
    total: np.ndarray
    exact: bool
    rounds: int = 0
    scanned: bool = False
    candidates: int | None = None  # every allowed row was seen: how many there are


def weighted_total(per: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """``sum_j weights[j] * per[j]`` in float64, summed in attribute order (the Retriever's rule)."""
    total = np.zeros(per.shape[1], dtype=np.float64)
    for j, w in enumerate(weights):
        total += w * per[j].astype(np.float64)
    return total


def ranked(
    rows: np.ndarray, per: np.ndarray, weights: Sequence[float], k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best ``k`` of ``rows`` by weighted total, ties by row: ``(rows, per, total)``."""
    total = weighted_total(per, weights)
    order = rank_order(total, rows)[:k]
    return rows[order], per[:, order], total[order]


class _Scored:
    """Rows re-scored exactly so far (across rounds): per-attribute scores and weighted totals."""

    def __init__(self, n_attrs: int, weights: Sequence[float]):
        self.weights = weights
        self.rows = np.zeros(0, np.int64)
        self.per = np.zeros((n_attrs, 0), np.float32)
        self.total = np.zeros(0, np.float64)

    def add(self, rows: np.ndarray, per: np.ndarray) -> None:
        self.rows = np.concatenate([self.rows, rows])
        self.per = np.concatenate([self.per, per], axis=1)
        self.total = np.concatenate([self.total, weighted_total(per, self.weights)])

    def kth(self, k: int) -> float:
        """The k-th best exact total so far (-inf with fewer than k)."""
        return -float(np.partition(-self.total, k - 1)[k - 1]) if len(self.total) >= k else -np.inf


def top_k(
    attributes: Sequence[tuple[int, float]],
    k: int,
    shortlist: Callable[[int, int], Shortlist],
    scores: Callable[[np.ndarray], np.ndarray],
    scan: Callable[[], tuple[np.ndarray, np.ndarray]],
    *,
    start: int,
    limit: int,
    exact: bool = True,
    eps: float = BORDER_EPS,
) -> TopK:
    """The ``k`` best rows for ``attributes`` = ``[(attribute index, weight > 0), ...]``.

    ``shortlist(a, m)``: the backend's best ``m`` rows of attribute ``a`` (filter applied), with
    its scores.  ``scores(rows)``: exact float32 similarities ``[n_attrs, len(rows)]`` of ``rows``
    in the queried attributes.  ``scan()``: ``(rows, per)`` exact scores of every allowed row (the
    last resort).  ``start``: the first shortlist size; ``limit``: the largest the backend serves.

    Within a round, candidates are re-scored exactly in the order of their upper bound (their
    backend score + eps where a shortlist holds them, the border + eps where not), in growing
    batches, until the k-th exact total is above the bound of every candidate not re-scored: only
    the candidates that can still make the top k are fetched.
    """
    weights = [w for _, w in attributes]
    m = max(1, min(start, limit))
    scored = _Scored(len(attributes), weights)
    rounds = 0
    while True:
        rounds += 1
        lists = [shortlist(a, m) for a, _ in attributes]
        rows = np.unique(np.concatenate([s.rows for s in lists]).astype(np.int64))
        upper = np.zeros(len(rows))
        for w, s in zip(weights, lists):
            bound = np.full(len(rows), s.border + eps)
            bound[np.searchsorted(rows, s.rows)] = np.asarray(s.scores, np.float64) + eps
            upper += w * bound
        todo = rows[~np.isin(rows, scored.rows)]
        todo_upper = upper[~np.isin(rows, scored.rows)]
        order = np.argsort(-todo_upper, kind="stable")
        todo, todo_upper = todo[order], todo_upper[order]
        batch = max(k, 16)
        while len(todo) and not scored.kth(k) > todo_upper[0]:
            take = todo[:batch]
            scored.add(take, np.asarray(scores(take), np.float32).reshape(len(attributes), len(take)))
            todo, todo_upper = todo[batch:], todo_upper[batch:]
            batch *= 2
        complete = any(s.complete for s in lists)
        top_rows, top_per, top_total = ranked(scored.rows, scored.per, weights, k)
        if complete or (not exact and len(top_rows) == k):
            return TopK(top_rows, top_per, top_total, exact, rounds, candidates=len(rows) if complete else None)
        outside = sum(w * (s.border + eps) for w, s in zip(weights, lists))
        if len(top_rows) == k and top_total[-1] > outside:
            return TopK(top_rows, top_per, top_total, True, rounds)
        if m >= limit or not exact:
            break
        m = min(limit, m * GROWTH)
    rows, per = scan()
    top_rows, top_per, top_total = ranked(np.asarray(rows, np.int64), per, weights, k)
    return TopK(top_rows, top_per, top_total, True, rounds, scanned=True, candidates=len(rows))
