"""Catalog items: the records of ``items.jsonl``, one per row of the index, in row order.

Each line is ``{"id": str, "path": str, "labels": {attribute: value}, "metadata": {column: value}}``
(``labels`` and ``metadata`` may be omitted; metadata values are strings, numbers or bools).  An id
is unique among the searchable rows (an updated item's earlier row is deleted and keeps its id).
``path`` is relative to the index's catalog root (``index.json`` ``root``), or absolute (indexes
written before format 3), or a URI (``scheme://...``, kept as it is).  In memory an
:class:`Item`'s ``path`` is resolved: absolute, or the URI.

:func:`read_items` checks everything and names the file, the line and what was expected; nothing
else escapes it (:class:`~agman.retrieval.info.CatalogIndexError`).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agman.fileio import atomic_write
from agman.retrieval.info import CatalogIndexError

MetadataValue = str | float | bool


@dataclass
class Item:
    """One catalog item: its id, image path (resolved: absolute, or a URI), known labels (attribute
    name -> value name) and typed metadata (column -> str / float / bool; missing values absent)."""

    id: str
    path: str
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, MetadataValue] = field(default_factory=dict)

    def to_json(self, root: str | None = None) -> str:
        """The ``items.jsonl`` line, the path made relative to ``root`` when given."""
        record = {"id": self.id, "path": stored_path(self.path, root), "labels": self.labels}
        if self.metadata:
            record["metadata"] = self.metadata
        return json.dumps(record, ensure_ascii=False, allow_nan=False)


def is_uri(path: str) -> bool:
    head, sep, _ = path.partition("://")
    return bool(sep) and head.isascii() and head.isalpha() and len(head) > 1


def stored_path(path: str, root: str | None) -> str:
    """How ``path`` (absolute, or a URI) is written: relative to ``root`` (POSIX separators) when
    there is one; a URI as it is."""
    if root is None or is_uri(path):
        return path
    return Path(os.path.relpath(path, root)).as_posix()


def resolve_path(path: str, root: str | None) -> str:
    """An ``items.jsonl`` path as a usable one: joined to ``root`` when relative (normalised)."""
    if is_uri(path) or os.path.isabs(path) or root is None:
        return path
    return os.path.normpath(os.path.join(root, path))


def parse_item(line: str, root: str | None = None) -> Item:
    """One line of ``items.jsonl`` -> :class:`Item` (path resolved against ``root``); ``ValueError``
    saying what is wrong."""
    try:
        d = json.loads(line)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(d, dict):
        raise ValueError(f"expected an object, got {type(d).__name__}")
    item_id, path = d.get("id"), d.get("path")
    labels, metadata = d.get("labels") or {}, d.get("metadata") or {}
    if not isinstance(item_id, str) or not item_id:
        raise ValueError(f"'id' must be a non-empty string, got {item_id!r:.60}")
    if not isinstance(path, str) or not path:
        raise ValueError(f"'path' must be a non-empty string, got {path!r:.60}")
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ValueError(f"'labels' must map attribute names to value names, got {labels!r:.60}")
    if not isinstance(metadata, dict) or not all(_metadata_value(v) for v in metadata.values()):
        raise ValueError(f"'metadata' must map column names to strings, finite numbers or bools, got {metadata!r:.60}")
    metadata = {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in metadata.items()}
    return Item(item_id, resolve_path(path, root), labels, metadata)


def _metadata_value(v) -> bool:
    return isinstance(v, (str, bool)) or (isinstance(v, (int, float)) and math.isfinite(v))


def read_items(
    path: Path, limit: int | None = None, *, root: str | None = None, deleted: Collection[int] = ()
) -> list[Item]:
    """The items of ``items.jsonl`` (the first ``limit``), paths resolved against ``root``; none
    when the file does not exist yet.  A malformed line, or an id used twice among the rows not
    ``deleted``, is a ``CatalogIndexError`` naming the file and the line."""
    items: list[Item] = []
    if not path.is_file():
        return items
    first_line: dict[str, int] = {}
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if limit is not None and len(items) >= limit:
                break
            try:
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                item = parse_item(line, root)
            except ValueError as exc:  # UnicodeDecodeError and json's errors are ValueErrors
                raise CatalogIndexError(f"{path}, line {lineno}: not an item record ({exc})") from None
            if len(items) not in deleted:
                if item.id in first_line:
                    raise CatalogIndexError(
                        f"{path}, line {lineno}: item id {item.id!r} is already used on line {first_line[item.id]}; "
                        "ids must be unique (the file was edited or damaged: rebuild the index)"
                    )
                first_line[item.id] = lineno
            items.append(item)
    return items


def write_items(path: Path, items: Iterable[Item], root: str | None = None) -> None:
    atomic_write(path, lambda f: f.writelines((item.to_json(root) + "\n").encode() for item in items))
