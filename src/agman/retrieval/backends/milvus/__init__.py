"""The Milvus backend: a catalog as a Milvus collection, in a Milvus Lite file (``catalog.db``) or on
a server (``http://host:19530``), one entity per (item, attribute).

Modules: ``client`` (:class:`MilvusTarget`, bounded connection, the collection layout), ``store``
(:class:`MilvusStore`: reader and writer), ``expression`` (a filter as a Milvus boolean
expression), ``lite`` (Milvus Lite on a private unix socket; a served Lite file's data files
checked), ``target`` (a collection opened for a build), ``extend`` (``agman index --extend``).
"""
from __future__ import annotations

#: re-exported for the commands' options (the registry hands them on)
from agman.retrieval.backends.milvus.client import (  # noqa: F401
    CONSISTENCY_ENV,
    CONSISTENCY_LEVELS,
    DEFAULT_COLLECTION,
    DEFAULT_CONSISTENCY,
    TOKEN_ENV,
    MilvusError,
    MilvusTarget,
    is_milvus_uri,
)


class MilvusBackend:
    """:class:`~agman.retrieval.store.Backend` of Milvus collections."""

    name = "milvus"

    def claims(self, location) -> bool:
        """A ``MilvusTarget``, a URL (``http://...``) or a Milvus Lite file (``*.db``)."""
        return isinstance(location, MilvusTarget) or is_milvus_uri(location)

    def locate(self, location, *, collection: str | None = None, **connection) -> MilvusTarget:
        """``location`` as a :class:`MilvusTarget` with ``collection`` (default ``catalog``), the
        token, the consistency level and the request timeout (None: the defaults)."""
        if isinstance(location, MilvusTarget):
            return location
        given = {k: v for k, v in connection.items() if v is not None}
        return MilvusTarget(str(location), collection or DEFAULT_COLLECTION, **given)

    def open_store(self, location, *, root=None, verify: str = "sample", load: bool = False, **tuning):
        from agman.retrieval.backends.milvus.store import MilvusStore

        return MilvusStore.open(self.locate(location), catalog=root, **tuning)

    def open_writer(self, location):
        from agman.retrieval.backends.milvus.store import MilvusStore

        return MilvusStore.open(self.locate(location))

    def open_for_build(self, location, ckpt, dim, config, metadata, root, grow, work=None):
        from agman.retrieval.backends.milvus.target import open_for_build

        return open_for_build(self.locate(location), ckpt, dim, config, metadata, root, grow, work)

    def extend(self, location, checkpoint, **options):
        from agman.retrieval.backends.milvus.extend import extend_collection

        return extend_collection(self.locate(location), checkpoint, **options)

    def parallel_writes(self, location) -> bool:
        """A server takes writes from every process of a build; a Lite file from one."""
        return not self.locate(location).lite

    def unguarded_writes(self, location) -> bool:
        """A Lite file: its database server has no authentication."""
        return self.locate(location).lite


BACKEND = MilvusBackend()
