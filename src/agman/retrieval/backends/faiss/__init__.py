"""The FAISS backend: a catalog as an index folder of plain files (``index.json``, ``items.jsonl``,
one float32 vector file and, for approximate types, one FAISS file per attribute), searched in
this process.  The default: any location no other backend claims is a folder.

Modules: ``layout`` (file names), ``store`` (:class:`FaissStore`: a folder read for search),
``writer`` (commits, deletions, the folder lock), ``check`` (the files checked when opened),
``integrity`` (recorded sizes and xxh3 hashes, the verify levels), ``index`` (FAISS factory,
training, search parameters), ``target`` (a folder opened for a build), ``extend``
(``agman index --extend`` into a folder).
"""
from __future__ import annotations

from agman.retrieval.query import QueryError


class FaissBackend:
    """:class:`~agman.retrieval.store.Backend` of index folders."""

    name = "faiss"

    def claims(self, location) -> bool:
        return True

    def locate(self, location, *, collection: str | None = None, **connection):
        if collection is not None:
            raise QueryError(f"--collection names a Milvus collection; {location} is an index folder")
        return location

    def open_store(self, location, *, root=None, verify: str = "sample", load: bool = False, **tuning):
        from agman.retrieval.backends.faiss.store import FaissStore

        return FaissStore(location, catalog=root, verify=verify, load=load, **tuning)

    def open_writer(self, location):
        from agman.retrieval.backends.faiss.target import open_writer

        return open_writer(location)

    def open_for_build(self, location, ckpt, dim, config, metadata, root, grow, work=None):
        from agman.retrieval.backends.faiss.target import open_for_build

        return open_for_build(location, ckpt, dim, config, metadata, root, grow, work)

    def extend(self, location, checkpoint, **options):
        from agman.retrieval.backends.faiss.extend import extend_folder

        return extend_folder(location, checkpoint, **options)

    def parallel_writes(self, location) -> bool:
        return False

    def unguarded_writes(self, location) -> bool:
        return False


BACKEND = FaissBackend()
