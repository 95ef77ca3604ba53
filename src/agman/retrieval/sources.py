"""What to index: a folder of images, a catalog CSV, or a dataset split, as one :class:`ImageSet`.

Every source becomes parallel lists of item ids, absolute image paths and known labels
(``{attribute name: value name}``, possibly empty).  Ids are the image path relative to the
folder / CSV / dataset root, so the same catalog indexed twice gives the same ids.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from agman.data.layouts import read_catalog_csv
from agman.data.spec import UNLABELED, DatasetError, DatasetSpec
from agman.errors import InvalidValueError, NotFoundError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

SPLIT_PARTS = ("all", "candidates", "queries")
"""Which images of a dataset split to take: all of them (with every label the split gives them), or
only the images of the candidate (query) rows, labelled by those rows alone."""


@dataclass
class ImageSet:
    """Items to index: ``ids[i]`` (unique), ``paths[i]`` (absolute), ``labels[i]`` (attribute -> value),
    ``metadata[i]`` (column -> str / float / bool) typed by ``metadata_types`` (column -> ``string`` /
    ``number`` / ``bool``); ``root``: the catalog root the index stores paths relative to (None: the
    index's own root, or absolute paths); ``left_out``: image files of the source that are not items
    (a dataset root's own pictures)."""

    ids: list[str]
    paths: list[str]
    labels: list[dict[str, str]] = field(default_factory=list)
    description: str = ""
    left_out: list[str] = field(default_factory=list)
    metadata: list[dict] = field(default_factory=list)
    metadata_types: dict[str, str] = field(default_factory=dict)
    root: str | None = None

    def __post_init__(self):
        if not self.labels:
            self.labels = [{} for _ in self.ids]
        if not self.metadata:
            self.metadata = [{} for _ in self.ids]
        if not len(self.ids) == len(self.paths) == len(self.labels) == len(self.metadata):
            raise ValueError(
                f"ImageSet needs as many ids, paths, labels and metadata: {len(self.ids)}, {len(self.paths)}, "
                f"{len(self.labels)}, {len(self.metadata)}"
            )
        seen: dict[str, int] = {}
        for i, item_id in enumerate(self.ids):
            if item_id in seen:
                raise InvalidValueError(f"item id {item_id!r} appears twice in {self.description or 'the image set'}")
            seen[item_id] = i

    def __len__(self) -> int:
        return len(self.ids)

    def prefixed(self, prefix: str) -> ImageSet:
        """This set with ``prefix`` in front of every id (two folders with the same file names indexed
        into one catalog keep distinct ids)."""
        if not prefix:
            return self
        return replace(self, ids=[prefix + i for i in self.ids])


def _posix(path: Path) -> str:
    return path.as_posix()


def dataset_marker(folder: Path) -> str | None:
    """The file that makes ``folder`` a dataset root (``meta.json``, ``filenames.json`` or a
    ``filenames_<split>.txt`` list), or None."""
    for name in ("meta.json", "filenames.json"):
        if (folder / name).is_file():
            return name
    lists = sorted(p.name for p in folder.glob("filenames_*.txt") if p.is_file())
    return lists[0] if lists else None


def from_directory(folder: str | Path) -> ImageSet:
    """Every image file under ``folder`` (recursively, sorted by relative path); no labels.

    A dataset root (:func:`dataset_marker`) is read as the dataset: its items are the image files
    its splits list, with their labels; other image files under it (a contact sheet, figures) are
    not catalog items and are named in ``left_out``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"image folder not found: {folder}")
    images = (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    files = sorted((p for p in images if p.is_file()), key=lambda p: _posix(p.relative_to(folder)))
    if not files:
        raise InvalidValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    base = folder.resolve()
    rels = [_posix(p.relative_to(folder)) for p in files]
    marker = dataset_marker(folder)
    if marker is None:
        return ImageSet(ids=rels, paths=[str(base / r) for r in rels], description=f"folder {folder}", root=str(base))
    listed = _dataset_labels(folder, marker)
    paths = {r: os.path.normpath(base / r) for r in rels}
    kept = [r for r in rels if paths[r] in listed]
    if not kept:
        raise InvalidValueError(f"{folder} is a dataset root ({marker}) whose lists name none of the "
                                f"{len(rels)} image files under it")
    return ImageSet(
        ids=kept,
        paths=[paths[r] for r in kept],
        labels=[listed[paths[r]] for r in kept],
        description=f"dataset root {folder}",
        left_out=[r for r in rels if paths[r] not in listed],
        root=str(base),
    )


def _dataset_labels(folder: Path, marker: str) -> dict[str, dict[str, str]]:
    """``{absolute image path: labels}`` of every image the dataset at ``folder`` lists, over all splits."""
    from agman.data.layouts import open_dataset

    try:
        spec = open_dataset(folder, allow_singletons=True)
    except DatasetError as exc:
        raise InvalidValueError(
            f"{folder} is a dataset root ({marker}) that cannot be opened: {exc}; point --images at its image "
            "folder to index every image file in it"
        ) from None
    root = Path(spec.root).resolve()
    listed: dict[str, dict[str, str]] = {}
    for split in spec.splits.values():
        for i, rel in enumerate(split.paths):
            listed.setdefault(os.path.normpath(root / rel), {}).update(_named_labels(spec, split.labels[i]))
    return listed


def from_csv(csv_path: str | Path, attributes=None, columns=None, *, root: str | Path | None = None) -> ImageSet:
    """A catalog CSV.

    With ``attributes`` (the checkpoint's: a list of :class:`~agman.data.spec.Attribute`) the CSV
    is read as a typed catalog (:func:`agman.retrieval.catalog.read_catalog`): columns named after
    an attribute hold its labels (checked against its values), ``columns``
    (:class:`~agman.retrieval.catalog.CatalogColumns`) declares metadata, the id column and an id
    prefix; any other column is an error; items in file order; paths relative to ``root`` (default:
    the CSV's folder).  Without, ``path[,<attribute>,...]`` (the ``agman data import-csv`` format; a
    non-empty cell is the item's value of that column's attribute, value names taken from the CSV),
    or a CSV with the ``path`` column alone; items sorted by path."""
    if attributes is not None:
        from agman.retrieval.catalog import read_catalog

        return read_catalog(csv_path, attributes, columns, root=root).image_set()
    csv_path = Path(csv_path)
    try:
        with csv_path.open(encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), [])
    except FileNotFoundError:
        raise DatasetError("catalog CSV not found", csv_path) from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", csv_path) from None
    if [h.strip().lower() for h in header] == ["path"]:
        rows = list(csv.reader(csv_path.read_text(encoding="utf-8-sig").splitlines()))[1:]
        rels = sorted({r[0].strip() for r in rows if r and r[0].strip()})
        labels: list[dict[str, str]] = [{} for _ in rels]
    else:
        # every row in one part (ratio 1): nothing split that would have to be merged back; the reader
        # validates every row and names file + line on errors
        spec = read_catalog_csv(csv_path, ratios=(1.0, 0.0, 0.0))
        rows = spec.split("train")
        items = {rel: _named_labels(spec, rows.labels[i]) for i, rel in enumerate(rows.paths)}
        rels = sorted(items)
        labels = [items[r] for r in rels]
    if not rels:
        raise DatasetError("no image rows after the header", csv_path)
    base = csv_path.parent.resolve()
    return ImageSet(rels, [str(base / r) for r in rels], labels, description=f"catalog {csv_path}", root=str(base))


def _named_labels(spec: DatasetSpec, row: np.ndarray) -> dict[str, str]:
    return {a.name: a.values[int(v)] for a, v in zip(spec.attributes, row) if v != UNLABELED}


def from_split(spec: DatasetSpec, split: str, part: str = "all") -> ImageSet:
    """Images of one split of a dataset, in image-index order, with their labels.

    ``part='candidates'`` keeps only the images of the split's candidate rows, labelled by those
    rows: an attribute-filtered search over such an index ranks exactly the candidates that the
    evaluation ranks for that attribute, in the same order of positions.
    """
    if part not in SPLIT_PARTS:
        raise InvalidValueError(f"part must be one of {', '.join(SPLIT_PARTS)}, got {part!r}")
    s = spec.split(split)
    if part == "all":
        label_rows = s.labels
        images = np.arange(len(s))
    else:
        rows = s.candidates if part == "candidates" else s.queries
        label_rows = np.full_like(s.labels, UNLABELED)
        label_rows[rows[:, 0], rows[:, 1]] = rows[:, 2]
        images = np.unique(rows[:, 0])
    root = Path(spec.root).resolve()
    labels = [_named_labels(spec, label_rows[i]) for i in images]
    return ImageSet(
        ids=[s.paths[i] for i in images],
        paths=[str(root / s.paths[i]) for i in images],
        labels=labels,
        description=f"{spec.name} {split} split ({part})",
        root=str(root),
    )
