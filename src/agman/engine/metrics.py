"""Retrieval metrics, vectorised: the ranking rule, AP/MAP, Recall@k, Precision@k, TR accuracy.

**Ranking rule** (shared by evaluation and by the retrieval layer, so that both give the same
order): candidates are sorted by score descending; equal scores keep the candidates' order in the
candidate list (position ascending).  That is a stable sort of ``-score``: :func:`rank`.

**AP** (data-formats.md, §3.1): over the full ranking of a query's candidates, with "same value"
as relevant, AP is the mean of the precision at each relevant position (precision at rank ``r`` =
relevant candidates among the first ``r`` / ``r``); AP is 0 when no candidate is relevant.  MAP
is the mean AP over queries.

**Recall@k** = relevant candidates among the first ``k`` / all relevant candidates (0 when there
are none); **Precision@k** = relevant among the first ``k`` / ``k`` (``k`` capped at the number of
candidates).
"""
from __future__ import annotations

import numpy as np

DEFAULT_KS = (1, 5, 10, 50)


def rank(scores: np.ndarray) -> np.ndarray:
    """Positions of the candidates in rank order along the last axis.

    Score descending; ties keep candidate position ascending: exactly
    ``np.argsort(-scores, axis=-1, kind="stable")``.  ``scores`` ``[C]`` or ``[..., C]``; returns
    int64 positions of the same shape.  float32 scores (what evaluation uses) take a faster path
    that sorts unique 64-bit keys (order-preserving score bits, then position) with an unstable sort.
    """
    scores = np.asarray(scores)
    if scores.dtype in (np.float16, np.float32) and 0 < scores.shape[-1] < 2**31:
        return _rank_float32(scores.astype(np.float32, copy=False))
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    return np.argsort(-scores, axis=-1, kind="stable")


def _rank_float32(scores: np.ndarray) -> np.ndarray:
    negated = -scores + np.float32(0.0)  # + 0.0 turns -0.0 into +0.0: equal scores must tie
    bits = negated.view(np.int32)
    ordered = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))  # signed-int order == float order (no NaN)
    keys = ordered.astype(np.int64) << 32
    keys |= np.arange(scores.shape[-1], dtype=np.int64)
    keys.sort(axis=-1)
    return keys & np.int64(0xFFFFFFFF)


def relevance_in_rank_order(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """``relevant [Q, C]`` (bool) reordered by :func:`rank` of ``scores [Q, C]`` along each row."""
    scores, relevant = _as_2d(scores), _as_2d(relevant).astype(bool, copy=False)
    if scores.shape != relevant.shape:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} must have the same shape")
    return np.take_along_axis(relevant, rank(scores), axis=1)


def ap_of_ranked(ranked: np.ndarray) -> np.ndarray:
    """AP of each row of a relevance matrix already in rank order ``[Q, C]`` -> float64 ``[Q]``.

    Only the relevant positions are visited: the j-th relevant item at (0-based) rank r adds
    precision ``j / (r + 1)``.
    """
    ranked = _as_2d(ranked).astype(bool, copy=False)
    n_queries = ranked.shape[0]
    rows, cols = np.nonzero(ranked)  # row-major: sorted by row, then by rank
    n_relevant = np.bincount(rows, minlength=n_queries)
    first = np.concatenate([[0], np.cumsum(n_relevant)[:-1]])
    j = np.arange(len(rows)) - first[rows] + 1
    precision_sum = np.bincount(rows, weights=j / (cols + 1.0), minlength=n_queries)
    return np.where(n_relevant > 0, precision_sum / np.maximum(n_relevant, 1), 0.0)


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """AP of every query: ``scores [Q, C]``, ``relevant [Q, C]`` bool -> float64 ``[Q]``
    (``[C]`` inputs give a ``[1]`` result).  Ranking per :func:`rank`."""
    return ap_of_ranked(relevance_in_rank_order(scores, relevant))


def map_scores(scores: np.ndarray, relevant: np.ndarray) -> float:
    """MAP: the mean of :func:`average_precision` over queries (0.0 for no queries)."""
    ap = average_precision(scores, relevant)
    return float(ap.mean()) if ap.size else 0.0


def hits_at_k(ranked: np.ndarray, ks) -> dict[int, np.ndarray]:
    """Relevant items among the first ``k`` of each ranked row, per ``k``: ``{k: int [Q]}``."""
    ranked = _as_2d(ranked).astype(bool, copy=False)
    out = {}
    for k in ks:
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        out[int(k)] = ranked[:, : int(k)].sum(axis=1)
    return out


def recall_precision_at_k(ranked: np.ndarray, ks=DEFAULT_KS) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Per-query Recall@k and Precision@k (float64 ``[Q]`` each) of ranked relevance rows."""
    ranked = _as_2d(ranked).astype(bool, copy=False)
    n_relevant = ranked.sum(axis=1)
    n_candidates = ranked.shape[1]
    recall, precision = {}, {}
    for k, hits in hits_at_k(ranked, ks).items():
        recall[k] = np.where(n_relevant > 0, hits / np.maximum(n_relevant, 1), 0.0)
        precision[k] = hits / float(max(1, min(k, n_candidates)))
    return recall, precision


def random_ranking_ap(n_relevant, n_candidates) -> np.ndarray:
    """Expected AP of a uniformly random ranking of ``n_candidates`` holding ``n_relevant`` relevant.

    ``E[AP] = (R-1)/(N-1) + H_N (N-R) / (N (N-1))`` with ``H_N`` the N-th harmonic number
    (1.0 when N = R, 0 when R = 0).  Vectorised over arrays of R and N.
    """
    r = np.asarray(n_relevant, dtype=np.float64)
    n = np.asarray(n_candidates, dtype=np.float64)
    if np.any(r > n) or np.any(r < 0):
        raise ValueError("n_relevant must lie in [0, n_candidates]")
    n_max = int(n.max(initial=0))
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n_max + 1))])
    h = harmonic[n.astype(np.int64)]
    with np.errstate(divide="ignore", invalid="ignore"):
        general = (r - 1) / (n - 1) + h * (n - r) / (n * (n - 1))
    out = np.where(n <= 1, np.where(r > 0, 1.0, 0.0), general)
    return np.where(r > 0, out, 0.0)


def triplet_accuracy(s_close: np.ndarray, s_far: np.ndarray) -> float:
    """TR accuracy: the share of triplets where ``s(anchor, close) > s(anchor, far)`` (ties count wrong)."""
    s_close, s_far = np.asarray(s_close), np.asarray(s_far)
    return float((s_close > s_far).mean()) if s_close.size else 0.0


def triplet_margin_losses(s_close: np.ndarray, s_far: np.ndarray, margin: float) -> np.ndarray:
    """Eq. 8 per triplet: ``max(0, m + s(a, far) - s(a, close))`` (float64)."""
    return np.maximum(0.0, margin + np.asarray(s_far, np.float64) - np.asarray(s_close, np.float64))


def _as_2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 1:
        return a[None]
    if a.ndim != 2:
        raise ValueError(f"expected a [C] or [Q, C] array, got shape {a.shape}")
    return a
