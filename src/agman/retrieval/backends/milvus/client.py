"""Talking to Milvus: where a catalog collection lives (:class:`MilvusTarget`), connecting within a
bounded time, every call's failure turned into an error naming the URI, and the collection's
schema.

``uri`` is a Milvus Lite file (``catalog.db``: embedded, one process per file; pip ``milvus-lite``,
the default for tests and CI) or a server (``http://host:19530``: Milvus standalone or a
distributed cluster) — the same client code either way (``pymilvus``).

Collection layout — one collection per index, **one entity per (item, attribute)**, each
attribute's entities in their own partition (``a00``, ``a01``, ...).  Not a vector field per
attribute: Milvus allows 4 vector fields per collection by default and 10 at most
(``proxy.maxVectorFieldNum``), and FashionAI has 8 attributes.  Not a collection per attribute:
every filter field would be copied into each, and an item's update or delete would touch A
collections.  Fields::

    pk      INT64 (primary)   row * A + attribute: an entity is fetched by (row, attribute) directly
    row     INT64             the item's catalog row (ties rank by row; the same as a FAISS folder's)
    item    VARCHAR           the item id
    path    VARCHAR           the image path, relative to the catalog root
    vector  FLOAT_VECTOR [D]  the item's unit embedding of this entity's attribute (metric IP)
    fJJ     VARCHAR / DOUBLE / BOOL   field JJ of the catalog (attribute labels, then metadata)
    fJJ_set BOOL              whether the item has a value for field JJ (works on every Milvus)

The collection's properties hold the index description (``agman.info``: the
:class:`~agman.retrieval.info.IndexInfo` JSON a folder keeps in ``index.json``, so a collection
built by another checkpoint is refused the same way) and the next free row (``agman.next_row``).
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from agman.errors import InvalidValueError, NotFoundError
from agman.retrieval.info import StoreUnavailableError

DEFAULT_COLLECTION = "catalog"
INFO_KEY = "agman.info"
ROW_KEY = "agman.next_row"
MAX_ID_BYTES = 1024  # item ids (UTF-8)
MAX_TEXT_BYTES = 4096  # paths, string metadata, label values
MAX_TOPK = 16384  # Milvus's largest search limit
FETCH_BATCH = 1024  # entities per get / query / iterator batch
WRITE_BATCH_BYTES = 8 << 20  # vector bytes per upsert request
CONNECT_TIMEOUT = 10.0  # seconds to wait for Milvus to answer at all
REQUEST_TIMEOUT = 600.0  # seconds any one call may take once connected (a flush of a big batch is slow)
MILVUS_INDEX = {"flat": "FLAT", "hnsw": "HNSW", "ivf": "IVF_FLAT", "ivf-sq8": "IVF_SQ8", "ivf-pq": "IVF_PQ"}
TOKEN_ENV = "AGMAN_MILVUS_TOKEN"  # user:password (or an API key) when --milvus-token is not given
CONSISTENCY_ENV = "AGMAN_MILVUS_CONSISTENCY"
CONSISTENCY_LEVELS = ("Strong", "Session", "Bounded", "Eventually")
DEFAULT_CONSISTENCY = "Session"
READS = ("search", "query", "get")  # the calls a consistency level applies to


class MilvusError(StoreUnavailableError):
    """Milvus refused or failed an operation; the message names the URI and the operation."""


class MilvusUnreachableError(MilvusError):
    """No Milvus answered at the URI within the timeout."""


def pymilvus():
    try:
        import pymilvus as module
    except ImportError:
        raise MilvusError("the Milvus backend needs pymilvus: pip install 'agman[milvus]'") from None
    # pymilvus logs every failed call at ERROR with a traceback, and each failed reconnect to a server
    # that went away at WARNING with one; agman raises it as a MilvusError naming the URI and the
    # operation instead (one line, no traceback)
    for name in ("pymilvus.decorators", "pymilvus.client.connection_manager"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return module


def is_milvus_uri(location: str | Path) -> bool:
    """Whether ``location`` names a Milvus (a ``.db`` Milvus Lite file or a URL) rather than a folder."""
    text = str(location)
    return "://" in text or text.endswith(".db")


@dataclass(frozen=True)
class MilvusTarget:
    """A catalog collection: ``uri`` (a Milvus Lite ``.db`` file, or ``http://host:19530``), the
    collection's name, an optional token (``user:password`` or an API key; default
    ``$AGMAN_MILVUS_TOKEN``; never shown in a repr, a message or a property), the connect timeout,
    the per-request timeout and the consistency level of reads.

    Reads default to ``Session``: this process's own writes are visible to its next read (pymilvus
    keeps each collection's last write timestamp per process), and :meth:`MilvusStore.open` reads
    once at ``Strong``, so a process sees what was committed before it opened the collection.  On a
    server ``Strong`` makes every read wait for the next time tick (measured: ~250 ms a call on Milvus
    2.3 standalone against ~3 ms at ``Session``; a search makes several); choose it (or
    ``$AGMAN_MILVUS_CONSISTENCY``) when a long-running reader must see other processes' writes at once."""

    uri: str
    collection: str = DEFAULT_COLLECTION
    token: str | None = field(default=None, repr=False)
    timeout: float = CONNECT_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT
    consistency: str | None = None

    def __post_init__(self):
        if self.token is None and os.environ.get(TOKEN_ENV):
            object.__setattr__(self, "token", os.environ[TOKEN_ENV])
        if self.consistency is None:
            object.__setattr__(self, "consistency", os.environ.get(CONSISTENCY_ENV) or DEFAULT_CONSISTENCY)
        level = {c.lower(): c for c in CONSISTENCY_LEVELS}.get(self.consistency.lower())
        if level is None:
            raise InvalidValueError(
                f"Milvus consistency level {self.consistency!r}: one of {', '.join(CONSISTENCY_LEVELS)}"
            )
        object.__setattr__(self, "consistency", level)
        name = self.collection
        ok = (
            bool(name)
            and len(name) <= 255
            and (name[0].isalpha() or name[0] == "_")
            and all(c.isascii() and (c.isalnum() or c == "_") for c in name)
        )
        if not ok:
            raise InvalidValueError(
                f"collection name {name!r}: letters, digits and _ only, starting with a letter or _"
            )
        if "://" not in self.uri and not self.uri.endswith(".db"):
            raise InvalidValueError(
                f"Milvus URI {self.uri!r}: give a Milvus Lite file ending in .db, or http://host:19530"
            )

    @property
    def lite(self) -> bool:
        return "://" not in self.uri

    @property
    def where(self) -> str:
        return f"{self.uri} (collection {self.collection})"

    def connect(self):
        """A ``MilvusClient``; :class:`MilvusUnreachableError` naming the URI after at most ``timeout`` s."""
        module = pymilvus()
        uri = self.uri
        if self.lite and not Path(self.uri).resolve().parent.is_dir():
            raise NotFoundError(f"Milvus Lite file {self.uri}: folder {Path(self.uri).resolve().parent} does not exist")
        import grpc

        try:
            if self.lite:  # on a private unix socket, not an open loopback port (agman.retrieval.backends.milvus.lite)
                from agman.retrieval.backends.milvus.lite import (
                    LiteLockedError,
                    lite_uri,
                )

                try:
                    uri = lite_uri(self.uri)
                except LiteLockedError as exc:
                    raise module.MilvusException(message=str(exc)) from None
            return module.MilvusClient(uri=uri, token=self.token or "", timeout=self.timeout)
        except (module.MilvusException, grpc.RpcError) as exc:
            cause = exc if isinstance(exc, grpc.RpcError) else (exc.__cause__ or exc.__context__)
            if isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.UNAUTHENTICATED:
                given = "the credentials given were refused" if self.token else "no credentials were given"
                raise MilvusError(
                    f"Milvus at {self.uri} requires authentication and {given} ({cause.details()}): pass "
                    f"user:password with --milvus-token or ${TOKEN_ENV}"
                ) from None
            hint = ""
            if self.lite:
                hint = (
                    "; Milvus Lite opens a file in one process at a time: is another process using it? "
                    "(several processes need a Milvus server)"
                )
            raise MilvusUnreachableError(
                f"cannot connect to Milvus at {self.uri} (waited at most {self.timeout:g} s): "
                f"{getattr(exc, 'message', exc)}{hint}"
            ) from None


