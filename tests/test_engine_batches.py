"""A triplet row's augmentation depends on (seed, epoch, row) only, and seeding it touches the CPU
generator alone."""
from __future__ import annotations

import numpy as np
import torch

from agman.engine.batches import EpochTriplets, item_seed


class _Sampler:
    def __init__(self, n):
        self.n = n

    def epoch(self, epoch):
        return np.arange(4 * self.n).reshape(self.n, 4) + epoch

    def __len__(self):
        return self.n


class _RandomImages:
    """Returns the torch draws the real pipeline's flip would consume."""

    triplets = None

    def set_triplets(self, rows):
        self.triplets = rows

    def __getitem__(self, i):
        return torch.rand(3)


def test_row_seed_equals_torch_manual_seed_and_leaves_the_global_stream_alone():
    rows = EpochTriplets(_Sampler(5), _RandomImages(), seed=7)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    got = [rows[(2, i)] for i in range(5)]
    assert torch.equal(torch.get_rng_state(), before)  # fork_rng restored the CPU stream
    for i, draw in enumerate(got):  # what main's torch.manual_seed(row seed) drew
        torch.manual_seed(item_seed(7, 2, i))
        assert torch.equal(draw, torch.rand(3))
    assert not torch.equal(got[0], got[1])
