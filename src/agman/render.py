"""Pictures of retrieval results: the top-k grid (paper Fig. 5), the attention heatmap overlay
(Fig. 7) over the model's crop or over the original image at its own resolution, and a side-by-side
ranking of several models for one query (Fig. 6).

Every function takes and returns PIL images and draws nothing to the screen; saving is the caller's
business.  A result is ``(image, score, correct)`` with ``correct`` True (green frame), False (red
frame) or None (label unknown: no frame).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from agman.data.crop import crop_frame
from agman.errors import InvalidValueError
from agman.fileio import atomic_write

Result = tuple[Image.Image, float, "bool | None"]

GREEN = (34, 160, 60)
RED = (214, 40, 57)
QUERY_BLUE = (40, 96, 200)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
BOX_YELLOW = (255, 230, 0)
CROP_WHITE = (255, 255, 255)

_FRAME = 4  # frame width in pixels
_GAP = 6  # space between tiles


def save_picture(image: Image.Image, path) -> None:
    """Write ``image`` to ``path`` atomically (an interrupted save leaves no truncated file), in the
    format its extension names (``.png``, ``.jpg``, ``.webp``, ...; anything else is an error)."""
    from pathlib import Path

    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        raise InvalidValueError(f"{path}: cannot write a picture as {suffix or 'a file without extension'!r}; "
                                "use .png, .jpg or .webp")
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    atomic_write(path, lambda f: image.save(f, format=fmt))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def fit_image(image: Image.Image, size: int, background=BACKGROUND) -> Image.Image:
    """``image`` scaled to fit a ``size``x``size`` square (aspect ratio kept), centred on ``background``."""
    image = image.convert("RGB")
    scale = size / max(image.width, image.height)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    tile = Image.new("RGB", (size, size), background)
    tile.paste(image.resize((w, h), Image.Resampling.BILINEAR), ((size - w) // 2, (size - h) // 2))
    return tile


def _frame_color(correct: bool | None):
    if correct is None:
        return None
    return GREEN if correct else RED


def _tile(image: Image.Image, caption: str, frame, size: int, font) -> Image.Image:
    """One image with an optional coloured frame and a caption line below it."""
    caption_h = font.size + 6 if hasattr(font, "size") else 16
    tile = Image.new("RGB", (size, size + caption_h), BACKGROUND)
    inner = size - 2 * _FRAME
    tile.paste(fit_image(image, inner), (_FRAME, _FRAME))
    draw = ImageDraw.Draw(tile)
    if frame is not None:
        draw.rectangle([0, 0, size - 1, size - 1], outline=frame, width=_FRAME)
    text_w = draw.textlength(caption, font=font)
    draw.text(((size - text_w) / 2, size + 2), caption, fill=TEXT, font=font)
    return tile


def _check_results(results: Sequence[Result], what: str) -> None:
    for i, item in enumerate(results):
        if len(item) != 3 or not isinstance(item[0], Image.Image):
            raise ValueError(f"{what}[{i}] must be (PIL image, score, correct True/False/None), got {item!r}")


def _result_tiles(results: Sequence[Result], size: int, font) -> list[Image.Image]:
    return [
        _tile(img, f"#{rank}  {float(score):.3f}", _frame_color(correct), size, font)
        for rank, (img, score, correct) in enumerate(results, start=1)
    ]


def _title_band(title: str, width: int, font) -> Image.Image | None:
    if not title:
        return None
    band = Image.new("RGB", (width, font.size + 12), BACKGROUND)
    ImageDraw.Draw(band).text((_GAP, 6), title, fill=TEXT, font=font)
    return band


def stack_vertically(parts: list[Image.Image]) -> Image.Image:
    """``parts`` one under the other, left-aligned, on the background colour."""
    width = max(p.width for p in parts)
    out = Image.new("RGB", (width, sum(p.height for p in parts)), BACKGROUND)
    y = 0
    for p in parts:
        out.paste(p, (0, y))
        y += p.height
    return out


def result_grid(
    query_image: Image.Image,
    results: list[Result],
    title: str = "",
    *,
    tile_size: int = 128,
    columns: int = 10,
) -> Image.Image:
    """The query (blue frame) then the ranked results with rank and score (Fig. 5).

    Results are framed green when ``correct`` is True, red when False and not at all when None.
    More than ``columns`` results wrap onto further rows, which leave the query column empty.
    """
    if columns < 1:
        raise InvalidValueError(f"columns must be at least 1, got {columns}")
    _check_results(results, "results")
    font = _font(max(10, tile_size // 10))
    query = _tile(query_image, "query", QUERY_BLUE, tile_size, font)
    tiles = _result_tiles(results, tile_size, font)
    step = tile_size + _GAP
    n_rows = max(1, -(-len(tiles) // columns))
    n_cols = min(columns, max(1, len(tiles)))
    width = _GAP + step * (1 + n_cols) + _GAP  # an extra gap separates the query from the results
    grid = Image.new("RGB", (width, _GAP + n_rows * (query.height + _GAP)), BACKGROUND)
    grid.paste(query, (_GAP, _GAP))
    for i, tile in enumerate(tiles):
        row, col = divmod(i, columns)
        grid.paste(tile, (2 * _GAP + step * (1 + col), _GAP + row * (query.height + _GAP)))
    band = _title_band(title, grid.width, _font(max(12, tile_size // 8)))
    return stack_vertically([band, grid]) if band else grid


def ranking_comparison(
    query_image: Image.Image,
    rows: dict[str, list[Result]],
    title: str = "",
    *,
    tile_size: int = 112,
) -> Image.Image:
    """One row per model (Fig. 6): the model's name, the query, then that model's ranked results."""
    if not rows:
        raise ValueError("ranking_comparison needs at least one row")
    for name, results in rows.items():
        _check_results(results, f"rows[{name!r}]")
    font = _font(max(10, tile_size // 10))
    name_font = _font(max(11, tile_size // 8))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = int(max(probe.textlength(name, font=name_font) for name in rows)) + 2 * _GAP
    query = _tile(query_image, "query", QUERY_BLUE, tile_size, font)
    step = tile_size + _GAP
    n_cols = max(len(r) for r in rows.values())
    width = label_w + step * (1 + n_cols) + 2 * _GAP
    row_h = query.height + _GAP
    out = Image.new("RGB", (width, _GAP + row_h * len(rows)), BACKGROUND)
    draw = ImageDraw.Draw(out)
    for r, (name, results) in enumerate(rows.items()):
        y = _GAP + r * row_h
        draw.text((_GAP, y + tile_size // 2 - name_font.size // 2), name, fill=TEXT, font=name_font)
        out.paste(query, (label_w, y))
        for c, tile in enumerate(_result_tiles(results, tile_size, font)):
            out.paste(tile, (label_w + _GAP + step * (1 + c), y))
    band = _title_band(title, out.width, _font(max(12, tile_size // 8)))
    return stack_vertically([band, out]) if band else out


def captioned_strip(images: Sequence[Image.Image], captions: Sequence[str], title: str = "", *,
                    tile_size: int = 160) -> Image.Image:
    """Images side by side, each with its caption below, under an optional title (e.g. Fig. 7's
    attention maps over several images)."""
    if len(images) != len(captions) or not images:
        raise ValueError(f"captioned_strip needs one caption per image and at least one image, "
                         f"got {len(images)} images and {len(captions)} captions")
    font = _font(max(10, tile_size // 12))
    tiles = [_tile(image, caption, None, tile_size, font) for image, caption in zip(images, captions)]
    row = Image.new("RGB", (_GAP + len(tiles) * (tile_size + _GAP), tiles[0].height + 2 * _GAP), BACKGROUND)
    for k, tile in enumerate(tiles):
        row.paste(tile, (_GAP + k * (tile_size + _GAP), _GAP))
    band = _title_band(title, row.width, _font(max(12, tile_size // 10)))
    return stack_vertically([band, row]) if band else row


def heat_colors(values: np.ndarray) -> np.ndarray:
    """The 'jet' colour map: values in [0, 1] ``[...]`` -> uint8 RGB ``[..., 3]`` (blue = low, red = high)."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    rgb = np.stack(
        [np.clip(1.5 - np.abs(4.0 * v - s), 0.0, 1.0) for s in (3.0, 2.0, 1.0)],
        axis=-1,
    )
    return (rgb * 255 + 0.5).astype(np.uint8)


