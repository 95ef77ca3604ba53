"""Image sets: what to index -- a folder of images, a catalog CSV, or a dataset split -- as one :class:`ImageSet`.

Every source becomes parallel lists of item ids, absolute image paths and known labels
(``{attribute name: value name}``, possibly empty).  Ids are the image path relative to the
folder / CSV / dataset root, so the same catalog indexed twice gives the same ids.  A catalog CSV
is read by :func:`agman.data.catalog_csv.read_catalog_table` (the one reader; it assigns every
column its role) and becomes a :class:`Catalog` of typed items.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from agman.data.catalog_csv import CatalogColumns, read_catalog_table
from agman.data.layouts import open_dataset
from agman.data.spec import UNLABELED, Attribute, DatasetError, DatasetSpec
from agman.errors import InvalidValueError, NotFoundError
from agman.retrieval.catalog import CatalogSchema
from agman.retrieval.filters import Column
from agman.retrieval.items import Item

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


@dataclass
class Catalog:
    """The items of a catalog CSV, their schema, and the folder relative image paths start from."""

    schema: CatalogSchema
    items: list[Item]
    root: Path
    source: str = ""

    def __len__(self) -> int:
        return len(self.items)

    def image_set(self) -> ImageSet:
        """The items as an :class:`ImageSet` (absolute paths, labels, metadata) for the index builder,
        the catalog's folder as its root."""
        return ImageSet(
            [it.id for it in self.items],
            [str(self.root / it.path) for it in self.items],
            [dict(it.labels) for it in self.items],
            description=self.source,
            metadata=[dict(it.metadata) for it in self.items],
            metadata_types=dict(self.schema.metadata),
            root=str(self.root),
        )

    def columns(self) -> dict[str, Column]:
        return self.schema.columns(self.items)


def read_catalog(
    csv_path: str | Path,
    attributes: Sequence[Attribute] | None,
    columns: CatalogColumns | None = None,
    *,
    root: str | Path | None = None,
) -> Catalog:
    """A catalog CSV as typed items in file order (:func:`agman.data.catalog_csv.read_catalog_table`
    gives every column its role; errors name the file, the line and the column).  ``attributes``: the
    checkpoint's (None: read from the CSV); ``root``: the folder relative paths start from (default:
    the CSV's folder)."""
    table = read_catalog_table(csv_path, attributes, columns, min_attributes=0)
    schema = CatalogSchema.create(table.attributes, table.metadata_types)
    items = [Item(table.ids[i], p, table.named_labels(i), table.metadata[i]) for i, p in enumerate(table.paths)]
    base = Path(root) if root is not None else table.path.parent
    return Catalog(schema, items, base.resolve(), f"catalog {table.path}")


def from_csv(csv_path: str | Path, attributes=None, columns=None, *, root: str | Path | None = None) -> ImageSet:
    """A catalog CSV (:func:`read_catalog`).  With the checkpoint's ``attributes`` items are in file
    order and a column must be a label of one of them, declared metadata (``columns``) or typed in
    the header; without, the ``agman data import-csv`` format (``path[,<attribute>,...]``, value
    names read from the CSV) with items sorted by path."""
    catalog = read_catalog(csv_path, attributes, columns, root=root)
    if attributes is None:
        catalog.items.sort(key=lambda it: it.id)
    return catalog.image_set()


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
