"""What every backend checks when a build, an update or a deletion opens its index: the checkpoint,
the index type and the catalog's metadata columns; and the description of a new index (each
backend's ``open_for_build`` in ``backends/<name>/`` calls these)."""
from __future__ import annotations

from pathlib import Path

from agman.retrieval.info import (
    CatalogIndexError,
    IndexConfig,
    IndexedCheckpoint,
    IndexInfo,
)


def check_compatible(info: IndexInfo, where, config: IndexConfig | None, metadata: dict[str, str]) -> None:
    """An existing index takes a build of ``config``'s type (if given) with ``metadata`` columns."""
    if config is not None and config.kind != info.config.kind:
        raise CatalogIndexError(
            f"index {where} is of type {info.config.kind!r}, not {config.kind!r}: "
            "an index type is chosen when the index is created; build into another folder to change it"
        )
    for name, kind in metadata.items():
        if name not in info.metadata:
            known = ", ".join(f"{k}:{v}" for k, v in info.metadata.items()) or "none"
            raise CatalogIndexError(
                f"index {where} has no metadata column {name!r} (its columns: {known}); the columns are "
                "fixed when an index is created: build a new index to add one"
            )
        if info.metadata[name] != kind:
            raise CatalogIndexError(f"index {where} keeps {name!r} as {info.metadata[name]}, not {kind}")


def new_info(ckpt, dim: int, config: IndexConfig | None, metadata: dict[str, str], root) -> IndexInfo:
    return IndexInfo(
        IndexedCheckpoint.of(ckpt),
        list(ckpt.attributes),
        dim,
        config or IndexConfig(),
        metadata=dict(metadata),
        root=str(Path(root).resolve()) if root is not None else None,
    )
