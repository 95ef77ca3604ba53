"""A catalog CSV (your own data), read by one reader that gives every header column a role.

The roles, decided from the header alone (docs/data.md, "Catalog CSV"):

* **path** -- the column named ``path`` (any case; ``CatalogColumns.path_column``): image paths
  relative to the CSV's folder (or absolute); required, anywhere in the header;
* **id** -- the ``CatalogColumns.id_column``, when one is named; otherwise an item's id is its path
  (``id_prefix`` is put in front of every id);
* **metadata** -- a column typed in the header (``price:number``, ``title:string``,
  ``in_stock:bool``) or declared in ``CatalogColumns.metadata`` (``agman index --metadata``): a
  typed payload, never a label (numbers are finite float64; bools ``true/false/yes/no/1/0``);
* **attribute label** -- every other column.  Read against a checkpoint's attributes (indexing),
  a label column must be named after one of them and its cells must be their value names; read
  without (training, ``agman data import-csv``), each such column is an attribute whose value names
  are the column's distinct cell texts, sorted.

So an untyped ``price`` column is an attribute for training and an error for indexing until it is
typed (``price:number`` in the header, or ``--metadata price:number``) -- then it is metadata for
both.  An empty cell is "not annotated" / a missing value; blank rows are skipped; quoting is strict
(an unterminated quote is an error); every problem is a :class:`DatasetError` naming the file, the
line and the column, or a :class:`CatalogSchemaError` when declared columns do not fit the header.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agman.data.lines import read_text
from agman.data.spec import UNLABELED, Attribute, DatasetError, DatasetSpec, Split
from agman.errors import InvalidValueError

METADATA_TYPES = ("string", "number", "bool")
"""The types a metadata column may have."""

_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")


class CatalogSchemaError(InvalidValueError):
    """The declared columns do not fit the CSV header or the checkpoint's attributes."""


@dataclass(frozen=True)
class CatalogColumns:
    """Roles declared for a catalog CSV's columns beyond its header (see the module docstring);
    ``labels``: which attribute-named columns are labels (default: all of them)."""

    metadata: Mapping[str, str] = field(default_factory=dict)
    labels: tuple[str, ...] | None = None
    id_column: str | None = None
    id_prefix: str = ""
    path_column: str = "path"


@dataclass
class CatalogTable:
    """Every row of a catalog CSV, in file order: ``paths[i]`` (as written), ``ids[i]`` (unique),
    ``labels[i, a]`` (value index of attribute a, or ``UNLABELED``), ``metadata[i]`` (column -> typed
    value) typed by ``metadata_types``, and ``lines[i]`` (the row's first line in the file)."""

    path: Path
    paths: list[str]
    attributes: list[Attribute]
    labels: np.ndarray
    ids: list[str] = field(default_factory=list)
    metadata: list[dict] = field(default_factory=list)
    metadata_types: dict[str, str] = field(default_factory=dict)
    lines: list[int] = field(default_factory=list)

    def named_labels(self, i: int) -> dict[str, str]:
        """Row ``i``'s labels as ``{attribute name: value name}``."""
        return {a.name: a.values[int(v)] for a, v in zip(self.attributes, self.labels[i]) if v != UNLABELED}


def parse_cell(kind: str, text: str) -> str | float | bool:
    """A non-empty metadata cell as a value of ``kind``; ``ValueError`` saying what was expected."""
    if kind == "string":
        return text
    if kind == "number":
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{text!r} is not a finite number")
        return value
    low = text.lower()
    if low in _TRUE or low in _FALSE:
        return low in _TRUE
    raise ValueError(f"{text!r} is not a bool (expected one of {', '.join(_TRUE + _FALSE)})")


def parse_metadata_declarations(specs: str | Iterable[str]) -> dict[str, str]:
    """``"price:number,title"`` or ``["price:number", "in_stock:bool"]`` -> ``{name: type}``
    (a missing type is ``string``)."""
    out: dict[str, str] = {}
    for spec in [specs] if isinstance(specs, str) else specs:
        for piece in str(spec).split(","):
            if not piece.strip():
                continue
            name, _, kind = piece.rpartition(":") if ":" in piece else (piece, "", "string")
            name, kind = name.strip(), kind.strip().lower()
            if kind not in METADATA_TYPES:
                raise CatalogSchemaError(f"metadata {piece.strip()!r}: type must be one of {', '.join(METADATA_TYPES)}")
            if name in out:
                raise CatalogSchemaError(f"metadata column {name!r} is declared twice")
            out[name] = kind
    return out


