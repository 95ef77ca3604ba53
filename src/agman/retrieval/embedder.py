"""The :class:`Embedder`: one checkpoint's model ready to embed images — the model (loaded on first
need and checked against the index), its input transform, the device, the lock that serialises
model calls, and batching.  The Retriever's queries, ``agman index`` (:mod:`agman.retrieval.build`)
and the service's dynamic batcher (:meth:`Embedder.embed_batch`) all run the model through it."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from agman.retrieval.query import QueryError, load_query_image


class NoModelError(QueryError):
    """An image query or an attention map needs the checkpoint, and none could be loaded."""


class Embedder:
    """The model of ``checkpoint`` on ``device`` for images of ``input_size`` (crop ``crop_ratio``).
    ``check(identity, path)`` refuses a checkpoint whose weights are not the index's; ``where``
    names the index in messages.  Safe to share between threads: model calls are serialised."""

    def __init__(self, checkpoint: str | Path, input_size: int, crop_ratio: float, *, device: str = "cpu",
                 check: Callable[[str, str | Path], None] | None = None, where: str = "", model=None, info=None):
        self.checkpoint = Path(checkpoint)
        self.input_size, self.crop_ratio, self.device = input_size, crop_ratio, device
        self.check = check or (lambda identity, path: None)
        self.where = where
        self.lock = threading.Lock()
        self._model = None
        if model is not None:
            self.set_model(model, info)

    def set_model(self, model, info) -> None:
        """Use an already loaded model (its ``info.identity`` is checked first)."""
        self.check(info.identity, info.path)
        self._model = model.eval()

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory already."""
        return self._model is not None

    @property
    def model(self):
        """The model, loaded (and checked) on first use."""
        if self._model is None:
            with self.lock:
                if self._model is None:
                    from agman.engine.checkpoint import load_model

                    if not self.checkpoint.is_file():
                        raise NoModelError(
                            f"checkpoint {self.checkpoint} (which built index {self.where}) not found: "
                            "pass the checkpoint's current path"
                        )
                    model, info = load_model(self.checkpoint, device=self.device)
                    self.check(info.identity, self.checkpoint)
                    self._model = model
        return self._model

    # ------------------------------------------------------------------ images
    def tensor(self, image: Image.Image):
        """One image as a batch of one input tensor ``[1, 3, S, S]`` on the device."""
        from agman.data.transforms import build_transform

        return build_transform(self.input_size, train=False, crop_ratio=self.crop_ratio)(image)[None].to(self.device)

    def model_input(self, image) -> object:
        """The image as the model's input tensor ``[3, S, S]`` (resized, centre-cropped, normalised)."""
        return self.tensor(load_query_image(image))[0]

    def model_view(self, image: Image.Image) -> Image.Image:
        """The image as the model sees it (short side resized, centre crop), for overlays."""
        from agman.data.transforms import model_view

        return model_view(image, self.input_size, self.crop_ratio)

    def embed(self, image: Image.Image) -> np.ndarray:
        """Every attribute's embedding ``[A, D]`` float32 of one image (one backbone pass)."""
        import torch

        tensor = self.tensor(image)
        model = self.model
        with self.lock, torch.inference_mode():
            out = model.embed_all(tensor)
        return out[0].float().cpu().numpy()

    def embed_batch(self, images: list) -> np.ndarray:
        """Every attribute's embeddings ``[n, A, D]`` float32 of ``n`` images — or of their
        :meth:`model_input` tensors — in one forward pass (the service's dynamic batching)."""
        import torch

        tensors = torch.stack([im if isinstance(im, torch.Tensor) else self.model_input(im) for im in images])
        model = self.model
        with self.lock, torch.inference_mode():
            out = model.embed_all(tensors.to(self.device))
        return out.float().cpu().numpy()

    def attention(self, image: Image.Image, a: int) -> np.ndarray | None:
        """The spatial attention map ``[h, w]`` of (image, attribute ``a``), or None without attention."""
        import torch

        tensor = self.tensor(image)
        model = self.model
        with self.lock, torch.inference_mode():
            att = model.attention_map(tensor, torch.tensor([a], device=self.device))
        return None if att is None else att[0].float().cpu().numpy()

    def embed_files(self, paths: list[str], *, batch_size: int, start: int = 0, workers: int = 0,
                    progress: bool = False, failures: dict[int, str] | None = None,
                    device: str | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(first position, [n, A, D])`` for the image files ``paths[start:]`` in batches of
        ``batch_size`` (the one-backbone-pass path of evaluation: ``engine.embed.iter_embeddings``);
        ``failures``: where unreadable images are recorded instead of stopping."""
        from agman.engine.embed import iter_embeddings

        return iter_embeddings(self.model, paths, None, input_size=self.input_size, crop_ratio=self.crop_ratio,
                               batch_size=batch_size, device=device or self.device, workers=workers, start=start,
                               progress=progress, failures=failures)
