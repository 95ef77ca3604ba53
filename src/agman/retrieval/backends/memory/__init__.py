"""The in-memory backend (``memory://<name>``): a catalog held in numpy arrays by this process, for
tests and experiments.  It shows what a backend is: a folder with a :class:`MemoryBackend` and one
line in the registry (:mod:`agman.retrieval.backends`)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from agman.retrieval.query import QueryError
from agman.retrieval.info import IndexExistsError, IndexNotFoundError

PREFIX = "memory://"
CATALOGS: dict = {}
"""This process's memory catalogs by name."""


class MemoryBackend:
    """:class:`~agman.retrieval.store.Backend` of ``memory://<name>`` catalogs."""

    name = "memory"

    def claims(self, location) -> bool:
        return str(location).startswith(PREFIX)

    def locate(self, location, *, collection: str | None = None, **connection):
        if collection is not None:
            raise QueryError(f"--collection names a Milvus collection; {location} is a memory catalog")
        return str(location)

    def _catalog(self, location):
        name = str(location).removeprefix(PREFIX)
        if name not in CATALOGS:
            raise IndexNotFoundError(f"no memory catalog {location} in this process: build one with build_index")
        return CATALOGS[name]

    def open_store(self, location, *, root=None, verify: str = "sample", load: bool = False, **tuning):
        return self._catalog(location).tuned(catalog_root=root, **tuning)

    def open_writer(self, location):
        return self._catalog(location)

    def open_for_build(self, location, ckpt, dim, config, metadata, root, grow, work=None):
        from agman.retrieval.backends.memory.store import MemoryStore
        from agman.retrieval.targets import check_compatible, new_info
        from agman.retrieval.work import Work

        name = str(location).removeprefix(PREFIX)
        folder = Work(Path(work) if work is not None else Path(tempfile.gettempdir()) / f"agman-memory-{name}.work")
        store = CATALOGS.get(name)
        if store is None:
            store = CATALOGS[name] = MemoryStore(name, new_info(ckpt, dim, config, metadata, root))
            return store, folder
        store.info.check_checkpoint(ckpt.identity, ckpt.path, location)
        check_compatible(store.info, location, config, metadata)
        if not folder.unfinished and not grow:
            raise IndexExistsError(f"{location} already holds a catalog: pass --add or --update to change it")
        return store, folder

    def extend(self, location, checkpoint, **options):
        raise QueryError(f"{location}: a memory catalog cannot be extended; build it again")

    def parallel_writes(self, location) -> bool:
        return False

    def unguarded_writes(self, location) -> bool:
        return False


BACKEND = MemoryBackend()
