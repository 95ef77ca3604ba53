"""The backend registry: the one place a location (an index folder, a Milvus URI, a target object)
becomes a backend.  Everything outside ``backends/`` reaches a backend through these functions and
the protocols of :mod:`agman.retrieval.store`, never by importing a backend module.

A new backend is a folder ``backends/<name>/`` whose ``__init__`` defines a
:class:`~agman.retrieval.store.Backend` as ``BACKEND``, plus one line in :data:`BACKENDS`.
"""
from __future__ import annotations

from agman.retrieval.backends import faiss, memory, milvus
from agman.retrieval.backends.milvus import (  # noqa: F401 - the Milvus options of the commands
    CONSISTENCY_ENV,
    CONSISTENCY_LEVELS,
    DEFAULT_CONSISTENCY,
    TOKEN_ENV,
    MilvusError,
)
from agman.retrieval.store import Backend, CatalogWriter, VectorStore

BACKENDS: list[Backend] = [
    memory.BACKEND,  # memory://name (tests)
    milvus.BACKEND,  # a MilvusTarget, http://..., *.db
    faiss.BACKEND,  # any other location: an index folder
]
"""In the order they are asked: the first that claims a location gets it."""


def backend_of(location) -> Backend:
    """The backend of ``location``."""
    return next(b for b in BACKENDS if b.claims(location))


def backend_named(name: str) -> Backend:
    """The backend called ``name`` (``faiss``, ``milvus``, ``memory``)."""
    return next(b for b in BACKENDS if b.name == name)


def locate(location, *, backend: str | None = None, collection: str | None = None, **connection):
    """``location`` with a command's connection options (``collection``, ``token``,
    ``consistency``, ``request_timeout``) as the target of its backend (or of the one named)."""
    chosen = backend_of(location) if backend is None else backend_named(backend)
    return chosen.locate(location, collection=collection, **connection)


def open_store(location, *, collection: str | None = None, root=None, verify: str = "sample", load: bool = False,
               nprobe: int | None = None, ef_search: int | None = None, rerank: int | None = None) -> VectorStore:
    """The store of ``location`` for search: an index folder (its files checked at ``verify``; every
    FAISS file read now with ``load``), a Milvus URI (a ``.db`` Milvus Lite file or ``http://...``)
    with ``collection``, or a target object; ``root`` overrides the catalog root."""
    backend = backend_of(location)
    target = backend.locate(location, collection=collection)
    return backend.open_store(target, root=root, verify=verify, load=load, nprobe=nprobe, ef_search=ef_search,
                              rerank=rerank)


def open_writer(location, *, collection: str | None = None) -> CatalogWriter:
    """The writer of the existing index at ``location`` (deletions, re-indexing)."""
    backend = backend_of(location)
    return backend.open_writer(backend.locate(location, collection=collection))


def open_for_build(location, ckpt, dim: int, config, metadata: dict[str, str], root, grow: bool, work=None):
    """``(writer, Work)`` for a build into ``location`` by the checkpoint ``ckpt`` (its
    ``CheckpointInfo``): an existing index is checked (another checkpoint's is refused; a complete one
    only grows with ``grow``), a missing one is created."""
    return backend_of(location).open_for_build(location, ckpt, dim, config, metadata, root, grow, work)


def extend_index(location, checkpoint, *, batch_size: int = 32, workers: int = 0, device: str = "cpu",
                 progress: bool = False, tolerance: float = 0.0):
    """``agman index --extend``: add ``checkpoint``'s attributes that the index at ``location`` lacks
    (:mod:`agman.retrieval.extend`); ``tolerance``: the largest difference the re-embedded sample may
    show (0: bit for bit)."""
    return backend_of(location).extend(location, checkpoint, batch_size=batch_size, workers=workers, device=device,
                                       progress=progress, tolerance=tolerance)


def parallel_writes(location) -> bool:
    """Whether every process of a torchrun build may write its own shards into ``location``."""
    return backend_of(location).parallel_writes(location)


def unguarded_writes(location) -> bool:
    """Whether other processes of this user can change ``location`` without agman's token."""
    return backend_of(location).unguarded_writes(location)
