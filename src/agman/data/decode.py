"""Decode one image — an upload, a query path, a catalog or dataset file — with bounded memory.

:func:`decode_image` is the only place agman turns image bytes into pixels.  Whatever the input, it
returns an RGB image of at most ``limits.max_pixels`` pixels or raises :class:`ImageLoadError`
naming the file (or ``upload``):

1. only the formats in ``limits.formats`` are opened (Pillow reads many more, some with fragile
   decoders: IM, DDS, EPS ...);
2. the size in the header is checked *before* any pixel is decoded: at most
   ``limits.max_source_pixels`` pixels (the transient decode buffer, 4 bytes a pixel) and a long/short
   side ratio of at most ``limits.max_aspect`` — so resizing the short side to the model's input
   size S afterwards makes at most S² x max_aspect pixels;
3. larger images are decoded at reduced size where the format allows (JPEG ``draft``: 1/2, 1/4,
   1/8 scale in the decoder) and shrunk to ``limits.max_pixels`` (``Image.reduce`` by whole blocks,
   then a bicubic resize), keeping the aspect ratio;
4. every failure of the decoder, whatever its exception type, becomes ``ImageLoadError``.

Images within ``max_pixels`` come back exactly as ``Image.open(path).convert("RGB")`` gives them.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from agman.errors import AgmanError


class ImageLoadError(AgmanError, RuntimeError):
    """An image file is missing or cannot be decoded; the message names its path (or ``upload``)."""

    def __init__(self, message: str, source: str | None = None):
        super().__init__(message)
        self.source = source


class ImageNotFoundError(ImageLoadError):
    """The image file does not exist."""


class ImageTooLargeError(ImageLoadError):
    """The image is larger (pixels) or more elongated (aspect ratio) than :class:`ImageLimits` allow."""


_DEFAULT_FORMATS = ("BMP", "GIF", "JPEG", "PNG", "PPM", "TIFF", "WEBP")


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on decoding one image (the defaults are documented in docs/data.md)."""

    max_source_pixels: int = 40_000_000
    """Width x height declared by the file; above this the image is refused before decoding."""
    max_pixels: int = 4_000_000
    """Pixels of the returned image; larger images are decoded at reduced size and shrunk to fit."""
    max_aspect: float = 20.0
    """Longer side / shorter side; above this the image is refused."""
    formats: tuple[str, ...] = _DEFAULT_FORMATS
    """Pillow format names that are opened (JPEG includes multi-picture MPO); any other file is refused."""

    def __post_init__(self):
        if self.max_pixels < 1 or self.max_source_pixels < 1 or self.max_aspect < 1:
            raise ValueError(f"ImageLimits need max_pixels, max_source_pixels >= 1 and max_aspect >= 1, got {self}")
        if set(self.formats) <= set(_DEFAULT_FORMATS):
            return  # known to Pillow; Image.init() (every plugin, ~50 ms) only for other names
        Image.init()
        unknown = sorted(set(self.formats) - set(Image.OPEN))
        if unknown:
            raise ValueError(f"ImageLimits.formats: Pillow cannot open {', '.join(unknown)}")


DEFAULT_LIMITS = ImageLimits()

ImageSource = bytes | bytearray | memoryview | str | os.PathLike


def decode_image(source: ImageSource, limits: ImageLimits = DEFAULT_LIMITS, *, name: str | None = None) -> Image.Image:
    """Decode ``source`` (the bytes of an upload, or a file path) into an RGB image of at most
    ``limits.max_pixels`` pixels; raise :class:`ImageLoadError` (or its subclasses) naming ``name``
    — by default the path, or ``upload`` for bytes — on any problem."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "upload"
        if not len(source):
            raise ImageLoadError(f"cannot read image {label}: it is empty", label)
        fp = io.BytesIO(source)
    else:
        label = name or str(source)
        fp = Path(source)
    try:
        with Image.open(fp, formats=limits.formats) as im:
            _check_size(im.size, limits, label)
            target = _fit(im.size, limits.max_pixels)
            if target != im.size and im.format in ("JPEG", "MPO"):
                im.draft("RGB", target)  # decode at 1/2, 1/4 or 1/8 scale, never below target
            im.load()
            _check_size(im.size, limits, label)
            return _to_rgb(im, target)
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageNotFoundError(f"image file not found: {label}", label) from None
    except UnidentifiedImageError:
        raise ImageLoadError(
            f"cannot read image {label}: not an image in a supported format ({', '.join(limits.formats)})", label
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"cannot read image {label}: {exc}", label) from None
    except Exception as exc:  # noqa: BLE001 - a decoder fed untrusted bytes may fail in any way
        raise ImageLoadError(f"cannot read image {label}: {_reason(exc)}", label) from None


def _check_size(size: tuple[int, int], limits: ImageLimits, label: str) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ImageLoadError(f"cannot read image {label}: it has no pixels ({w}x{h})", label)
    if w * h > limits.max_source_pixels:
        raise ImageTooLargeError(
            f"image {label} is {w}x{h} = {w * h:,} pixels; at most {limits.max_source_pixels:,} are decoded "
            "(ImageLimits.max_source_pixels)",
            label,
        )
    if max(w, h) > limits.max_aspect * min(w, h):
        raise ImageTooLargeError(
            f"image {label} is {w}x{h}: its aspect ratio {max(w, h) / min(w, h):.1f}:1 exceeds "
            f"{limits.max_aspect:g}:1 (ImageLimits.max_aspect)",
            label,
        )


def _fit(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """The largest size with ``size``'s aspect ratio and at most ``max_pixels`` pixels (``size`` itself if it fits)."""
    w, h = size
    if w * h <= max_pixels:
        return size
    scale = math.sqrt(max_pixels / (w * h))
    tw = max(1, int(w * scale))
    th = max(1, min(int(h * scale), max_pixels // tw))
    return tw, th


def _to_rgb(im: Image.Image, target: tuple[int, int]) -> Image.Image:
    if im.size == target:
        return im.convert("RGB")  # always a copy: nothing refers to the file afterwards
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    factor = min(im.width // target[0], im.height // target[1])
    if factor > 1:  # box-average whole blocks first: no full-width intermediate as a two-pass resize makes
        im = im.reduce(factor)
    if im.size != target:
        im = im.resize(target, Image.Resampling.BICUBIC)
    return im.convert("RGB")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, MemoryError):
        return "not enough memory to decode it"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