def _typed_header(cell: str) -> tuple[str, str | None]:
    """``'price:number'`` -> ``('price', 'number')``; a header without a known type suffix -> ``(cell, None)``."""
    name, sep, kind = cell.rpartition(":")
    if sep and name.strip() and kind.strip().lower() in METADATA_TYPES:
        return name.strip(), kind.strip().lower()
    return cell, None


def _read_rows(csv_path: Path) -> list[tuple[int, list[str]]]:
    """Every CSV record with the line it starts on (quoted newlines counted)."""
    if not csv_path.exists():
        raise DatasetError("catalog CSV not found", csv_path)
    reader = csv.reader(io.StringIO(read_text(csv_path, encoding="utf-8-sig"), newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    try:
        start = 1
        for row in reader:
            rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DatasetError(f"unreadable CSV: {exc}", csv_path, reader.line_num) from None
    return rows


@dataclass
class _Header:
    """The header's column names and their roles, and the attributes label columns refer to."""

    names: list[str]
    roles: list[str]
    kinds: dict[str, str]  # metadata column -> type
    attributes: list[Attribute]
    inferred: bool  # attribute values still to be read from the cells


def _header(cells: list[str], attributes, cols: CatalogColumns, where: Path, min_attributes: int) -> _Header:
    """The role of every header column (see the module docstring); raises naming the column."""
    typed = [_typed_header(h.strip()) for h in cells]
    names = [n for n, _ in typed]
    kinds = {n: k for n, k in typed if k is not None}
    for name, kind in cols.metadata.items():
        if kinds.get(name, kind) != kind:
            raise CatalogSchemaError(f"{where}: column {name!r} is typed {kinds[name]} in the header, declared {kind}")
        kinds[name] = kind
    path_col = next((n for n in names if n.lower() == cols.path_column.lower()), None)
    shape = f"'{cols.path_column},<attribute1>,<attribute2>,...'"
    if path_col is None:
        raise DatasetError(f"header must be {shape} (plus typed metadata columns), got {cells!r}", where, 1)
    for name in names:
        if not name or names.count(name) > 1:
            raise DatasetError(f"column names in the header must be non-empty and distinct: column {name!r} "
                               f"appears {'empty' if not name else 'twice'}", where, 1)
    for name in [cols.id_column, *cols.metadata, *(cols.labels or ())]:
        if name is not None and name not in names:
            raise CatalogSchemaError(f"{where}: no column {name!r} in the header ({', '.join(names)})")
    roles = ["path" if n == path_col else "id" if n == cols.id_column else "metadata" if n in kinds else "label"
             for n in names]
    labels = [n for n, r in zip(names, roles) if r == "label"]
    if attributes is None:
        if len(labels) < min_attributes:
            raise DatasetError(f"header must be {shape}, got {cells!r}", where, 1)
        return _Header(names, roles, kinds, [Attribute(n, ()) for n in labels], inferred=True)
    _check_labels(labels, kinds, attributes, cols, where)
    return _Header(names, roles, kinds, list(attributes), inferred=False)


def _check_labels(labels: list[str], kinds: dict, attributes: Sequence[Attribute], cols: CatalogColumns, where) -> None:
    """Label and metadata columns against the checkpoint's attributes."""
    attr_names = [a.name for a in attributes]
    for name in cols.labels or ():
        if name not in attr_names:
            raise CatalogSchemaError(
                f"{where}: label column {name!r} is not an attribute of the checkpoint ({', '.join(attr_names)})"
            )
    for name in kinds:
        if name in attr_names:
            raise CatalogSchemaError(
                f"metadata column {name!r} has the name of one of the checkpoint's attributes: "
                "a column named like an attribute holds that attribute's labels; rename the metadata column"
            )
    allowed = set(cols.labels) if cols.labels is not None else set(attr_names)
    for name in labels:
        if name not in allowed:
            raise CatalogSchemaError(
                f"{where}: column {name!r} is neither an attribute of the checkpoint ({', '.join(attr_names)}) "
                f"nor declared metadata; declare it (e.g. --metadata {name}:string) or remove it"
            )


def _metadata_value(name: str, kind: str, cell: str, where: Path, line: int):
    try:
        return parse_cell(kind, cell)
    except ValueError as exc:
        raise DatasetError(f"column {name!r}: {exc}", where, line) from None


def read_catalog_table(
    csv_path: str | Path,
    attributes: Sequence[Attribute] | None = None,
    columns: CatalogColumns | None = None,
    *,
    min_attributes: int = 1,
) -> CatalogTable:
    """Read and validate a catalog CSV without splitting it, every header column given its role.

    ``attributes``: the checkpoint's (label columns are checked against them); None: every label
    column is an attribute whose values are read from the file (at least ``min_attributes`` of them).
    """
    csv_path = Path(csv_path)
    cols = columns or CatalogColumns()
    rows = _read_rows(csv_path)
    if not rows or not rows[0][1]:
        raise DatasetError(f"empty file: expected a header '{cols.path_column},<attribute>,...'", csv_path, 1)
    head = _header(rows[0][1], attributes, cols, csv_path, min_attributes)
    label_at = {a.name: i for i, a in enumerate(head.attributes)}
    values = {a.name: {v: j for j, v in enumerate(a.values)} for a in head.attributes}
    table = CatalogTable(csv_path, [], head.attributes, np.zeros((0, 0)), metadata_types=dict(head.kinds))
    cells: list[dict[str, str]] = []
    first: dict[str, int] = {}
    for line, row in rows[1:]:
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(head.names):
            raise DatasetError(
                f"expected {len(head.names)} comma-separated fields (as in the header), got {len(row)}", csv_path, line
            )
        item_id, labels = _read_row(head, [c.strip() for c in row], values, table, csv_path, line)
        item_id = cols.id_prefix + (item_id if item_id is not None else table.paths[-1])
        if item_id in first:
            what = "image" if cols.id_column is None else "item id"
            raise DatasetError(f"{what} {item_id!r} is listed twice (first on line {first[item_id]})", csv_path, line)
        first[item_id] = line
        table.ids.append(item_id)
        table.lines.append(line)
        cells.append(labels)
    if not table.paths:
        raise DatasetError("no item rows after the header", csv_path)
    if head.inferred:
        table.attributes = _inferred_attributes(head.attributes, cells, csv_path)
        values = {a.name: {v: j for j, v in enumerate(a.values)} for a in table.attributes}
    table.labels = np.full((len(cells), len(table.attributes)), UNLABELED, dtype=np.int32)
    for i, labels in enumerate(cells):
        for name, value in labels.items():
            table.labels[i, label_at[name]] = values[name][value]
    return table


def _read_row(head: _Header, row: list[str], values: dict, table: CatalogTable, where: Path, line: int):
    """Append row ``line``'s path and metadata to ``table``; its id cell (or None) and its label cells."""
    item_id, labels, metadata = None, {}, {}
    for name, role, cell in zip(head.names, head.roles, row):
        if role in ("path", "id"):
            if not cell:
                raise DatasetError(f"column {name!r}: empty {'image path' if role == 'path' else 'item id'}", where,
                                   line)
            if role == "path":
                table.paths.append(cell)
            else:
                item_id = cell
        if not cell or (role in ("path", "id") and name not in head.kinds):
            continue
        if role == "label":
            if not head.inferred and cell not in values[name]:
                known = ", ".join(sorted(values[name]))
                raise DatasetError(f"column {name!r}: {cell!r} is not a value of this attribute ({known})", where, line)
            labels[name] = cell
        else:  # metadata, or a path / id column declared metadata too (filters may name it)
            metadata[name] = _metadata_value(name, head.kinds[name], cell, where, line)
    table.metadata.append(metadata)
    return item_id, labels


def _inferred_attributes(columns: list[Attribute], cells: list[dict[str, str]], where: Path) -> list[Attribute]:
    """Each label column as an attribute whose values are its distinct cell texts, sorted."""
    out = []
    for a in columns:
        names = sorted({r[a.name] for r in cells if a.name in r})
        if not names:
            raise DatasetError(f"attribute column {a.name!r} has no annotated value", where)
        out.append(Attribute(a.name, tuple(names)))
    return out


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
    are the distinct cell texts of each column, sorted.  Paths resolve relative to the CSV's folder;
    typed metadata columns (``price:number``) are read and checked but are not attributes.
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