class Connection:
    """A connected client with every call bounded by the request timeout and its failures named."""

    def __init__(self, target: MilvusTarget):
        self.target = target
        self.client = target.connect()
        self.name = target.collection

    def call(self, what: str, method: str, *args, **kwargs):
        """``client.<method>(*args, timeout=..., **kwargs)``; a Milvus failure becomes a
        :class:`MilvusError` naming the URI and ``what`` was being done."""
        if method in READS:
            kwargs.setdefault("consistency_level", self.target.consistency)
        with self.failures(what):
            return getattr(self.client, method)(*args, timeout=self.target.request_timeout, **kwargs)

    @contextmanager
    def failures(self, what: str):
        """Milvus's refusals and gRPC's failures (a server that stopped answering raises gRPC's
        DEADLINE_EXCEEDED / UNAVAILABLE past pymilvus) become a :class:`MilvusError` naming the URI."""
        import grpc

        try:
            yield
        except pymilvus().MilvusException as exc:
            message = getattr(exc, "message", exc)
            raise MilvusError(f"Milvus at {self.target.uri}: could not {what}: {message}") from None
        except grpc.RpcError as exc:
            code = exc.code() if callable(getattr(exc, "code", None)) else None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                message = f"no answer within {self.target.request_timeout:g} s"
            else:
                details = exc.details() if callable(getattr(exc, "details", None)) else exc
                message = f"{getattr(code, 'name', 'gRPC error')}: {details}"
            raise MilvusError(f"Milvus at {self.target.uri}: could not {what}: {message}") from None

    def iterate(self, what: str, **kwargs):
        """The batches of a ``query_iterator`` over the collection (failures named as by :meth:`call`)."""
        kwargs.setdefault("consistency_level", self.target.consistency)
        with self.failures(what):
            it = self.client.query_iterator(self.name, batch_size=FETCH_BATCH, timeout=self.target.request_timeout,
                                            **kwargs)
            try:
                while batch := it.next():
                    yield batch
            finally:
                it.close()

    def properties(self) -> dict:
        return self.call("describe the collection", "describe_collection", self.name).get("properties") or {}

    def set_properties(self, **properties: str) -> None:
        self.call("write the collection's properties", "alter_collection_properties", self.name, properties=properties)

    def get(self, pks: list[int], fields: list[str]) -> list[dict]:
        out = []
        for lo in range(0, len(pks), FETCH_BATCH):
            out += self.call("fetch items", "get", self.name, ids=pks[lo : lo + FETCH_BATCH], output_fields=fields)
        return out

    def close(self) -> None:
        self.client.close()


