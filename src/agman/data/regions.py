"""Regions files: where each attribute shows in each image, for scoring a model's attention.

``regions_<split>.jsonl`` beside a dataset (the synthetic set writes one per split; users can write
their own) holds one JSON object per line, one line per image of the split::

    {"image": 0, "path": "images/test/000000.png",
     "regions": {"sleeve_length": [29, 27, 77, 60], "neckline_design": [42, 21, 62, 42]},
     "parts": {"sleeve_length": [[61, 27, 77, 59], [29, 28, 43, 60]]}}

* ``image`` (required): the image's index in the split, i.e. its 0-based line in ``filenames_<split>.txt``.
* ``path`` (optional): when given it must equal that line (a guard against shifted files).
* ``regions`` (required): attribute name -> one box ``[x0, y0, x1, y1]`` or a list of boxes (the
  attribute's region is their union), or ``null``.  Boxes are in pixels of the original image file,
  ``x0 <= x < x1``, ``y0 <= y < y1`` (x1, y1 exclusive), numbers (floats allowed), ``0 <= x0 < x1``,
  ``0 <= y0 < y1``.  An attribute left out (or ``null``) has no known region in that image.
* ``parts`` (optional): the same, with tighter boxes of the region's pieces (the two arms of a
  sleeve); :func:`read_regions_file` returns them with ``use="parts"`` (falling back to
  ``regions`` for an attribute without parts).
* Anything else (``values``, ``annotated``, ``garment`` in the synthetic set's files) is ignored.

Images without a line simply have no regions; blank lines are skipped.  Every problem raises
:class:`~agman.data.spec.DatasetError` naming the file, the line and the value.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from agman.data.spec import DatasetError, Split
from agman.errors import InvalidValueError, NotFoundError

Box = tuple[float, float, float, float]
USES = ("regions", "parts")


@dataclass(frozen=True)
class ImageRegions:
    """The boxes of one image: ``boxes[attribute name]`` is a list of boxes whose union is the region."""

    image: int
    boxes: dict[str, list[Box]]
    source: str  # "file, line N": for errors found later (e.g. a box outside the image)


def regions_path(root: str | Path, split: str) -> Path:
    """Where a dataset's regions file for ``split`` lives: ``root/regions_<split>.jsonl``."""
    return Path(root) / f"regions_{split}.jsonl"


def _box(value, path: Path, line: int, where: str) -> Box:
    ok = isinstance(value, list) and len(value) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok:
        raise DatasetError(f"{where}: expected a box [x0, y0, x1, y1] of four numbers, got {json.dumps(value)}",
                           path, line)
    x0, y0, x1, y1 = (float(v) for v in value)
    if not (0 <= x0 < x1 and 0 <= y0 < y1):
        raise DatasetError(f"{where}: box {json.dumps(value)} must have 0 <= x0 < x1 and 0 <= y0 < y1 "
                           "(pixels of the original image, x1 and y1 exclusive)", path, line)
    return x0, y0, x1, y1


def _boxes(value, path: Path, line: int, where: str) -> list[Box]:
    """One box, or a non-empty list of boxes."""
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return [_box(v, path, line, f"{where}[{i}]") for i, v in enumerate(value)]
    return [_box(value, path, line, where)]


def _attribute_boxes(record: dict, key: str, names: set[str] | None, path: Path, line: int) -> dict[str, list[Box]]:
    table = record.get(key, {} if key == "parts" else None)
    if not isinstance(table, dict):
        raise DatasetError(f"'{key}' must be an object of attribute name -> box, got {json.dumps(table)}", path, line)
    out = {}
    for name, value in table.items():
        if names is not None and name not in names:
            raise DatasetError(f"{key}: unknown attribute {name!r} (the dataset has: {', '.join(sorted(names))})",
                               path, line)
        if value is not None:
            out[name] = _boxes(value, path, line, f"{key}[{name!r}]")
    return out


def read_regions_file(
    path: str | Path, split: Split | None = None, attribute_names: list[str] | None = None, *, use: str = "regions"
) -> dict[int, ImageRegions]:
    """Read a regions file into ``{image index: ImageRegions}``.

    With ``split`` the image indices are checked against its images (and ``path`` fields against
    its paths); with ``attribute_names`` every attribute must be one of them.  ``use="parts"``
    prefers the ``parts`` boxes where an attribute has them.
    """
    if use not in USES:
        raise InvalidValueError(f"use must be one of {', '.join(USES)}, got {use!r}")
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"regions file not found: {path} (one JSON object per image, see agman.data.regions)")
    names = set(attribute_names) if attribute_names is not None else None
    out: dict[int, ImageRegions] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path) from None
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"invalid JSON ({exc.msg} at column {exc.colno})", path, lineno) from None
        if not isinstance(record, dict):
            raise DatasetError(f"expected a JSON object per line, got {type(record).__name__}", path, lineno)
        image = record.get("image")
        if not isinstance(image, int) or isinstance(image, bool) or image < 0:
            raise DatasetError(f"'image' must be a non-negative integer (the line in filenames_<split>.txt, "
                               f"from 0), got {json.dumps(image)}", path, lineno)
        if split is not None:
            if image >= len(split):
                raise DatasetError(f"image {image} is past the split {split.name!r} ({len(split)} images)",
                                   path, lineno)
            given = record.get("path")
            if given is not None and given != split.paths[image]:
                raise DatasetError(f"image {image} is {split.paths[image]!r} in filenames_{split.name}.txt, "
                                   f"but 'path' says {given!r}", path, lineno)
        if image in out:
            raise DatasetError(f"image {image} appears twice (first at {out[image].source})", path, lineno)
        boxes = _attribute_boxes(record, "regions", names, path, lineno)
        if use == "parts":
            boxes.update(_attribute_boxes(record, "parts", names, path, lineno))
        out[image] = ImageRegions(image, boxes, f"{path}, line {lineno}")
    return out
