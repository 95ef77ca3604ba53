"""Evaluation: ASFR per attribute/overall against a per-query loop, rank_split, TR, histogram baseline."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import REAL_FASHIONAI_SPLIT, needs_real_split
from test_engine_metrics import reference_ap

from agman.data.layouts import open_dataset
from agman.data.spec import Split
from agman.engine import evaluate


def random_split(rng, n_images=120, n_attr=3, n_values=4, n_q=40) -> Split:
    labels = rng.integers(0, n_values, (n_images, n_attr))
    rows_q, rows_c = [], []
    for i in range(n_images):
        for a in range(n_attr):
            if rng.random() < 0.2:
                continue  # not annotated
            (rows_q if i < n_q else rows_c).append((i, a, int(labels[i, a])))
    return Split("test", [f"{i}.png" for i in range(n_images)], labels, np.array(rows_q), np.array(rows_c))


def integer_embeddings(rng, n, a, d=6):
    # small integers: every dot product is exact in float32, so a per-query loop sees the same scores
    return rng.integers(-2, 3, (n, a, d)).astype(np.float32)


def test_asfr_matches_a_per_query_loop():
    rng = np.random.default_rng(0)
    split = random_split(rng)
    emb = integer_embeddings(rng, len(split), 3)
    result = evaluate.evaluate_asfr(emb, split, ["a", "b", "c"], ks=(1, 5))
    for row, (img, a, value) in enumerate(split.queries):
        cands = split.candidates[split.candidates[:, 1] == a]
        scores = np.array([float(emb[img, a] @ emb[c, a]) for c in cands[:, 0]])
        assert result.ap[row] == pytest.approx(reference_ap(scores, cands[:, 2] == value), abs=1e-12)
    per = result.per_attribute_map
    for a, name in enumerate("abc"):
        assert per[name] == pytest.approx(result.ap[split.queries[:, 1] == a].mean())
    assert result.overall_map == pytest.approx(result.ap.mean())
    d = result.to_dict()
    assert set(d["recall"]) == {1, 5} and d["queries"] == len(split.queries)
    assert 0 < d["random_map"]["overall"] < 1


def test_rank_split_reproduces_evaluation_order():
    rng = np.random.default_rng(1)
    split = random_split(rng)
    emb = rng.standard_normal((len(split), 3, 8)).astype(np.float32)
    emb[5] = emb[6]  # duplicate images: exact ties
    result = evaluate.evaluate_asfr(emb, split)
    for row in range(0, len(split.queries), 7):
        img, a, value = split.queries[row]
        order, scores = evaluate.rank_split(emb, split, int(a), row, return_scores=True)
        assert np.all(np.diff(scores) <= 0)
        values = split.labels[order, a]
        ap = reference_ap(-np.arange(len(order), dtype=float), values == value)
        assert ap == pytest.approx(result.ap[row], abs=1e-12)
    with pytest.raises(ValueError, match="attribute"):
        evaluate.rank_split(emb, split, (int(split.queries[0, 1]) + 1) % 3, 0)
    with pytest.raises(IndexError):
        evaluate.rank_split(emb, split, 0, len(split.queries))


def test_rank_split_ties_follow_candidate_rows():
    split = Split("t", ["0", "1", "2", "3"], np.zeros((4, 1), int), np.array([[0, 0, 0]]),
                  np.array([[3, 0, 0], [1, 0, 0], [2, 0, 1]]))
    emb = np.ones((4, 1, 2), np.float32)
    assert evaluate.rank_split(emb, split, 0, 0).tolist() == [3, 1, 2]


def test_triplet_evaluation():
    emb = np.zeros((4, 2, 2), np.float32)
    emb[:, 0] = [[1, 0], [0, 1], [1, 0], [0.6, 0.8]]
    emb[:, 1] = [[1, 0], [1, 0], [0, 1], [1, 0]]
    split = Split("test", ["a", "b", "c", "d"], np.full((4, 2), -1),
                  triplets={0: np.array([[0, 1, 2], [0, 1, 3]]), 1: np.array([[0, 1, 2]])})
    tr = evaluate.evaluate_triplets(emb, split, ["x", "y"], margin=0.2)
    assert tr.per_attribute_accuracy == {"x": 1.0, "y": 0.0}
    assert tr.accuracy == pytest.approx(2 / 3)
    assert tr.average_loss == pytest.approx((0.0 + 0.0 + 1.2) / 3)


@needs_real_split
def test_fashionai_validation_scale_runs(tmp_path):
    spec = open_dataset(REAL_FASHIONAI_SPLIT, allow_singletons=True)
    split = spec.split("valid")
    assert len(split.queries) == 3600 and len(split.candidates) == 14400
    emb = np.random.default_rng(0).standard_normal((len(split), spec.n_attributes, 16)).astype(np.float32)
    result = evaluate.evaluate_asfr(emb, split, spec.attribute_names)
    assert set(result.per_attribute_map) == set(spec.attribute_names)
    random_map = result.random_map
    # random embeddings rank randomly: MAP near its expectation
    assert abs(result.overall_map - random_map["overall"]) < 0.02


def test_colour_histogram_baseline(asen_root):
    spec = open_dataset(asen_root)
    emb = evaluate.colour_histogram_embeddings(spec, "test", bins=4)
    used = evaluate.referenced_images(spec.split("test"))
    assert emb.shape == (len(spec.split("test")), spec.n_attributes, 64)
    np.testing.assert_allclose(np.linalg.norm(emb[used], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(emb[:, 0], emb[:, 1])
    result = evaluate.evaluate_embeddings(emb, spec, "test")
    assert result.asfr is not None and result.tr is None and 0 <= result.score <= 1
