"""Torch datasets over a DatasetSpec split: single images (evaluation, indexing) and triplets (training).

Images are decoded by :func:`agman.data.decode.decode_image` (bounded memory, every decoder failure an
:class:`ImageLoadError` naming the file); ``load_image`` and the errors are re-exported here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from agman.data.decode import (
    DEFAULT_LIMITS,
    ImageLimits,
    ImageLoadError,
    ImageNotFoundError,
    ImageTooLargeError,
    decode_image,
)

__all__ = [
    "ImageListDataset",
    "ImageLimits",
    "ImageLoadError",
    "ImageNotFoundError",
    "ImageTooLargeError",
    "TripletImageDataset",
    "decode_image",
    "load_image",
]


def load_image(path: str | Path, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Open the image file ``path`` as RGB within ``limits`` (see :func:`agman.data.decode.decode_image`)."""
    return decode_image(Path(path), limits)


class ImageListDataset(Dataset):
    """Images by path (absolute, or relative to ``root``): yields ``(tensor, index)``."""

    def __init__(self, paths: list[str], root: str | Path | None, transform, limits: ImageLimits = DEFAULT_LIMITS):
        self.paths = paths
        self.root = Path(root) if root is not None else None
        self.transform = transform
        self.limits = limits

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, index: int) -> Path:
        p = Path(self.paths[index])
        return p if self.root is None else self.root / p

    def __getitem__(self, index: int):
        return self.transform(load_image(self.path(index), self.limits)), index


class TripletImageDataset(Dataset):
    """One epoch of triplets ``(attribute, anchor, positive, negative)`` over a split's images.

    Yields ``(anchor, positive, negative, attribute)`` tensors.  ``set_triplets`` swaps in the next
    epoch's rows (the sampler decides them; this class only loads images).
    """

    def __init__(self, paths: list[str], root: str | Path, transform, triplets: np.ndarray | None = None):
        self.images = ImageListDataset(paths, root, transform)
        self.triplets = np.zeros((0, 4), dtype=np.int64) if triplets is None else triplets

    def set_triplets(self, triplets: np.ndarray) -> None:
        self.triplets = triplets

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, index: int):
        attr, a, p, n = (int(x) for x in self.triplets[index])
        return self.images[a][0], self.images[p][0], self.images[n][0], torch.tensor(attr)
