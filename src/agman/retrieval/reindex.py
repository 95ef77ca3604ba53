"""Re-indexing stored items: an item's changed labels, metadata or image file checked against the
index's schema (:func:`changed_item`), and the commit that writes re-embedded items as fresh rows
replacing their old ones (:func:`commit_reindexed`) — the one path of ``agman index --update``
(``build_index``'s commit) and of the service's ``PUT /items/{id}``."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from agman.errors import InvalidValueError
from agman.retrieval.info import IndexInfo
from agman.retrieval.items import Item
from agman.retrieval.store import Blocks, CatalogWriter, Rows


def merged(old: Mapping, change: Mapping | None, kind: str, known: Sequence[str]) -> dict:
    """``old`` with the keys ``change`` names set (``None``: removed); a key that is not one of
    ``known`` is an ``InvalidValueError`` even when it is being removed."""
    if change is None:
        return dict(old)
    unknown = [k for k in change if k not in known]
    if unknown:
        what = f"no metadata column {unknown[0]!r}" if kind == "metadata" else f"no attribute {unknown[0]!r}"
        raise InvalidValueError(f"{what} in this catalog ({', '.join(known)})")
    out = {**old, **change}
    return {k: v for k, v in out.items() if v is not None}


def changed_item(info: IndexInfo, old: Item, path: str, labels: Mapping | None, metadata: Mapping | None) -> Item:
    """``old`` with its image at ``path`` and ``labels`` / ``metadata`` merged in by key, checked
    against the index's schema (a value it cannot take names the item and the field)."""
    from agman.retrieval.catalog import CatalogSchema

    schema = CatalogSchema.of(info)
    new_labels = merged(old.labels, labels, "labels", schema.attribute_names)
    new_metadata = merged(old.metadata, metadata, "metadata", [name for name, _ in schema.metadata])
    return schema.check_item(Item(old.id, path, new_labels, new_metadata))


def commit_reindexed(writer: CatalogWriter, items: Sequence[Item], blocks: Blocks, replaces: Rows,
                     skipped: Sequence[int] = (), first_row: int | None = None) -> int:
    """Write ``items`` (embeddings from ``blocks()``) as rows ``first_row ..`` — reserved now when
    None — each replacing its row in ``replaces`` (None: a new item); returns the first row."""
    if first_row is None:
        first_row = writer.reserve(len(items))
    writer.commit(items, blocks, replaces, skipped, first_row)
    return first_row
