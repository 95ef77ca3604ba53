"""Catalog items with typed metadata: how a CSV row becomes ``(id, path, labels, metadata)``.

A catalog CSV has a ``path`` column (image paths relative to the CSV's folder, or absolute) and
any other columns, each of which the catalog declares as one of

* an **attribute label** -- a column named after one of the checkpoint's attributes; a non-empty
  cell must be one of that attribute's value names (an unknown value is an error naming the row and
  column); every column named like an attribute is a label column unless ``labels`` lists which;
* **metadata** -- ``name: string | number | bool``, kept as a typed payload (numbers are float64
  and finite; bools are ``true/false/yes/no/1/0``; an empty cell is a missing value);
* the **id column** (``id_column``); without one an item's id is its ``path`` cell.  ``id_prefix``
  is put in front of every id (two folders with the same file names get distinct ids).  The id or
  path column may also be declared metadata: its cells are then stored as metadata as well (the
  id as written, without the prefix), so filters can name it.

A column that is none of these is an error (it used to become a "label" silently), and so is a
metadata column named like an attribute.  :class:`CatalogSchema` -- the attributes and the typed
metadata columns -- is what an index records and what filters (``agman.retrieval.filters``) are
checked against; :meth:`CatalogSchema.columns` lays items out as numpy columns for filtering.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agman.data.spec import Attribute, DatasetError
from agman.errors import InvalidValueError
from agman.retrieval.filters import Column, Field
from agman.retrieval.info import METADATA_TYPES, IndexInfo
from agman.retrieval.items import Item
from agman.retrieval.sources import ImageSet

_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")


class CatalogSchemaError(InvalidValueError):
    """The declared columns do not fit the CSV header or the checkpoint's attributes."""


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


@dataclass(frozen=True)
class CatalogSchema:
    """The attributes (label fields, from the checkpoint) and typed metadata fields of a catalog."""

    attributes: tuple[Attribute, ...]
    metadata: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        names = {a.name for a in self.attributes}
        seen: set[str] = set()
        for name, kind in self.metadata:
            if not name or name != name.strip():
                raise CatalogSchemaError(f"metadata column name {name!r} must be non-empty, without outer spaces")
            if kind not in METADATA_TYPES:
                raise CatalogSchemaError(
                    f"metadata column {name!r}: type must be one of {', '.join(METADATA_TYPES)}, got {kind!r}"
                )
            if name in names:
                raise CatalogSchemaError(
                    f"metadata column {name!r} has the name of one of the checkpoint's attributes: "
                    "a column named like an attribute holds that attribute's labels; rename the metadata column"
                )
            if name in seen:
                raise CatalogSchemaError(f"metadata column {name!r} is declared twice")
            seen.add(name)

    @classmethod
    def create(cls, attributes: Sequence[Attribute], metadata: Mapping[str, str] | None = None) -> CatalogSchema:
        return cls(tuple(attributes), tuple((metadata or {}).items()))

    @classmethod
    def of(cls, info: IndexInfo) -> CatalogSchema:
        """The schema an index records (its checkpoint's attributes and its metadata columns)."""
        return cls.create(info.attributes, info.metadata)

    @property
    def attribute_names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def fields(self) -> dict[str, Field]:
        """What filters may name: every attribute (kind ``label``) and metadata column."""
        out = {a.name: Field(a.name, "label", tuple(a.values)) for a in self.attributes}
        out.update({name: Field(name, kind) for name, kind in self.metadata})
        return out

    def check_item(self, item: Item) -> Item:
        """``item`` with its metadata in the declared types; raises naming the item and the field."""
        values = {a.name: a.values for a in self.attributes}
        for name, value in item.labels.items():
            if name not in values:
                raise InvalidValueError(f"item {item.id!r}: {name!r} is not an attribute ({', '.join(values)})")
            if value not in values[name]:
                raise InvalidValueError(
                    f"item {item.id!r}: {value!r} is not a value of attribute {name!r} ({', '.join(values[name])})"
                )
        kinds = dict(self.metadata)
        metadata = {}
        for name, value in item.metadata.items():
            if name not in kinds:
                raise InvalidValueError(f"item {item.id!r}: no metadata column {name!r} in this catalog")
            metadata[name] = _typed(kinds[name], value, f"item {item.id!r}, metadata {name!r}")
        return Item(item.id, item.path, dict(item.labels), metadata)

    def columns(self, items: Sequence[Item]) -> dict[str, Column]:
        """Every field over ``items`` as a numpy column (for :func:`agman.retrieval.filters.evaluate`)."""
        out = {}
        for name, f in self.fields().items():
            source = "labels" if f.kind == "label" else "metadata"
            out[name] = Column.build(f, [getattr(it, source).get(name) for it in items])
        return out


def _typed(kind: str, value, where: str):
    ok = (
        isinstance(value, str)
        if kind == "string"
        else isinstance(value, bool)
        if kind == "bool"
        else (isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value))
    )
    if not ok:
        raise InvalidValueError(f"{where}: expected a {'finite number' if kind == 'number' else kind}, got {value!r}")
    return float(value) if kind == "number" else value


