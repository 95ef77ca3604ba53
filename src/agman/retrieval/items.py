"""Catalog items: the records of ``items.jsonl``, one per row of the index, in row order."""
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


def read_items(path: Path, limit: int | None = None) -> list[Item]:
    """The items of ``items.jsonl`` (the first ``limit``); none when the file does not exist yet."""
    items = []
    if not path.is_file():
        return items
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if limit is not None and len(items) >= limit:
                break
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                items.append(Item(str(d["id"]), str(d["path"]), dict(d.get("labels") or {})))
            except (ValueError, KeyError, TypeError) as exc:
                raise CatalogIndexError(f"{path}, line {lineno}: not an item record ({exc})") from None
    return items


def write_items(path: Path, items: list[Item]) -> None:
    atomic_write(path, lambda f: f.writelines((item.to_json() + "\n").encode() for item in items))
