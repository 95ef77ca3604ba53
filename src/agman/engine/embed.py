"""Embedding image sets for every attribute at once (one backbone pass per image, via ``embed_all``)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from agman.data.cache import image_dataset
from agman.data.images import ImageLoadError


class _Tolerant(torch.utils.data.Dataset):
    """An image list whose unreadable images yield a zero tensor and the reason (else "")."""

    def __init__(self, images: torch.utils.data.Dataset, shape: tuple[int, int, int]):
        self.images, self.shape = images, shape

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        try:
            tensor, index = self.images[index]
            return tensor, index, ""
        except ImageLoadError as exc:
            return torch.zeros(self.shape), index, str(exc) or type(exc).__name__


def iter_embeddings(
    model: torch.nn.Module,
    paths: list[str],
    root: str | Path | None,
    *,
    input_size: int,
    crop_ratio: float,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    workers: int = 0,
    start: int = 0,
    progress: bool = False,
    failures: dict[int, str] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_index, embeddings [b, A, D] float32)`` batch by batch, from image ``start`` on.

    Batches always cover ``[start + k*batch_size, ...)``, so a resumed run that starts at a batch
    boundary computes exactly the batches an uninterrupted run would.  An unreadable image stops
    the run (``ImageLoadError`` naming the file) unless ``failures`` is given: then its index is
    recorded there with the reason and its row embeds a black placeholder.
    """
    dataset = image_dataset(paths[start:], root, input_size=input_size, crop_ratio=crop_ratio, train=False)
    if failures is not None:
        dataset = _Tolerant(dataset, (3, input_size, input_size))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
    )
    model.eval()
    bar = tqdm(total=len(paths), initial=start, desc="embedding", unit="img", disable=not progress, leave=False)
    with torch.inference_mode():
        for images, index, *reasons in loader:
            if reasons:
                failures.update((start + int(i), r) for i, r in zip(index, reasons[0]) if r)
            out = model.embed_all(images.to(device, non_blocking=True))
            yield start + int(index[0]), out.float().cpu().numpy()
            bar.update(len(index))
    bar.close()


def embed_images(model: torch.nn.Module, paths: list[str], root: str | Path | None, **kwargs) -> np.ndarray:
    """All embeddings ``[N, A, D]`` float32 of ``paths`` (see :func:`iter_embeddings` for options)."""
    chunks = [emb for _, emb in iter_embeddings(model, paths, root, **kwargs)]
    if not chunks:
        a, d = model.n_attributes, model.embedding_dim
        return np.zeros((0, a, d), dtype=np.float32)
    return np.concatenate(chunks)