def milvus_schema(dim: int, fields: dict) -> object:
    """The collection schema for embeddings of ``dim`` and the catalog ``fields`` (name -> filters.Field)."""
    dt = pymilvus().DataType
    s = pymilvus().MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("pk", dt.INT64, is_primary=True)
    s.add_field("row", dt.INT64)
    s.add_field("item", dt.VARCHAR, max_length=MAX_ID_BYTES)
    s.add_field("path", dt.VARCHAR, max_length=MAX_TEXT_BYTES)
    s.add_field("vector", dt.FLOAT_VECTOR, dim=dim)
    for name, (value, present) in field_names(fields).items():
        kind = fields[name].kind
        if kind in ("label", "string"):
            s.add_field(value, dt.VARCHAR, max_length=MAX_TEXT_BYTES)
        else:
            s.add_field(value, dt.DOUBLE if kind == "number" else dt.BOOL)
        s.add_field(present, dt.BOOL)
    return s


def field_names(fields: dict) -> dict[str, tuple[str, str]]:
    """Catalog field -> (Milvus value field, presence field), in the catalog's field order."""
    return {name: (f"f{j:02d}", f"f{j:02d}_set") for j, name in enumerate(fields)}


def index_params(client, config, dim: int):
    """The vector index of ``config`` (an IndexConfig) in Milvus's terms, metric IP."""
    params = client.prepare_index_params()
    extra = {
        "hnsw": {"M": config.hnsw_m, "efConstruction": config.ef_construction},
        "ivf": {"nlist": config.nlist or 1024},
        "ivf-sq8": {"nlist": config.nlist or 1024},
        "ivf-pq": {"nlist": config.nlist or 1024, "m": config.pq_m or max(1, dim // 8), "nbits": 8},
    }.get(config.kind, {})
    params.add_index(field_name="vector", index_type=MILVUS_INDEX[config.kind], metric_type="IP", params=extra)
    return params


def search_params(config, limit: int) -> dict:
    if config.kind == "hnsw":
        return {"metric_type": "IP", "params": {"ef": max(config.ef_search, limit)}}
    if config.kind.startswith("ivf"):
        return {"metric_type": "IP", "params": {"nprobe": config.nprobe}}
    return {"metric_type": "IP", "params": {}}