# --------------------------------------------------------------------------- CSV
@dataclass(frozen=True)
class CatalogColumns:
    """How a catalog CSV's columns are to be read (see the module docstring)."""

    metadata: Mapping[str, str] = field(default_factory=dict)
    labels: tuple[str, ...] | None = None
    id_column: str | None = None
    id_prefix: str = ""
    path_column: str = "path"


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


def _header_roles(header: list[str], attributes: Sequence[Attribute], cols: CatalogColumns, where: Path) -> list[str]:
    """What each header column is: 'path', 'id', 'label', 'metadata'; raises for anything else."""
    attr_names = [a.name for a in attributes]
    for i, name in enumerate(header):
        if not name:
            raise DatasetError(f"column {i + 1} of the header has no name", where, 1)
        if header.index(name) != i:
            raise DatasetError(f"column {name!r} appears twice in the header", where, 1)
    labels = set(attr_names if cols.labels is None else cols.labels)
    for name in [cols.path_column, cols.id_column, *cols.metadata, *(cols.labels or ())]:
        if name is not None and name not in header:
            raise CatalogSchemaError(f"{where}: no column {name!r} in the header ({', '.join(header)})")
    for name in cols.labels or ():
        if name not in attr_names:
            raise CatalogSchemaError(
                f"{where}: label column {name!r} is not an attribute of the checkpoint ({', '.join(attr_names)})"
            )
    roles = []
    for name in header:
        if name == cols.path_column:
            roles.append("path")
        elif name == cols.id_column:
            roles.append("id")
        elif name in cols.metadata:
            roles.append("metadata")
        elif name in labels:
            roles.append("label")
        else:
            raise CatalogSchemaError(
                f"{where}: column {name!r} is neither an attribute of the checkpoint ({', '.join(attr_names)}) "
                f"nor declared metadata; declare it (e.g. --metadata {name}:string) or remove it"
            )
    return roles


def _row_item(header, roles, row, cols: CatalogColumns, values: dict[str, set], where: Path, line: int) -> Item:
    """One data row as an item; errors name the line and the column."""
    if len(row) != len(header):
        raise DatasetError(f"expected {len(header)} fields (as in the header), got {len(row)}", where, line)
    item = Item("", "")
    item_id = None
    for name, role, cell in zip(header, roles, (c.strip() for c in row)):
        if role in ("path", "id"):
            if not cell:
                what = "image path" if role == "path" else "item id"
                raise DatasetError(f"column {name!r}: empty {what}", where, line)
            if role == "path":
                item.path = cell
            else:
                item_id = cell
            if name in cols.metadata:  # declared metadata too: stored as such (filters may name it)
                _metadata_cell(item, name, cols.metadata[name], cell, where, line)
        elif not cell:
            continue
        elif role == "label":
            if cell not in values[name]:
                known = ", ".join(sorted(values[name]))
                raise DatasetError(f"column {name!r}: {cell!r} is not a value of this attribute ({known})", where, line)
            item.labels[name] = cell
        else:
            _metadata_cell(item, name, cols.metadata[name], cell, where, line)
    item.id = cols.id_prefix + (item_id if item_id is not None else item.path)
    return item


def _metadata_cell(item: Item, name: str, kind: str, cell: str, where: Path, line: int) -> None:
    try:
        item.metadata[name] = parse_cell(kind, cell)
    except ValueError as exc:
        raise DatasetError(f"column {name!r}: {exc}", where, line) from None


def read_catalog(
    csv_path: str | Path,
    attributes: Sequence[Attribute],
    columns: CatalogColumns | None = None,
    *,
    root: str | Path | None = None,
) -> Catalog:
    """Read a catalog CSV into typed items, in file order.  Errors name the file, the line and
    the column.  ``root``: the folder relative paths start from (default: the CSV's folder)."""
    csv_path = Path(csv_path)
    cols = columns or CatalogColumns()
    schema = CatalogSchema.create(attributes, cols.metadata)
    values = {a.name: set(a.values) for a in attributes}
    items: list[Item] = []
    first_line: dict[str, int] = {}
    try:
        with csv_path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, strict=True)  # an unterminated quote is an error, not the rest of the file
            try:
                header = [h.strip() for h in next(reader, [])]
                if not header:
                    raise DatasetError(f"empty file: expected a header with a {cols.path_column!r} column", csv_path, 1)
                roles = _header_roles(header, attributes, cols, csv_path)
                for row in reader:
                    if not any(c.strip() for c in row):
                        continue
                    item = _row_item(header, roles, row, cols, values, csv_path, reader.line_num)
                    if item.id in first_line:
                        raise DatasetError(
                            f"item id {item.id!r} is also on line {first_line[item.id]}: ids must be unique",
                            csv_path,
                            reader.line_num,
                        )
                    first_line[item.id] = reader.line_num
                    items.append(item)
            except csv.Error as exc:
                raise DatasetError(f"unreadable CSV: {exc}", csv_path, reader.line_num) from None
    except FileNotFoundError:
        raise DatasetError("catalog CSV not found", csv_path) from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", csv_path) from None
    if not items:
        raise DatasetError("no item rows after the header", csv_path)
    base = Path(root) if root is not None else csv_path.parent
    return Catalog(schema, items, base.resolve(), f"catalog {csv_path}")
