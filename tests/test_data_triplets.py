"""Per-epoch triplet sampling (§2.5) and given triplet lists (Zappos50k)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

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


def chi_square_p(observed, expected) -> float:
    """Pearson's chi-square test: the p-value of ``observed`` counts under ``expected`` counts."""
    observed, expected = np.asarray(observed, float), np.asarray(expected, float)
    stat = float(((observed - expected) ** 2 / expected).sum())
    dof = len(observed) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def long_tailed_split():
    """Attribute 0: values with 400, 120, 40, 12, 4, 2 and 1 images (the last cannot be an anchor);
    attribute 1: two balanced values on a third of the images, the rest unlabelled."""
    counts = [400, 120, 40, 12, 4, 2, 1]
    col0 = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(5).shuffle(col0)
    col1 = np.full(len(col0), UNLABELED)
    col1[::3] = np.arange(len(col1[::3])) % 2
    return _split(np.stack([col0, col1], axis=1)), np.array(counts)


def test_value_sampling_draws_values_uniformly_on_a_long_tailed_split():
    split, counts = long_tailed_split()
    t = TripletSampler(split, 60_000, seed=3, sampling="value").epoch(0)
    rows = t[t[:, 0] == 0]
    labels = split.labels[:, 0]
    anchor_values = np.bincount(labels[rows[:, 1]], minlength=len(counts))
    assert anchor_values[6] == 0  # the one-image value is never an anchor (no positive for it) ...
    assert (labels[rows[:, 3]] == 6).any()  # ... but is still a negative
    formable = anchor_values[:6]
    assert chi_square_p(formable, np.full(6, formable.sum() / 6)) > 1e-3  # uniform over values
    # and clearly not in proportion to the image counts (the test has the power to tell)
    assert chi_square_p(formable, formable.sum() * counts[:6] / counts[:6].sum()) < 1e-12
    # within a value the anchor is uniform over its images: value 1's 120 images
    hits = np.bincount(rows[labels[rows[:, 1]] == 1, 1], minlength=len(labels))[labels == 1]
    assert chi_square_p(hits, np.full(len(hits), hits.sum() / len(hits))) > 1e-3
    # the negative: uniform over the attribute's images of another value (for anchors of value 0)
    neg_values = np.bincount(labels[rows[labels[rows[:, 1]] == 0, 3]], minlength=len(counts))[1:]
    assert chi_square_p(neg_values, neg_values.sum() * counts[1:] / counts[1:].sum()) > 1e-3
    assert (labels[rows[:, 1]] == labels[rows[:, 2]]).all() and (rows[:, 1] != rows[:, 2]).all()
    assert (labels[rows[:, 1]] != labels[rows[:, 3]]).all()


def test_image_sampling_follows_image_frequencies():
    split, counts = long_tailed_split()
    t = TripletSampler(split, 60_000, seed=3, sampling="image").epoch(0)
    rows = t[t[:, 0] == 0]
    anchor_values = np.bincount(split.labels[rows[:, 1], 0], minlength=len(counts))[:6]
    assert chi_square_p(anchor_values, anchor_values.sum() * counts[:6] / counts[:6].sum()) > 1e-3
    assert chi_square_p(anchor_values, np.full(6, anchor_values.sum() / 6)) < 1e-12


@pytest.mark.parametrize("sampling", ["value", "image"])
def test_each_sampling_is_seeded_per_epoch(sampling):
    split, _ = long_tailed_split()
    a = TripletSampler(split, 500, seed=4, sampling=sampling)
    b = TripletSampler(split, 500, seed=4, sampling=sampling)
    assert np.array_equal(a.epoch(2), b.epoch(2))
    assert not np.array_equal(a.epoch(2), a.epoch(3))
    assert np.array_equal(make_sampler(split, 500, seed=4, sampling=sampling).epoch(1), a.epoch(1))


def test_unknown_sampling_is_refused():
    with pytest.raises(ValueError, match="sampling must be one of value, image"):
        TripletSampler(long_tailed_split()[0], 10, sampling="values")


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


def test_a_cut_triplet_list_is_the_same_subset_every_epoch(csn_root):
    # mainZappos50k.py builds CSN's TripletImageLoader once (shuffle, cut to n) and never refreshes it:
    # every epoch trains on the same n triplets, each in a new order (DataLoader shuffle=True)
    split = read_csn(csn_root).split("train")
    sampler = TripletListSampler(split, 10, seed=2)
    epochs = [sampler.epoch(e) for e in range(4)]
    assert all(len(e) == 10 for e in epochs)
    assert all({tuple(r) for r in e.tolist()} == {tuple(r) for r in epochs[0].tolist()} for e in epochs)
    assert any(not np.array_equal(e, epochs[0]) for e in epochs[1:])
    other_seed = TripletListSampler(split, 10, seed=3).epoch(0)
    assert {tuple(r) for r in other_seed.tolist()} != {tuple(r) for r in epochs[0].tolist()}
