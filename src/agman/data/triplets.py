"""Training triplets per the paper's protocol (§2.5): a fresh, seeded set of N triplets every epoch
(FashionAI, DeepFashion), or a fixed subset of given triplet lists (Zappos50k, CSN's lists).

Rows are ``(attribute, anchor, positive, negative)`` image indices of one split.
"""
from __future__ import annotations

import numpy as np

from agman.data.spec import UNLABELED, DatasetError, Split
from agman.errors import InvalidValueError

TRIPLET_COLUMNS = ("attribute", "anchor", "positive", "negative")
SAMPLINGS = ("value", "image")


class _AttributeGroups:
    """Images of one attribute grouped by value: ``order`` holds image indices sorted by value."""

    def __init__(self, column: np.ndarray):
        annotated = np.flatnonzero(column != UNLABELED)
        values = column[annotated]
        sort = np.argsort(values, kind="stable")
        self.order = annotated[sort]
        sorted_values = values[sort]
        self.value_of = sorted_values  # value of order[k]
        uniq, start, count = np.unique(sorted_values, return_index=True, return_counts=True)
        self.start = np.zeros(int(column.max(initial=0)) + 1, dtype=np.int64)
        self.count = np.zeros_like(self.start)
        self.start[uniq] = start
        self.count[uniq] = count
        # Anchors: images whose value has a second image (a positive) and another value exists (a negative).
        self.total = len(self.order)
        anchor_ok = (self.count[sorted_values] >= 2) & (self.count[sorted_values] < self.total)
        self.anchor_positions = np.flatnonzero(anchor_ok)
        # Values that can form a triplet (what ``value`` sampling draws from, uniformly).
        self.values = np.flatnonzero((self.count >= 2) & (self.count < self.total))

    @property
    def usable(self) -> bool:
        return len(self.anchor_positions) > 0


class TripletSampler:
    """Draws ``n_triplets`` triplets per epoch: the attribute uniform at random, then the anchor,
    a positive (another image of the anchor's value) and a negative (an image of the attribute with
    another value).  ``epoch(e)`` depends only on (seed, e), so a resumed run draws exactly the
    triplets an uninterrupted one would.

    ``sampling`` says how the anchor's value is reached:

    ``value``  the value uniform among the attribute's values that can form a triplet, then the
               anchor uniform among its images — the released code and ASEN's loader
               (``triplets_gen``: ``cate_sub = randint(0, ATTRIBUTES_NUM - 1)``), so rare values are
               trained on as often as frequent ones;
    ``image``  the anchor uniform among all images of the attribute whose value can form a triplet,
               so values come up in proportion to their image counts.
    """

    def __init__(self, split: Split, n_triplets: int = 100_000, seed: int = 0, sampling: str = "value"):
        if n_triplets < 1:
            raise InvalidValueError(f"n_triplets must be positive, got {n_triplets}")
        if sampling not in SAMPLINGS:
            raise InvalidValueError(f"triplet sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
        self.n_triplets = n_triplets
        self.seed = seed
        self.sampling = sampling
        self.groups = {a: _AttributeGroups(split.labels[:, a]) for a in range(split.labels.shape[1])}
        self.attributes = np.array([a for a, g in self.groups.items() if g.usable], dtype=np.int64)
        if not len(self.attributes):
            raise DatasetError(
                f"split {split.name!r} cannot form any triplet: no attribute has a value with two images "
                "and a second value"
            )

    def __len__(self) -> int:
        return self.n_triplets

    def epoch(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        attrs = self.attributes[rng.integers(0, len(self.attributes), self.n_triplets)]
        out = np.empty((self.n_triplets, 4), dtype=np.int64)
        out[:, 0] = attrs
        for a in np.unique(attrs):
            rows = np.flatnonzero(attrs == a)
            out[rows, 1:] = self._draw(self.groups[int(a)], len(rows), rng)
        return out

    def _draw(self, g: _AttributeGroups, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.sampling == "value":
            value = g.values[rng.integers(0, len(g.values), n)]
            pos_a = g.start[value] + rng.integers(0, g.count[value])
        else:
            pos_a = g.anchor_positions[rng.integers(0, len(g.anchor_positions), n)]
            value = g.value_of[pos_a]
        start, count = g.start[value], g.count[value]
        # Positive: another image of the same value (skip the anchor's own slot).
        k = rng.integers(0, count - 1)
        pos_p = start + k
        pos_p = pos_p + (pos_p >= pos_a)
        # Negative: any image of the attribute outside the value's block.
        k = rng.integers(0, g.total - count)
        pos_n = np.where(k < start, k, k + count)
        return np.stack([g.order[pos_a], g.order[pos_p], g.order[pos_n]], axis=1)


class TripletListSampler:
    """Triplets from given lists (Zappos50k): rows ``(attribute, anchor, close, far)``.

    As the released Zappos50k script (CSN's ``TripletImageLoader``, built once): the union of every
    attribute's list is shuffled once and cut to ``n_triplets`` rows (all rows when None); that
    subset is the training set of every epoch, each epoch in its own order.  Subset and orders
    depend only on (seed, epoch).
    """

    def __init__(self, split: Split, n_triplets: int | None = None, seed: int = 0):
        if not split.triplets:
            raise DatasetError(f"split {split.name!r} has no triplet lists")
        if n_triplets is not None and n_triplets < 1:
            raise InvalidValueError(f"n_triplets must be positive, got {n_triplets}")
        parts = []
        for a, rows in sorted(split.triplets.items()):
            anchor, far, close = rows[:, 0], rows[:, 1], rows[:, 2]
            parts.append(np.stack([np.full(len(rows), a), anchor, close, far], axis=1))
        rows = np.concatenate(parts).astype(np.int64)
        self.n_triplets = len(rows) if n_triplets is None else min(n_triplets, len(rows))
        self.seed = seed
        self.rows = rows[np.random.default_rng([seed]).permutation(len(rows))[: self.n_triplets]]

    def __len__(self) -> int:
        return self.n_triplets

    def epoch(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        return self.rows[rng.permutation(len(self.rows))]


def make_sampler(split: Split, n_triplets: int | None = 100_000, seed: int = 0, sampling: str = "value"):
    """The sampler the protocol prescribes for ``split``: given lists where it has them (``sampling``
    does not apply there), else drawn with ``sampling`` (``value`` or ``image``)."""
    if split.triplets:
        return TripletListSampler(split, n_triplets, seed)
    return TripletSampler(split, n_triplets or 100_000, seed, sampling)
