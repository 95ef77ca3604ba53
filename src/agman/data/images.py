"""Torch datasets over a DatasetSpec split: single images (evaluation, indexing) and triplets (training)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from agman.errors import AgmanError


class ImageLoadError(AgmanError, RuntimeError):
    """An image file is missing or cannot be decoded; the message names its path."""


def load_image(path: str | Path) -> Image.Image:
    """Open ``path`` as RGB, turning any decoder failure into an ImageLoadError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB")
    except FileNotFoundError:
        raise ImageLoadError(f"image file not found: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageLoadError(f"cannot read image {path}: {exc}") from None


class ImageListDataset(Dataset):
    """Images by path (absolute, or relative to ``root``): yields ``(tensor, index)``."""

    def __init__(self, paths: list[str], root: str | Path | None, transform):
        self.paths = paths
        self.root = Path(root) if root is not None else None
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, index: int) -> Path:
        p = Path(self.paths[index])
        return p if self.root is None else self.root / p

    def __getitem__(self, index: int):
        return self.transform(load_image(self.path(index))), index


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
