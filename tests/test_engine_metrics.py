"""Metrics: the vectorised AP/MAP, R@k, P@k against straightforward per-query loops."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from agman.engine import metrics


def reference_ap(scores: np.ndarray, relevant: np.ndarray) -> float:
    """The published definition, one query: sort by score descending, ties by candidate position
    ascending; AP = mean of precision at each relevant position; 0 with no relevant candidate."""
    order = sorted(range(len(scores)), key=lambda c: (-float(scores[c]), c))
    hits, precisions = 0, []
    for r, c in enumerate(order, start=1):
        if relevant[c]:
            hits += 1
            precisions.append(hits / r)
    return sum(precisions) / len(precisions) if precisions else 0.0


def reference_hits(scores, relevant, k):
    order = sorted(range(len(scores)), key=lambda c: (-float(scores[c]), c))
    return sum(bool(relevant[c]) for c in order[:k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ap_matches_the_loop_reference_with_ties_and_empty_queries(dtype):
    rng = np.random.default_rng(0)
    q, c = 200, 150
    scores = rng.integers(-4, 5, (q, c)).astype(dtype) / 4  # few distinct values: many ties
    scores[::3] = rng.standard_normal((len(scores[::3]), c)).astype(dtype)
    relevant = rng.random((q, c)) < rng.random((q, 1)) * 0.5
    relevant[::7] = False  # queries with no relevant candidate
    relevant[5] = True
    got = metrics.average_precision(scores, relevant)
    want = np.array([reference_ap(s, r) for s, r in zip(scores, relevant)])
    assert np.abs(got - want).max() < 1e-9
    assert got[0] == 0.0 and got[5] == 1.0
    assert metrics.map_scores(scores, relevant) == pytest.approx(want.mean(), abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(
    arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 30)),
           elements=st.sampled_from([-1.0, -0.0, 0.0, 0.25, 0.5, 1.0, 3.0])),
    st.integers(0, 2**32 - 1),
)
def test_ap_property(scores, seed):
    relevant = np.random.default_rng(seed).random(scores.shape) < 0.3
    got = metrics.average_precision(scores, relevant)
    want = [reference_ap(s, r) for s, r in zip(scores, relevant)]
    np.testing.assert_allclose(got, want, atol=1e-9, rtol=0)


def test_rank_is_a_stable_descending_sort():
    rng = np.random.default_rng(1)
    for dtype in (np.float16, np.float32, np.float64, np.int64):
        s = rng.integers(-3, 4, (20, 40)).astype(dtype)
        np.testing.assert_array_equal(metrics.rank(s), np.argsort(-s.astype(np.float64), axis=-1, kind="stable"))
    # -0.0 and +0.0 tie; ties keep candidate position ascending
    s = np.array([0.5, -0.0, 0.0, 0.5, 2.0], dtype=np.float32)
    assert metrics.rank(s).tolist() == [4, 0, 3, 1, 2]
    assert metrics.rank(np.zeros(5, np.float32)).tolist() == [0, 1, 2, 3, 4]


def test_recall_and_precision_at_k_match_loops():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 5, (30, 12)).astype(np.float32)
    relevant = rng.random((30, 12)) < 0.3
    relevant[0] = False
    ranked = metrics.relevance_in_rank_order(scores, relevant)
    recall, precision = metrics.recall_precision_at_k(ranked, (1, 3, 20))
    for i in range(30):
        n_rel = relevant[i].sum()
        for k in (1, 3, 20):
            hits = reference_hits(scores[i], relevant[i], k)
            assert recall[k][i] == pytest.approx(hits / n_rel if n_rel else 0.0)
            assert precision[k][i] == pytest.approx(hits / min(k, 12))
    with pytest.raises(ValueError, match="at least 1"):
        metrics.hits_at_k(ranked, [0])


def test_expected_random_ap_is_exact():
    for n, r in [(1, 1), (2, 1), (4, 2), (5, 3), (6, 6), (5, 0)]:
        values = []
        for perm in itertools.permutations(range(n)):
            rel = np.array([p < r for p in perm])
            values.append(reference_ap(-np.arange(n, dtype=float), rel))
        assert metrics.random_ranking_ap(r, n) == pytest.approx(np.mean(values), abs=1e-12), (n, r)
    np.testing.assert_allclose(metrics.random_ranking_ap([0, 1, 10], [10, 10, 10]),
                               [0.0, metrics.random_ranking_ap(1, 10), 1.0])


def test_triplet_accuracy_and_losses():
    close = np.array([0.9, 0.5, 0.3, 0.2])
    far = np.array([0.1, 0.5, 0.4, 0.1])
    assert metrics.triplet_accuracy(close, far) == 0.5  # a tie counts as wrong
    np.testing.assert_allclose(metrics.triplet_margin_losses(close, far, 0.2), [0.0, 0.2, 0.3, 0.1])


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="same shape"):
        metrics.average_precision(np.zeros((2, 3)), np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match=r"\[C\] or \[Q, C\]"):
        metrics.average_precision(np.zeros((2, 3, 4)), np.zeros((2, 3, 4), bool))
    assert metrics.average_precision(np.array([0.3, 0.1]), np.array([False, True])).tolist() == [0.5]
