"""Faster JPEG decoding for the file pipeline, when asked (``decode='draft'``): not bit-equal.

libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 scale by dropping DCT coefficients (PIL's
``Image.draft``), which skips most of the decoding work for large photos.  The reduced image is
at least as large as the resize target, and the pipeline's ``Resize`` then brings it to the exact
size, so the model sees the same geometry; the pixels differ slightly from decoding at full size
and resizing (measured by ``bench/input_pipeline.py``, figures in docs/training.md).  Other
formats decode as usual.  The decoded-image cache (:mod:`agman.data.cache`) is the exact and
faster alternative.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

from agman.data.images import ImageListDataset, load_image


def load_image_draft(path: str | Path, short_side: int) -> Image.Image:
    """Open ``path`` as RGB, letting a JPEG decode at the smallest DCT scale whose short side is
    still at least ``short_side`` (the resize target); errors as :func:`agman.data.images.load_image`."""

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.format == "JPEG":
                    im.draft("RGB", (short_side, short_side))
                im.load()
                return im.convert("RGB")
    except Exception:  # noqa: BLE001 - load_image raises the ImageLoadError that names the file
        return load_image(path)


class DraftImageListDataset(ImageListDataset):
    """:class:`~agman.data.images.ImageListDataset` decoding JPEGs with :func:`load_image_draft`."""

    def __init__(self, paths: list[str], root, transform, short_side: int):
        super().__init__(paths, root, transform)
        self.short_side = short_side

    def __getitem__(self, index: int):
        return self.transform(load_image_draft(self.path(index), self.short_side)), index
