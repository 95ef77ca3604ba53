"""Opening a Milvus collection for writing: a build (created, or checked and grown) or deletions."""
from __future__ import annotations

from pathlib import Path

from agman.retrieval.backends.milvus.client import MilvusTarget
from agman.retrieval.backends.milvus.store import MilvusStore
from agman.retrieval.info import IndexExistsError, IndexNotFoundError
from agman.retrieval.targets import check_compatible, new_info
from agman.retrieval.work import Work


def milvus_work_folder(target: MilvusTarget, work) -> Path:
    """Where a Milvus build keeps its plan and shards: ``work``, or beside the Lite file
    (``catalog.db.work``), or ``agman-work-<collection>`` in the current folder for a server."""
    if work is not None:
        return Path(work)
    if target.lite:
        return Path(target.uri + f".{target.collection}.work")
    return Path.cwd() / f"agman-work-{target.collection}"


def open_for_build(target: MilvusTarget, ckpt, dim, config, metadata, root, grow, work=None):
    """``(store, Work)`` for a build into the collection of ``target`` (see the FAISS backend's)."""
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
