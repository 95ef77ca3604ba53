"""Faster JPEG decoding for the file pipeline, when asked (``decode='draft'``): not bit-equal.

libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 scale by dropping DCT coefficients (PIL's ``draft``),
which skips most of the decoding work for large photos.  :func:`load_image_draft` has
:func:`agman.data.decode.decode_image` (the one decoder, with its format and size limits) decode
a JPEG at the smallest DCT scale whose short side is still at least the resize target; the
pipeline's ``Resize`` and ``CenterCrop`` then give the model the same geometry as the exact path;
the pixels differ slightly (measured by ``bench/input_pipeline.py``, figures in docs/training.md).
The decoded-image cache (:mod:`agman.data.cache`) is the exact and faster alternative.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from PIL import Image

from agman.data.decode import DEFAULT_LIMITS, ImageLimits, decode_image
from agman.data.images import ImageListDataset


def load_image_draft(path: str | Path, short_side: int, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """``path`` as RGB; a JPEG whose short side is at least twice ``short_side`` is decoded at the
    smallest DCT scale (1/2, 1/4, 1/8) that keeps it at least ``short_side`` (errors and limits as
    :func:`agman.data.images.load_image`; other formats decode as usual)."""
    try:
        with Image.open(path) as im:  # the header only: format and size
            fmt, (w, h) = im.format, im.size
    except Exception:  # noqa: BLE001 - decode_image raises the ImageLoadError that names the file
        return decode_image(Path(path), limits)
    k = next((k for k in (8, 4, 2) if math.ceil(min(w, h) / k) >= short_side), 1)
    if k > 1 and fmt in ("JPEG", "MPO"):  # decode_image drafts to the size its max_pixels allows
        limits = replace(limits, max_pixels=min(limits.max_pixels, math.ceil(w / k) * math.ceil(h / k)))
    return decode_image(Path(path), limits)


class DraftImageListDataset(ImageListDataset):
    """:class:`~agman.data.images.ImageListDataset` decoding with :func:`load_image_draft`."""

    def __init__(self, paths: list[str], root, transform, short_side: int):
        super().__init__(paths, root, transform)
        self.short_side = short_side

    def __getitem__(self, index: int):
        return self.transform(load_image_draft(self.path(index), self.short_side, self.limits)), index
