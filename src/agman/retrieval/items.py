"""Catalog items: the records of ``items.jsonl``, one per row of the index, in row order.

Each line is ``{"id": str, "path": str, "labels": {attribute: value}}`` (``labels`` may be omitted);
ids are unique.  :func:`read_items` checks all of it and names the file, the line and what was
expected; nothing else escapes it (:class:`~agman.retrieval.info.CatalogIndexError`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from agman.fileio import atomic_write
from agman.retrieval.info import CatalogIndexError


@dataclass
class Item:
    """One catalog item: its id, absolute image path and known labels (attribute name -> value name)."""

    id: str
    path: str
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "path": self.path, "labels": self.labels}, ensure_ascii=False)


def parse_item(line: str) -> Item:
    """One line of ``items.jsonl`` -> :class:`Item`; ``ValueError`` saying what is wrong."""
    try:
        d = json.loads(line)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(d, dict):
        raise ValueError(f"expected an object, got {type(d).__name__}")
    item_id, path, labels = d.get("id"), d.get("path"), d.get("labels") or {}
    if not isinstance(item_id, str) or not item_id:
        raise ValueError(f"'id' must be a non-empty string, got {item_id!r:.60}")
    if not isinstance(path, str) or not path:
        raise ValueError(f"'path' must be a non-empty string, got {path!r:.60}")
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ValueError(f"'labels' must map attribute names to value names, got {labels!r:.60}")
    return Item(item_id, path, labels)


def read_items(path: Path, limit: int | None = None) -> list[Item]:
    """The items of ``items.jsonl`` (the first ``limit``); none when the file does not exist yet.
    A malformed line or an id used twice is a ``CatalogIndexError`` naming the file and the line."""
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
                item = parse_item(line)
            except ValueError as exc:  # UnicodeDecodeError and json's errors are ValueErrors
                raise CatalogIndexError(f"{path}, line {lineno}: not an item record ({exc})") from None
            if item.id in first_line:
                raise CatalogIndexError(
                    f"{path}, line {lineno}: item id {item.id!r} is already used on line {first_line[item.id]}; "
                    "ids must be unique (the file was edited or damaged: rebuild the index)"
                )
            first_line[item.id] = lineno
            items.append(item)
    return items


def write_items(path: Path, items: list[Item]) -> None:
    atomic_write(path, lambda f: f.writelines((item.to_json() + "\n").encode() for item in items))
