"""Where an index is written: open (or create) the FAISS folder or the Milvus collection a build,
an update or a deletion names, checked against the checkpoint, the index type and the catalog's
metadata columns — the same checks for both backends.
"""
from __future__ import annotations

from pathlib import Path

from agman.retrieval.info import (
    CatalogIndexError,
    IndexConfig,
    IndexedCheckpoint,
    IndexExistsError,
    IndexInfo,
    IndexLayout,
    IndexNotFoundError,
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


def open_for_build(out, ckpt, dim: int, config, metadata: dict[str, str], root, grow: bool, work=None):
    """``(writer, Work)`` for a build into ``out`` by checkpoint ``ckpt`` (its ``CheckpointInfo``):
    an existing index is checked (another checkpoint's is refused; a complete one only grows with
    ``grow``), a missing one is created."""
    from agman.retrieval.build import Work
    from agman.retrieval.milvus_client import MilvusTarget, is_milvus_uri

    if isinstance(out, MilvusTarget) or is_milvus_uri(out):
        return _open_milvus(out if isinstance(out, MilvusTarget) else MilvusTarget(str(out)), ckpt, dim, config,
                            metadata, root, grow, work)
    from agman.retrieval.faiss_check import damage_message, folder_problems
    from agman.retrieval.faiss_writer import FaissWriter
    from agman.retrieval.integrity import IndexDamagedError

    layout = IndexLayout(out)
    if layout.info.is_file():
        writer = FaissWriter(layout)
        try:
            info = writer.info
            info.check_checkpoint(ckpt.identity, ckpt.path, layout.root)
            check_compatible(info, layout.root, config, metadata)
            unfinished = layout.progress.is_file()
            problems = [] if unfinished else folder_problems(layout, info, "sample")
            if problems:  # growing a damaged index would hide the damage under new rows
                raise IndexDamagedError(damage_message(layout, problems))
            if not unfinished and not grow:
                raise IndexExistsError(
                    f"{layout.root} already holds a complete index of {info.searchable} items; "
                    "pass add=True (--add) to add images, update=True (--update) to re-index them, or choose "
                    "another output folder"
                )
            if info.count and not info.files:  # written by an older agman: record its files' hashes now
                writer.record_files()
        except BaseException:
            writer.close()
            raise
        return writer, Work(layout.root)
    if layout.root.exists() and any(p.name != ".lock" for p in layout.root.iterdir()):
        raise CatalogIndexError(f"{layout.root} exists and is not an agman index: choose an empty or new folder")
    info = new_info(ckpt, dim, config, metadata, root)
    writer = FaissWriter(layout, info)
    info.write(layout.info)
    return writer, Work(layout.root)


def open_writer(out, *, collection: str | None = None):
    """The writer of an existing index (FAISS folder or Milvus collection), for deletions."""
    from agman.retrieval.milvus_client import MilvusTarget, is_milvus_uri

    if isinstance(out, MilvusTarget) or is_milvus_uri(out):
        from agman.retrieval.milvus_store import MilvusStore

        target = out if isinstance(out, MilvusTarget) else MilvusTarget(str(out), collection or "catalog")
        return MilvusStore.open(target)
    from agman.retrieval.faiss_writer import FaissWriter

    layout = IndexLayout(out)
    if not layout.info.is_file():
        IndexInfo.read(layout.info)  # the not-found error
    return FaissWriter(layout)


def milvus_work_folder(target, work) -> Path:
    """Where a Milvus build keeps its plan and shards: ``work``, or beside the Lite file
    (``catalog.db.work``), or ``agman-work-<collection>`` in the current folder for a server."""
    if work is not None:
        return Path(work)
    if target.lite:
        return Path(target.uri + f".{target.collection}.work")
    return Path.cwd() / f"agman-work-{target.collection}"


def _open_milvus(target, ckpt, dim, config, metadata, root, grow, work):
    from agman.retrieval.build import Work
    from agman.retrieval.milvus_store import MilvusStore

    folder = Work(milvus_work_folder(target, work))
    try:
        store = MilvusStore.open(target)
    except IndexNotFoundError:
        return MilvusStore.create(target, new_info(ckpt, dim, config, metadata, root)), folder
    store.info.check_checkpoint(ckpt.identity, ckpt.path, target.where)
    check_compatible(store.info, target.where, config, metadata)
    if not folder.unfinished and not grow:
        store.close()
        raise IndexExistsError(
            f"Milvus at {target.uri} already has a collection {target.collection!r}: pass --add or --update to change "
            "it, or choose another --collection"
        )
    return store, folder

