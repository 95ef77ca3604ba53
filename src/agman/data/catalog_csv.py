"""A catalog CSV (your own data): ``path,<attr1>,<attr2>,...``, read as a table and split into a dataset."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agman.data.lines import read_text
from agman.data.spec import UNLABELED, Attribute, DatasetError, DatasetSpec, Split


@dataclass
class CatalogTable:
    """Every row of a catalog CSV, in file order: ``paths[i]`` (relative to the CSV's folder) and
    ``labels[i, a]`` (value index of attribute a, or ``UNLABELED`` for an empty cell)."""

    path: Path
    paths: list[str]
    attributes: list[Attribute]
    labels: np.ndarray


def read_catalog_table(csv_path: str | Path, *, min_attributes: int = 1) -> CatalogTable:
    """Read and validate a catalog CSV without splitting it.

    The header is ``path`` followed by at least ``min_attributes`` attribute names; an empty cell
    means "not annotated"; value names are the distinct cell texts of each column, sorted.  Blank
    rows are skipped; every other problem is a :class:`DatasetError` naming the file and line.
    """
    csv_path = Path(csv_path)
    if not csv_path.exists():
        raise DatasetError("catalog CSV not found", csv_path)
    text = read_text(csv_path, encoding="utf-8-sig")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []  # (first line of the row, fields)
    try:
        start = 1
        for row in reader:
            rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DatasetError(f"unreadable CSV: {exc}", csv_path, reader.line_num) from None
    if not rows or not rows[0][1]:
        raise DatasetError("empty file: expected a header 'path,<attribute>,...'", csv_path, 1)
    header = [h.strip() for h in rows[0][1]]
    if header[0].lower() != "path" or len(header) < 1 + min_attributes:
        raise DatasetError(f"header must be 'path,<attribute1>,<attribute2>,...', got {rows[0][1]!r}", csv_path, 1)
    attr_names = header[1:]
    if len(set(attr_names)) != len(attr_names) or any(not a for a in attr_names):
        raise DatasetError(
            f"attribute names in the header must be non-empty and distinct, got {attr_names!r}", csv_path, 1
        )
    paths: list[str] = []
    cells: list[list[str]] = []
    seen: dict[str, int] = {}
    for lineno, row in rows[1:]:
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DatasetError(
                f"expected {len(header)} comma-separated fields (as in the header), got {len(row)}", csv_path, lineno
            )
        path = row[0].strip()
        if not path:
            raise DatasetError("empty image path in the first column", csv_path, lineno)
        if path in seen:
            raise DatasetError(f"image {path!r} is listed twice (first on line {seen[path]})", csv_path, lineno)
        seen[path] = lineno
        paths.append(path)
        cells.append([c.strip() for c in row[1:]])
    if not paths:
        raise DatasetError("no image rows after the header", csv_path)
    attributes = []
    labels = np.full((len(paths), len(attr_names)), UNLABELED, dtype=np.int32)
    for a, name in enumerate(attr_names):
        names = sorted({r[a] for r in cells if r[a]})
        if not names:
            raise DatasetError(f"attribute column {name!r} has no annotated value", csv_path)
        index = {v: i for i, v in enumerate(names)}
        attributes.append(Attribute(name, tuple(names)))
        for i, r in enumerate(cells):
            if r[a]:
                labels[i, a] = index[r[a]]
    return CatalogTable(csv_path, paths, attributes, labels)


def read_catalog_csv(
    csv_path: str | Path,
    *,
    seed: int = 0,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    query_share: float = 0.2,
) -> DatasetSpec:
    """Read a catalog CSV ``path,<attr1>,<attr2>,...`` (empty cell = not annotated) and split it.

    Images are split train/valid/test by ``ratios`` (8:1:1) and, within valid and test, into
    query and candidate images 1:4 (``query_share``), reproducibly from ``seed``.  Value names
    are the distinct cell texts of each column, sorted.  Paths resolve relative to the CSV's folder.
    """
    table = read_catalog_table(csv_path)
    paths, labels, n_attr = table.paths, table.labels, len(table.attributes)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(paths))
    n_train = int(round(ratios[0] * len(paths)))
    n_valid = int(round(ratios[1] * len(paths)))
    parts = {"train": order[:n_train], "valid": order[n_train : n_train + n_valid], "test": order[n_train + n_valid :]}
    splits = {}
    for name, idx in parts.items():
        idx = np.sort(idx)
        split_paths = [paths[i] for i in idx]
        split_labels = labels[idx]
        queries = candidates = np.zeros((0, 3), dtype=np.int64)
        if name != "train":
            is_query = np.zeros(len(idx), dtype=bool)
            is_query[rng.permutation(len(idx))[: int(round(query_share * len(idx)))]] = True
            qs, cs = [], []
            for i in range(len(idx)):
                for a in range(n_attr):
                    v = split_labels[i, a]
                    if v != UNLABELED:
                        (qs if is_query[i] else cs).append((i, a, int(v)))
            queries = np.asarray(qs, dtype=np.int64).reshape(-1, 3)
            candidates = np.asarray(cs, dtype=np.int64).reshape(-1, 3)
        splits[name] = Split(name, split_paths, split_labels, queries, candidates)
    return DatasetSpec(
        name=table.path.stem, root=table.path.parent, attributes=table.attributes, splits=splits, source=str(table.path)
    )
