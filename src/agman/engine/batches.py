"""Which triplet images each training step sees — a function of (seed, epoch, row) only, so neither
DataLoader workers, prefetching nor the step a run resumed at change a batch (see the determinism
notes of :mod:`agman.engine.train`)."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from agman.data.images import TripletImageDataset
from agman.engine import distributed as D
from agman.engine.config import TrainConfig


def item_seed(seed: int, epoch: int, row: int) -> int:
    """The torch seed for the augmentation of triplet row ``row`` of ``epoch``."""
    return int(np.random.SeedSequence([seed, epoch, row]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class EpochTriplets(Dataset):
    """Triplet images addressed by ``(epoch, position)``: the rows of an epoch are computed (and
    cached) inside whichever process loads them, so persistent workers follow the epochs."""

    def __init__(self, sampler, images: TripletImageDataset, seed: int, rank: int = 0, world_size: int = 1):
        self.sampler = sampler
        self.images = images
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._epoch: int | None = None

    def rows(self, epoch: int) -> np.ndarray:
        if self._epoch != epoch:
            self.images.set_triplets(D.shard(self.sampler.epoch(epoch), self.rank, self.world_size))
            self._epoch = epoch
        return self.images.triplets

    def __len__(self) -> int:
        return len(self.sampler) // self.world_size if self.world_size > 1 else len(self.sampler)

    def __getitem__(self, key: tuple[int, int]):
        epoch, position = key
        self.rows(epoch)
        global_row = self.rank + position * self.world_size
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also (lazily) seed every accelerator
            # generator, which fork_rng(devices=[]) does not restore and which costs ~1 ms a row
            torch.default_generator.manual_seed(item_seed(self.seed, epoch, global_row))
            return self.images[position]


class EpochBatches(Sampler):
    """Batches of ``(epoch, position)`` keys: steps ``start_step ..`` of the current epoch."""

    def __init__(self, n_rows: int, batch_size: int, max_steps: int = 0):
        self.n_rows, self.batch_size = n_rows, batch_size
        steps = math.ceil(n_rows / batch_size)
        self.steps = min(steps, max_steps) if max_steps else steps
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)

    def __iter__(self):
        for step in range(self.start_step, self.steps):
            lo = step * self.batch_size
            yield [(self.epoch, i) for i in range(lo, min(lo + self.batch_size, self.n_rows))]


def epoch_loader(dataset: EpochTriplets, train: TrainConfig, device: torch.device) -> tuple[DataLoader, EpochBatches]:
    """The training DataLoader over ``dataset`` and its batch sampler (``set_epoch`` before each epoch)."""
    batches = EpochBatches(len(dataset), train.batch_size, train.max_steps_per_epoch)
    loader = DataLoader(
        dataset, batch_sampler=batches, num_workers=train.workers, pin_memory=train.uses_pin_memory(device),
        persistent_workers=train.persistent_workers and train.workers > 0,
        prefetch_factor=train.prefetch_factor if train.workers > 0 else None,
    )
    return loader, batches