def attention_overlay(image: Image.Image, attention: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The attention map ``[h, w]`` (Fig. 7), min-max scaled, bilinearly upsampled to the image's
    size, coloured with :func:`heat_colors` and blended over the image with opacity ``alpha``.

    The map covers whatever the model saw: pass the image as the model's input crop (see
    ``Retriever.model_view``) so that map cells land on the pixels they came from.
    """
    norm = _normalised_map(attention, alpha)
    image = image.convert("RGB")
    up = Image.fromarray(norm).resize(image.size, Image.Resampling.BILINEAR)
    heat = heat_colors(np.asarray(up))
    base = np.asarray(image, dtype=np.float32)
    blended = (1.0 - alpha) * base + alpha * heat.astype(np.float32)
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))


def _normalised_map(attention: np.ndarray, alpha: float) -> np.ndarray:
    """The map min-max scaled to [0, 1] (float32), after checking it and ``alpha``."""
    att = np.asarray(attention, dtype=np.float32)
    if att.ndim != 2 or att.size == 0:
        raise ValueError(f"attention must be a 2-D map [h, w], got shape {att.shape}")
    if not np.all(np.isfinite(att)):
        raise ValueError("attention map contains NaN or infinite values")
    if not 0.0 <= alpha <= 1.0:
        raise InvalidValueError(f"alpha must be in [0, 1], got {alpha}")
    lo, hi = float(att.min()), float(att.max())
    return (att - lo) / (hi - lo) if hi > lo else np.zeros_like(att)


def _interpolation(centres: np.ndarray, n: int) -> np.ndarray:
    """``[len(centres), n]`` linear-interpolation weights of positions given in cell units (cell k's
    centre at k + 0.5), clamped at the first and last cell centres (as Pillow's bilinear resize)."""
    u = np.clip(centres - 0.5, 0.0, n - 1.0)
    k = np.minimum(np.floor(u).astype(int), max(n - 2, 0))
    t = u - k
    weights = np.zeros((len(u), n))
    rows = np.arange(len(u))
    weights[rows, k] += 1.0 - t
    weights[rows, np.minimum(k + 1, n - 1)] += t
    return weights


def attention_on_original(
    image: Image.Image,
    attention: np.ndarray,
    input_size: int,
    crop_ratio: float,
    *,
    boxes=(),
    alpha: float = 0.5,
    size: int | None = None,
) -> Image.Image:
    """The original image with the attention map ``[h, w]`` drawn where the model saw it.

    The map lives on the model's input crop (short side resized to ``input_size / crop_ratio``,
    centre crop ``input_size``: :func:`agman.data.crop.crop_frame`); it is min-max scaled, upsampled
    bilinearly through the inverse of the crop onto the original's pixels and blended with opacity
    ``alpha``.  What the crop cut away is dimmed, the crop's border is outlined in white and each
    box of ``boxes`` (original pixels ``(x0, y0, x1, y1)``, x1/y1 exclusive, e.g. the attribute's
    region) in yellow.  ``size`` scales the picture so that its long side is ``size`` pixels
    (default: the original's resolution).
    """
    norm = _normalised_map(attention, alpha)
    image = image.convert("RGB")
    frame = crop_frame(image.width, image.height, input_size, crop_ratio)
    zoom = 1.0 if size is None else size / max(image.width, image.height)
    out_w, out_h = max(1, round(image.width * zoom)), max(1, round(image.height * zoom))
    if (out_w, out_h) != image.size:
        image = image.resize((out_w, out_h), Image.Resampling.BILINEAR)
    sx, sy = frame.scale
    h, w = norm.shape
    # Display pixel centre -> original pixel -> crop pixel -> map cell units.
    cx = (((np.arange(out_w) + 0.5) / zoom) * sx - frame.left) * w / frame.size
    cy = (((np.arange(out_h) + 0.5) / zoom) * sy - frame.top) * h / frame.size
    heat = heat_colors(_interpolation(cy, h) @ norm @ _interpolation(cx, w).T).astype(np.float32)
    seen = ((cy >= 0) & (cy < h))[:, None] & ((cx >= 0) & (cx < w))[None, :]
    base = np.asarray(image, dtype=np.float32)
    dimmed = 0.35 * base + 0.65 * 128.0
    blended = np.where(seen[..., None], (1.0 - alpha) * base + alpha * heat, dimmed)
    out = Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    line = max(1, round(max(out_w, out_h) / 160))
    if not seen.all():
        x0, y0, x1, y1 = (v * zoom for v in frame.crop_in_original)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=CROP_WHITE, width=line)
    for box in boxes:
        x0, y0, x1, y1 = (float(v) * zoom for v in box)
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=BOX_YELLOW, width=line)
    return out


def attention_beside_original(
    image: Image.Image,
    attention: np.ndarray,
    input_size: int,
    crop_ratio: float,
    *,
    boxes=(),
    caption: str = "attention",
    title: str = "",
    alpha: float = 0.5,
    tile_size: int = 256,
) -> Image.Image:
    """The original image beside :func:`attention_on_original` of it (box drawn when given), captioned."""
    overlay = attention_on_original(image, attention, input_size, crop_ratio, boxes=boxes, alpha=alpha,
                                    size=tile_size - 2 * _FRAME)
    original = f"original, {image.width} x {image.height} px"
    return captioned_strip([image, overlay], [original, caption], title, tile_size=tile_size)
