"""Training triplets per the paper's protocol (§2.5): a fresh, seeded set of N triplets every epoch.

Rows are ``(attribute, anchor, positive, negative)`` image indices of one split.
"""
from __future__ import annotations

import numpy as np

from agman.data.spec import UNLABELED, DatasetError, Split

TRIPLET_COLUMNS = ("attribute", "anchor", "positive", "negative")


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

    @property
    def usable(self) -> bool:
        return len(self.anchor_positions) > 0


class TripletSampler:
    """Draws ``n_triplets`` triplets per epoch: attribute uniform at random, anchor and positive
    share its value, the negative has another value.  ``epoch(e)`` depends only on (seed, e), so a
    resumed run draws exactly the triplets an uninterrupted one would.
    """

    def __init__(self, split: Split, n_triplets: int = 100_000, seed: int = 0):
        if n_triplets < 1:
            raise ValueError(f"n_triplets must be positive, got {n_triplets}")
        self.n_triplets = n_triplets
        self.seed = seed
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

    @staticmethod
    def _draw(g: _AttributeGroups, n: int, rng: np.random.Generator) -> np.ndarray:
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

    Each epoch is the union of every attribute's list (or ``n_triplets`` rows drawn from it
    without replacement), shuffled with a seed that depends only on (seed, epoch).
    """

    def __init__(self, split: Split, n_triplets: int | None = None, seed: int = 0):
        if not split.triplets:
            raise DatasetError(f"split {split.name!r} has no triplet lists")
        parts = []
        for a, rows in sorted(split.triplets.items()):
            anchor, far, close = rows[:, 0], rows[:, 1], rows[:, 2]
            parts.append(np.stack([np.full(len(rows), a), anchor, close, far], axis=1))
        self.rows = np.concatenate(parts).astype(np.int64)
        self.n_triplets = len(self.rows) if n_triplets is None else min(n_triplets, len(self.rows))
        self.seed = seed

    def __len__(self) -> int:
        return self.n_triplets

    def epoch(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        return self.rows[rng.permutation(len(self.rows))[: self.n_triplets]]


def make_sampler(split: Split, n_triplets: int | None = 100_000, seed: int = 0):
    """The sampler the protocol prescribes for ``split``: given lists where it has them, else drawn."""
    if split.triplets:
        return TripletListSampler(split, n_triplets, seed)
    return TripletSampler(split, n_triplets or 100_000, seed)
