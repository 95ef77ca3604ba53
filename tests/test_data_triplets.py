"""Per-epoch triplet sampling (§2.5) and given triplet lists (Zappos50k)."""
from __future__ import annotations

import numpy as np
import pytest

from agman.data.layouts import read_asen, read_csn
from agman.data.spec import UNLABELED, Split
from agman.data.triplets import TripletListSampler, TripletSampler, make_sampler


def _split(labels):
    labels = np.asarray(labels, dtype=np.int32)
    return Split("train", [f"{i}.png" for i in range(len(labels))], labels)


def test_triplets_follow_the_protocol():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (300, 3)).astype(np.int32)
    labels[rng.random((300, 3)) < 0.4] = UNLABELED
    split = _split(labels)
    t = TripletSampler(split, n_triplets=5000, seed=1).epoch(0)
    assert t.shape == (5000, 4)
    a, anc, pos, neg = t.T
    assert (labels[anc, a] != UNLABELED).all()
    assert (labels[anc, a] == labels[pos, a]).all()
    assert (labels[anc, a] != labels[neg, a]).all() and (labels[neg, a] != UNLABELED).all()
    assert (anc != pos).all()
    # attribute uniform at random: each of 3 attributes ~1/3
    share = np.bincount(a, minlength=3) / len(a)
    assert np.allclose(share, 1 / 3, atol=0.03)


def test_triplets_are_seeded_and_fresh_each_epoch():
    labels = np.random.default_rng(0).integers(0, 3, (100, 2)).astype(np.int32)
    s1, s2 = TripletSampler(_split(labels), 1000, seed=7), TripletSampler(_split(labels), 1000, seed=7)
    assert np.array_equal(s1.epoch(3), s2.epoch(3))
    assert not np.array_equal(s1.epoch(0), s1.epoch(1))
    assert not np.array_equal(s1.epoch(0), TripletSampler(_split(labels), 1000, seed=8).epoch(0))


def test_positives_and_negatives_cover_the_pool():
    # value 0: images 0..2, value 1: images 3..5 -> every same-value partner and every negative appears
    split = _split([[0], [0], [0], [1], [1], [1]])
    t = TripletSampler(split, 6000, seed=0).epoch(0)
    pairs = {(int(x), int(y)) for x, y in t[:, 1:3]}
    assert pairs == {(x, y) for g in ((0, 1, 2), (3, 4, 5)) for x in g for y in g if x != y}
    negs = {(int(x), int(z)) for x, z in t[:, [1, 3]]}
    assert len(negs) == 18


def test_singleton_values_are_never_anchors():
    split = _split([[0], [0], [1], [2], [2]])  # value 1 has one image
    t = TripletSampler(split, 2000, seed=0).epoch(0)
    assert 2 not in set(t[:, 1].tolist()) and 2 not in set(t[:, 2].tolist())
    assert 2 in set(t[:, 3].tolist())  # still a negative


def test_no_triplet_possible():
    with pytest.raises(ValueError, match="cannot form any triplet"):
        TripletSampler(_split([[0], [0], [UNLABELED]]), 10)


def test_real_dataset_sampler(asen_root):
    spec = read_asen(asen_root)
    assert isinstance(make_sampler(spec.split("train"), 100), TripletSampler)


def test_triplet_lists(csn_root):
    spec = read_csn(csn_root)
    split = spec.split("train")
    sampler = make_sampler(split, None, seed=0)
    assert isinstance(sampler, TripletListSampler)
    rows = sampler.epoch(0)
    assert len(rows) == 4 * 6
    # (attribute, anchor, close, far) from file rows (anchor, far, close)
    expected = {(a, r[0], r[2], r[1]) for a, t in split.triplets.items() for r in t.tolist()}
    assert {tuple(r) for r in rows.tolist()} == expected
    assert np.array_equal(sampler.epoch(1), TripletListSampler(split, None, seed=0).epoch(1))
    assert len(TripletListSampler(split, 10, seed=0).epoch(0)) == 10
