"""Where the model's input crop lies in the original image (the geometry of ``build_transform``'s view).

The evaluation view resizes the image so that its short side is ``round(input_size / crop_ratio)``
(the long side ``int(short * long / short_original)``, as torchvision computes it) and cuts the
centred ``input_size`` x ``input_size`` square (offsets ``round((resized - input_size) / 2)``).
A pixel edge ``x`` of the original image lands at ``x * resized_width / width - left`` in the crop.
:class:`CropFrame` holds that mapping both ways, so boxes drawn on an original image can be moved
into the frame an attention map lives on, and a map can be moved back onto the original.

Coordinates are continuous pixel edges: a box ``(x0, y0, x1, y1)`` covers ``x0 <= x < x1``,
``y0 <= y < y1`` (pixel ``i`` spans ``[i, i + 1)``).
"""
from __future__ import annotations

from dataclasses import dataclass

from agman.errors import InvalidValueError

BoxF = tuple[float, float, float, float]


@dataclass(frozen=True)
class CropFrame:
    """The model's square input crop inside a ``width`` x ``height`` original image."""

    width: int
    height: int
    size: int  # input_size: the crop's side, in pixels of the resized image
    resized: tuple[int, int]  # (width, height) after the short-side resize
    left: int  # crop offset in the resized image
    top: int

    @property
    def scale(self) -> tuple[float, float]:
        """Resized pixels per original pixel, along x and y (they differ by the long side's rounding)."""
        return self.resized[0] / self.width, self.resized[1] / self.height

    def to_crop(self, box) -> BoxF:
        """An original-image box in crop pixels (not clipped: it may reach outside ``[0, size]``)."""
        sx, sy = self.scale
        x0, y0, x1, y1 = (float(v) for v in box)
        return (x0 * sx - self.left, y0 * sy - self.top, x1 * sx - self.left, y1 * sy - self.top)

    def to_original(self, box) -> BoxF:
        """A crop box in original-image pixels (the inverse of :meth:`to_crop`)."""
        sx, sy = self.scale
        x0, y0, x1, y1 = (float(v) for v in box)
        return ((x0 + self.left) / sx, (y0 + self.top) / sy, (x1 + self.left) / sx, (y1 + self.top) / sy)

    @property
    def crop_in_original(self) -> BoxF:
        """The part of the original image the model sees, in original pixels."""
        return self.to_original((0, 0, self.size, self.size))

    def visible(self, box) -> BoxF | None:
        """The part of an original-image box inside the crop, in crop pixels; None when nothing is visible."""
        x0, y0, x1, y1 = self.to_crop(box)
        x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(self.size)), min(y1, float(self.size))
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def crop_frame(width: int, height: int, input_size: int, crop_ratio: float = 1.0) -> CropFrame:
    """The :class:`CropFrame` of ``build_transform(input_size, crop_ratio=crop_ratio)`` on a
    ``width`` x ``height`` image (tests check it against torchvision's Resize + CenterCrop)."""
    if width < 1 or height < 1:
        raise InvalidValueError(f"image size must be positive, got {width} x {height}")
    if not 0 < crop_ratio <= 1:
        raise InvalidValueError(f"crop_ratio must be in (0, 1], got {crop_ratio}")
    short_side = int(round(input_size / crop_ratio))
    if width <= height:
        resized = (short_side, int(short_side * height / width))
    else:
        resized = (int(short_side * width / height), short_side)
    left = int(round((resized[0] - input_size) / 2.0))
    top = int(round((resized[1] - input_size) / 2.0))
    return CropFrame(int(width), int(height), int(input_size), resized, left, top)
