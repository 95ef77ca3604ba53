"""The schema of a catalog: its attributes (label fields, from the checkpoint) and typed metadata fields.

:class:`CatalogSchema` is what an index records and what filters (``agman.retrieval.filters``) are
checked against; :meth:`CatalogSchema.columns` lays items out as numpy columns for filtering.  How a
catalog CSV's columns become labels, metadata, ids and paths is :mod:`agman.data.catalog_csv`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from agman.data.catalog_csv import METADATA_TYPES, CatalogSchemaError
from agman.data.spec import Attribute
from agman.errors import InvalidValueError
from agman.retrieval.filters import Column, Field
from agman.retrieval.info import IndexInfo
from agman.retrieval.items import Item


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
