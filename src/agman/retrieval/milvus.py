"""The catalog on Milvus: one collection per index, one entity per (item, attribute).

``MilvusIndex.create("catalog.db", ...)`` runs on Milvus Lite (embedded, one process per file);
the same code with ``"http://host:19530"`` talks to a Milvus standalone or distributed cluster.

Layout (docs/catalog-backends.md says why it is not one vector field per attribute: Milvus allows
4 vector fields per collection by default and 10 at most, FashionAI has 8 attributes)::

    partition aNN       the entities of attribute NN (a search targets one partition)
    pk      VARCHAR     "NN:<item id>" (primary key: fetch by key, upsert in place)
    item    VARCHAR     the item id            row   INT64   the item's catalog row (ties rank by row)
    path    VARCHAR     the image path         vector FLOAT_VECTOR [D]  its unit embedding of attribute NN
    fJJ     VARCHAR / DOUBLE / BOOL   field JJ of the catalog schema (labels, then metadata)
    fJJ_set BOOL        whether the item has a value for field JJ

The collection's properties record the checkpoint identity, the catalog schema, D and the index
type (``agman.meta``) and the next free row (``agman.next_row``); a collection built by another
checkpoint is refused like a FAISS index.  Searches are exact on ``flat`` (Milvus FLAT) through
:mod:`agman.retrieval.shortlist`: per-attribute shortlists from Milvus, re-scored exactly from the
stored vectors, grown until the threshold bound proves the top k.  Filters are translated to Milvus
boolean expressions (:func:`agman.retrieval.filters.to_milvus`).  One process writes at a time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agman.errors import AgmanError, AlreadyExistsError, InvalidValueError, NotFoundError
from agman.retrieval.catalog import CatalogItem, CatalogSchema
from agman.retrieval.filters import Expr, Filter, compile_filter, to_milvus
from agman.retrieval.info import (
    CatalogIndexError,
    IndexConfig,
    IndexedCheckpoint,
    IndexExistsError,
    IndexInfo,
    IndexNotFoundError,
)
from agman.retrieval.query import QueryError
from agman.retrieval.ranking import exact_scores
from agman.retrieval.search import UnknownItemError
from agman.retrieval.shortlist import Shortlist, top_k

FORMAT_VERSION = 1
META_KEY = "agman.meta"
ROW_KEY = "agman.next_row"
DEFAULT_COLLECTION = "catalog"
MAX_ID_BYTES = 1024  # item ids (UTF-8)
MAX_TEXT_BYTES = 4096  # paths, string metadata, label values
MAX_TOPK = 16384  # Milvus's largest search limit
FETCH_BATCH = 1024  # entities per get / query-iterator batch
WRITE_BATCH_BYTES = 8 << 20  # vector bytes per upsert request
REQUEST_TIMEOUT = 600.0  # seconds any one call may take once connected (a flush of a big batch is slow)
MILVUS_INDEX = {"flat": "FLAT", "hnsw": "HNSW", "ivf": "IVF_FLAT", "ivf-sq8": "IVF_SQ8", "ivf-pq": "IVF_PQ"}


class MilvusError(AgmanError):
    """Milvus refused or failed an operation; the message names the URI and the operation."""


class MilvusUnreachableError(MilvusError):
    """No Milvus answered at the URI within the timeout."""


def _milvus():
    try:
        import pymilvus
    except ImportError:
        raise MilvusError("the Milvus backend needs pymilvus: pip install 'agman[milvus]'") from None
    return pymilvus


def connect(uri: str, *, token: str | None = None, timeout: float = 10.0):
    """A ``MilvusClient`` for ``uri`` (a ``*.db`` file for Milvus Lite, or ``http://host:19530``);
    raises :class:`MilvusUnreachableError` naming the URI after at most ``timeout`` seconds."""
    pymilvus = _milvus()
    uri = str(uri)
    if "://" not in uri:
        if not uri.endswith(".db"):
            raise InvalidValueError(f"Milvus URI {uri!r}: give a Milvus Lite file ending in .db, or http://host:19530")
        if not Path(uri).resolve().parent.is_dir():
            raise NotFoundError(f"Milvus Lite file {uri}: folder {Path(uri).resolve().parent} does not exist")
    try:
        return pymilvus.MilvusClient(uri=uri, token=token or "", timeout=timeout)
    except pymilvus.MilvusException as exc:
        hint = ""
        if "://" not in uri:
            hint = (
                "; Milvus Lite opens a file in one process at a time: is another process using it? "
                "(several processes need a Milvus server)"
            )
        raise MilvusUnreachableError(
            f"cannot connect to Milvus at {uri} (waited at most {timeout:g} s): {getattr(exc, 'message', exc)}{hint}"
        ) from None


def _guarded(uri: str, timeout: float, what: str, fn, *args, **kwargs):
    """``fn(*args, timeout=timeout, **kwargs)``; a Milvus failure becomes a :class:`MilvusError` naming
    the URI and what was being done."""
    pymilvus = _milvus()
    try:
        return fn(*args, timeout=timeout, **kwargs)
    except pymilvus.MilvusException as exc:
        raise MilvusError(f"Milvus at {uri}: could not {what}: {getattr(exc, 'message', exc)}") from None


def _field_names(schema: CatalogSchema) -> dict[str, tuple[str, str]]:
    """Catalog field -> (Milvus value field, presence field)."""
    return {name: (f"f{j:02d}", f"f{j:02d}_set") for j, name in enumerate(schema.fields())}


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


@dataclass
class MilvusResult:
    """A ranked answer: ``per [n_attrs, n]`` exact float32 similarities, ``total`` float64 weighted
    sums, ``items`` the hits' records; ``candidates``: items the filter allows (None when only
    a full count would tell); ``rounds``: shortlist rounds; ``scanned``: ended in a full scan."""

    ids: list[str]
    rows: np.ndarray
    per: np.ndarray
    total: np.ndarray
    items: list[CatalogItem]
    weights: dict[str, float]
    exact: bool
    candidates: int | None = None
    rounds: int = 0
    scanned: bool = False
    seconds: float = 0.0


class MilvusIndex:
    """A catalog collection on Milvus: items with labels, metadata and one vector per attribute."""

    def __init__(self, client, uri: str, collection: str, meta: dict, *, timeout: float, config: IndexConfig):
        self.client = client
        self.uri = uri
        self.collection = collection
        self.meta = meta
        self.timeout = timeout  # per request, once connected
        self.config = config
        self.schema = CatalogSchema.from_dict(meta["schema"])
        self.dim = int(meta["dim"])
        self.attribute_names = self.schema.attribute_names
        self.fields = self.schema.fields()
        self.names = _field_names(self.schema)
        self.exact = config.kind == "flat"

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(
        cls,
        uri: str,
        *,
        schema: CatalogSchema,
        dim: int,
        checkpoint: Mapping,
        collection: str = DEFAULT_COLLECTION,
        config: IndexConfig | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> MilvusIndex:
        """Create the collection for a catalog embedded by ``checkpoint`` (``identity``, ``path``, ...:
        the record an index.json keeps) with ``dim``-dimensional embeddings.  ``timeout``: seconds to
        wait for Milvus to answer at all; ``request_timeout``: for any one call after that."""
        config = config or IndexConfig()
        if config.kind not in MILVUS_INDEX:
            raise InvalidValueError(f"index type {config.kind!r} has no Milvus counterpart ({', '.join(MILVUS_INDEX)})")
        if not checkpoint.get("identity"):
            raise InvalidValueError("the checkpoint record needs its identity")
        _check_collection_name(collection)
        client = connect(uri, token=token, timeout=timeout)
        meta = {
            "format_version": FORMAT_VERSION,
            "checkpoint": dict(checkpoint),
            "schema": schema.to_dict(),
            "dim": int(dim),
            "index": dataclasses.asdict(config),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self = cls(client, str(uri), collection, meta, timeout=request_timeout, config=config)
        if self._call("check the collection", client.has_collection, collection):
            raise IndexExistsError(
                f"Milvus at {uri} already has a collection {collection!r}: open it to add items, or choose another name"
            )
        pymilvus = _milvus()
        self._call(
            "create the collection",
            client.create_collection,
            collection,
            schema=self._milvus_schema(pymilvus),
            index_params=self._index_params(),
            consistency_level="Strong",
            properties={META_KEY: json.dumps(meta), ROW_KEY: "0"},
        )
        for a in range(len(self.attribute_names)):
            self._call("create a partition", client.create_partition, collection, self._partition(a))
        self._call("load the collection", client.load_collection, collection)
        return self

    @classmethod
    def open(
        cls,
        uri: str,
        *,
        collection: str = DEFAULT_COLLECTION,
        identity: str | None = None,
        checkpoint_path: str | Path | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        request_timeout: float = REQUEST_TIMEOUT,
        nprobe: int | None = None,
        ef_search: int | None = None,
        rerank: int | None = None,
    ) -> MilvusIndex:
        """Open an agman collection; with ``identity`` a collection built by another checkpoint is
        refused (:class:`~agman.retrieval.index.IndexMismatchError`)."""
        _check_collection_name(collection)
        client = connect(uri, token=token, timeout=timeout)
        if not _guarded(uri, request_timeout, "check the collection", client.has_collection, collection):
            raise IndexNotFoundError(f"Milvus at {uri} has no collection {collection!r}: build one with `agman index`")
        described = _guarded(uri, request_timeout, "describe the collection", client.describe_collection, collection)
        raw = (described.get("properties") or {}).get(META_KEY)
        if raw is None:
            raise CatalogIndexError(
                f"collection {collection!r} at {uri} was not made by agman (no {META_KEY} property)"
            )
        meta = json.loads(raw)
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise CatalogIndexError(
                f"collection {collection!r} at {uri} has format {meta['format_version']}; upgrade agman"
            )
        settings = dict(meta["index"])
        settings.update({k: v for k, v in (("nprobe", nprobe), ("ef_search", ef_search), ("rerank", rerank)) if v})
        self = cls(client, str(uri), collection, meta, timeout=request_timeout, config=IndexConfig(**settings))
        if identity is not None:
            _check_identity(meta, identity, checkpoint_path or "the checkpoint", f"{uri} (collection {collection})")
        self._call("load the collection", client.load_collection, collection)
        return self

    @property
    def identity(self) -> str:
        return self.meta["checkpoint"]["identity"]

    def close(self) -> None:
        self.client.close()

    def drop(self) -> None:
        """Delete the collection and everything in it."""
        self._call("drop the collection", self.client.drop_collection, self.collection)

    def __len__(self) -> int:
        """Stored items: entities / attributes (an unfiltered count(*) is cheap on every Milvus, and
        Milvus Lite ignores partitions in it; an add cut short counts partly until it is rerun)."""
        rows = self._call("count items", self.client.query, self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) // len(self.attribute_names)

    # ------------------------------------------------------------------ plumbing
    def _call(self, what: str, fn, *args, **kwargs):
        return _guarded(self.uri, self.timeout, what, fn, *args, **kwargs)

    @staticmethod
    def _partition(a: int) -> str:
        return f"a{a:02d}"

    @staticmethod
    def _pk(a: int, item_id: str) -> str:
        return f"{a:02d}:{item_id}"

    def _milvus_schema(self, pymilvus):
        dt = pymilvus.DataType
        s = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("pk", dt.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES + 8)
        s.add_field("item", dt.VARCHAR, max_length=MAX_ID_BYTES)
        s.add_field("row", dt.INT64)
        s.add_field("path", dt.VARCHAR, max_length=MAX_TEXT_BYTES)
        s.add_field("vector", dt.FLOAT_VECTOR, dim=self.dim)
        for name, (value, present) in self.names.items():
            kind = self.fields[name].kind
            if kind in ("label", "string"):
                s.add_field(value, dt.VARCHAR, max_length=MAX_TEXT_BYTES)
            else:
                s.add_field(value, dt.DOUBLE if kind == "number" else dt.BOOL)
            s.add_field(present, dt.BOOL)
        return s

    def _index_params(self):
        params = self.client.prepare_index_params()
        c = self.config
        extra = {
            "hnsw": {"M": c.hnsw_m, "efConstruction": c.ef_construction},
            "ivf": {"nlist": c.nlist or 1024},
            "ivf-sq8": {"nlist": c.nlist or 1024},
            "ivf-pq": {"nlist": c.nlist or 1024, "m": c.pq_m or max(1, self.dim // 8), "nbits": 8},
        }.get(c.kind, {})
        params.add_index(field_name="vector", index_type=MILVUS_INDEX[c.kind], metric_type="IP", params=extra)
        return params

    def _search_params(self, limit: int) -> dict:
        if self.config.kind == "hnsw":
            return {"metric_type": "IP", "params": {"ef": max(self.config.ef_search, limit)}}
        if self.config.kind.startswith("ivf"):
            return {"metric_type": "IP", "params": {"nprobe": self.config.nprobe}}
        return {"metric_type": "IP", "params": {}}

    # ------------------------------------------------------------------ reading items
    def _get(self, pks: Sequence[str], fields: list[str]) -> list[dict]:
        out = []
        for lo in range(0, len(pks), FETCH_BATCH):
            out += self._call(
                "fetch items",
                self.client.get,
                self.collection,
                ids=list(pks[lo : lo + FETCH_BATCH]),
                output_fields=fields,
            )
        return out

    def _present(self, ids: Iterable[str], a: int) -> dict[str, int]:
        """id -> row of the given ids stored in attribute ``a``'s partition."""
        found = self._get([self._pk(a, i) for i in dict.fromkeys(ids)], ["item", "row"])
        return {e["item"]: int(e["row"]) for e in found}

    def existing(self, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` are stored (every attribute written): an ``agman index`` run embeds
        only the others, so a rerun after an interruption continues where it stopped."""
        return set(self._present(ids, len(self.attribute_names) - 1))

    def _record(self, e: Mapping) -> CatalogItem:
        labels, metadata = {}, {}
        for name, (value, present) in self.names.items():
            if e.get(present):
                if self.fields[name].kind == "label":
                    labels[name] = e[value]
                else:
                    metadata[name] = e[value]
        return CatalogItem(e["item"], e["path"], labels, metadata)

    def get(self, ids: Sequence[str]) -> list[CatalogItem]:
        """The records of ``ids`` (in that order); an unknown id is an :class:`UnknownItemError`."""
        last = len(self.attribute_names) - 1
        fields = ["item", "path"] + [f for pair in self.names.values() for f in pair]
        found = {e["item"]: self._record(e) for e in self._get([self._pk(last, i) for i in ids], fields)}
        self._require(ids, found)
        return [found[i] for i in ids]

    def _require(self, ids: Iterable[str], found: Mapping[str, object]) -> None:
        missing = [i for i in dict.fromkeys(ids) if i not in found]
        if missing:
            shown = ", ".join(repr(i) for i in missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            raise UnknownItemError(f"no item {shown} in collection {self.collection!r} at {self.uri}")

    def item_vectors(self, item_id: str) -> np.ndarray:
        """The stored embeddings ``[A, D]`` of one item."""
        pks = [self._pk(a, item_id) for a in range(len(self.attribute_names))]
        found = {e["pk"]: e["vector"] for e in self._get(pks, ["vector"])}
        self._require([item_id], {item_id: 1} if len(found) == len(pks) else {})
        return np.asarray([found[pk] for pk in pks], dtype=np.float32)

    # ------------------------------------------------------------------ writing items
    def _check_write(self, items: Sequence[CatalogItem], vectors: np.ndarray | None) -> list[CatalogItem]:
        items = [self.schema.check_item(it) for it in items]
        seen: set[str] = set()
        for it in items:
            if not it.id or _utf8_len(it.id) > MAX_ID_BYTES:
                raise InvalidValueError(f"item id {it.id[:80]!r}: must be 1 to {MAX_ID_BYTES} bytes of UTF-8")
            if it.id in seen:
                raise InvalidValueError(f"item id {it.id!r} is given twice")
            seen.add(it.id)
            texts = [
                ("path", it.path),
                *it.labels.items(),
                *((k, v) for k, v in it.metadata.items() if isinstance(v, str)),
            ]
            for name, text in texts:
                if _utf8_len(text) > MAX_TEXT_BYTES:
                    raise InvalidValueError(f"item {it.id!r}: {name} is longer than {MAX_TEXT_BYTES} bytes")
        if vectors is not None:
            want = (len(items), len(self.attribute_names), self.dim)
            if np.shape(vectors) != want:
                raise InvalidValueError(
                    f"vectors must be [items, attributes, D] = {list(want)}, got {list(np.shape(vectors))}"
                )
            if not np.isfinite(vectors).all():
                raise InvalidValueError("vectors hold NaN or infinite values")
        return items

    def _reserve(self, n: int) -> int:
        """Take ``n`` fresh rows (the collection's row counter moves on first)."""
        props = (
            self._call("read the row counter", self.client.describe_collection, self.collection).get("properties") or {}
        )
        start = int(props.get(ROW_KEY, "0"))
        self._call(
            "move the row counter",
            self.client.alter_collection_properties,
            self.collection,
            properties={ROW_KEY: str(start + n)},
        )
        return start

    def _rows(self, ids: Sequence[str], known: Mapping[str, int]) -> list[int]:
        """The row of each id: its stored row, or a fresh one."""
        fresh = [i for i in ids if i not in known]
        start = self._reserve(len(fresh)) if fresh else 0
        row_of = dict(known) | {i: start + j for j, i in enumerate(fresh)}
        return [row_of[i] for i in ids]

    def _entity(self, a: int, item: CatalogItem, vector: np.ndarray, row: int) -> dict:
        """Attribute ``a``'s entity of ``item``: missing values stored as "" / 0 / false, flagged unset."""
        e = {
            "pk": self._pk(a, item.id),
            "item": item.id,
            "row": int(row),
            "path": item.path,
            "vector": np.asarray(vector, dtype=np.float32),
        }
        for name, (value, present) in self.names.items():
            kind = self.fields[name].kind
            v = item.labels.get(name) if kind == "label" else item.metadata.get(name)
            e[present] = v is not None
            e[value] = v if v is not None else {"number": 0.0, "bool": False}.get(kind, "")
        return e

    def _write(self, items: Sequence[CatalogItem], vectors: np.ndarray, rows: Sequence[int]) -> None:
        """Upsert every (item, attribute) entity, attribute by attribute within each batch (an item
        is complete once its last attribute is written), then flush."""
        per_batch = max(1, WRITE_BATCH_BYTES // (4 * self.dim + 512))
        for lo in range(0, len(items), per_batch):
            batch = range(lo, min(len(items), lo + per_batch))
            for a in range(len(self.attribute_names)):
                entities = [self._entity(a, items[i], vectors[i, a], rows[i]) for i in batch]
                self._call(
                    "write items", self.client.upsert, self.collection, entities, partition_name=self._partition(a)
                )
        self._call("flush", self.client.flush, self.collection)

    def add(self, items: Sequence[CatalogItem], vectors: np.ndarray) -> int:
        """Add new items (``vectors [n, A, D]``); an id already stored is an ``AlreadyExistsError``
        (use :meth:`update` / :meth:`upsert`).  Items a crashed ``add`` left half-written are
        completed with the rows they were given."""
        items = self._check_write(items, vectors)
        ids = [it.id for it in items]
        complete = self.existing(ids)
        if complete:
            shown = ", ".join(repr(i) for i in sorted(complete)[:5])
            raise AlreadyExistsError(
                f"{len(complete)} item(s) already in collection {self.collection!r}: {shown}; "
                "update or upsert them instead"
            )
        self._write(items, np.asarray(vectors), self._rows(ids, self._present(ids, 0)))
        return len(items)

    def upsert(self, items: Sequence[CatalogItem], vectors: np.ndarray) -> tuple[int, int]:
        """Add new items and replace stored ones (they keep their rows): ``(added, updated)``."""
        items = self._check_write(items, vectors)
        ids = [it.id for it in items]
        known = self._present(ids, 0)
        self._write(items, np.asarray(vectors), self._rows(ids, known))
        return len(ids) - len(known), len(known)

    def update(self, items: Sequence[CatalogItem], vectors: np.ndarray | None = None) -> int:
        """Replace stored items (labels, metadata, path; and embeddings when ``vectors`` is given,
        else the stored ones are kept).  An unknown id is an :class:`UnknownItemError`."""
        items = self._check_write(items, vectors)
        ids = [it.id for it in items]
        known = self._present(ids, len(self.attribute_names) - 1)
        self._require(ids, known)
        if vectors is None:
            vectors = np.stack([self.item_vectors(i) for i in ids]) if ids else np.zeros((0, 1, self.dim), np.float32)
        self._write(items, np.asarray(vectors), [known[i] for i in ids])
        return len(items)

    def delete(self, ids: Sequence[str]) -> int:
        """Remove items; an unknown id is an :class:`UnknownItemError` (and nothing is removed)."""
        ids = list(dict.fromkeys(ids))
        self._require(ids, self._present(ids, 0))
        pks = [self._pk(a, i) for i in ids for a in range(len(self.attribute_names))]
        for lo in range(0, len(pks), FETCH_BATCH):
            self._call("delete items", self.client.delete, self.collection, ids=pks[lo : lo + FETCH_BATCH])
        self._call("flush", self.client.flush, self.collection)
        return len(ids)

    # ------------------------------------------------------------------ search
    def expression(self, flt: str | Filter | Expr | None, exclude_ids: Sequence[str] = ()) -> str:
        """The Milvus expression for a filter (text, compiled or AST), leaving out ``exclude_ids``
        (by row: ids need no quoting)."""
        expr = compile_filter(flt, self.fields).expr if isinstance(flt, str) else getattr(flt, "expr", flt)
        parts = [to_milvus(expr, self.names)] if expr is not None else []
        rows = sorted(self._present(exclude_ids, 0).values()) if exclude_ids else []
        if rows:
            parts.append(f"(not (row in [{', '.join(str(r) for r in rows)}]))")
        return " and ".join(parts)

    def search(
        self,
        query: np.ndarray,
        weights: Mapping[str, float],
        k: int = 10,
        *,
        filter: str | Filter | Expr | None = None,
        exclude_ids: Sequence[str] = (),
        start: int | None = None,
        limit: int = MAX_TOPK,
    ) -> MilvusResult:
        """The ``k`` best items for ``query [A, D]`` by ``sum w_a <q_a, x_a>`` among those ``filter``
        allows, ``exclude_ids`` left out; ranked by score, ties by row (the Retriever's rule).
        ``start`` / ``limit``: first and largest shortlist size (tests and benchmarks)."""
        started = time.perf_counter()
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise QueryError(f"k must be a positive integer, got {k!r}")
        query = np.asarray(query, dtype=np.float32)
        if query.shape != (len(self.attribute_names), self.dim):
            raise QueryError(
                f"query embeddings must be [{len(self.attribute_names)}, {self.dim}], got {list(query.shape)}"
            )
        attrs = []
        for name, w in weights.items():
            if name not in self.attribute_names:
                raise QueryError(f"unknown attribute {name!r}; this index has: {', '.join(self.attribute_names)}")
            if not (math.isfinite(w) and w > 0):
                raise QueryError(f"weight of {name!r} must be a finite number > 0, got {w!r}")
            attrs.append((self.attribute_names.index(name), float(w)))
        exclude_ids = list(dict.fromkeys(exclude_ids))
        expr = self.expression(filter, exclude_ids)
        id_of: dict[int, str] = {}

        def shortlist(a: int, m: int) -> Shortlist:
            res = self._call(
                "search",
                self.client.search,
                self.collection,
                data=[query[a].tolist()],
                anns_field="vector",
                limit=m,
                filter=expr,
                output_fields=["row", "item"],
                partition_names=[self._partition(a)],
                search_params=self._search_params(m),
            )
            hits = list(res[0])
            rows = np.fromiter((h["entity"]["row"] for h in hits), dtype=np.int64, count=len(hits))
            id_of.update((int(h["entity"]["row"]), h["entity"]["item"]) for h in hits)
            sims = np.fromiter((h["distance"] for h in hits), dtype=np.float64, count=len(hits))
            return Shortlist(rows, sims, float(sims[-1]) if len(hits) else -math.inf, len(hits) < m)

        def scores(rows: np.ndarray) -> np.ndarray:
            pks = [self._pk(a, id_of[int(r)]) for r in rows for a, _ in attrs]
            found = {e["pk"]: e["vector"] for e in self._get(pks, ["vector"])}
            if len(found) < len(pks):
                raise MilvusError(
                    f"items of collection {self.collection!r} were deleted during the search; search again"
                )
            vecs = np.asarray([found[pk] for pk in pks], dtype=np.float32).reshape(len(rows), len(attrs), self.dim)
            return np.stack([exact_scores(vecs[:, j], query[a]) for j, (a, _) in enumerate(attrs)])

        def scan() -> tuple[np.ndarray, np.ndarray]:
            per_attr = []
            for a, _ in attrs:
                it = self.client.query_iterator(
                    self.collection,
                    batch_size=FETCH_BATCH,
                    filter=expr,
                    output_fields=["row", "item", "vector"],
                    partition_names=[self._partition(a)],
                    timeout=self.timeout,
                )
                rows, sims = [], []
                while batch := it.next():
                    for e in batch:
                        id_of[int(e["row"])] = e["item"]
                    rows.append(np.asarray([e["row"] for e in batch], dtype=np.int64))
                    sims.append(exact_scores(np.asarray([e["vector"] for e in batch], np.float32), query[a]))
                it.close()
                r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
                s = np.concatenate(sims) if sims else np.zeros(0, np.float32)
                order = np.argsort(r, kind="stable")
                per_attr.append((r[order], s[order]))
            common = per_attr[0][0]
            for r, _ in per_attr[1:]:
                common = np.intersect1d(common, r, assume_unique=True)
            per = np.stack([s[np.searchsorted(r, common)] for r, s in per_attr]) if attrs else np.zeros((0, 0))
            return common, per.astype(np.float32)

        if start is None:  # a weighted sum needs deeper shortlists before the bound holds: start 4x deeper
            start = (k + max(16, k)) * (4 if len(attrs) > 1 else 1) if self.exact else k * self.config.rerank
        found = top_k(attrs, k, shortlist, scores, scan, start=start, limit=min(limit, MAX_TOPK), exact=self.exact)
        ids = [id_of[int(r)] for r in found.rows]
        candidates = found.candidates
        if candidates is None and filter is None:
            candidates = len(self) - len(self._present(exclude_ids, len(self.attribute_names) - 1))
        items = self.get(ids) if ids else []
        return MilvusResult(
            ids,
            found.rows,
            found.per,
            found.total,
            items,
            {self.attribute_names[a]: w for a, w in attrs},
            found.exact,
            candidates,
            found.rounds,
            found.scanned,
            time.perf_counter() - started,
        )


def _check_collection_name(name: str) -> None:
    ok = (
        bool(name)
        and len(name) <= 255
        and (name[0].isalpha() or name[0] == "_")
        and all(c.isascii() and (c.isalnum() or c == "_") for c in name)
    )
    if not ok:
        raise InvalidValueError(f"collection name {name!r}: letters, digits and _ only, starting with a letter or _")


def _check_identity(meta: dict, identity: str, path, where: str) -> None:
    ck = dict(meta["checkpoint"])
    built = IndexedCheckpoint(ck["identity"], Path(ck.get("path", "?")), ck.get("model_name", "?"), 224, 1.0)
    IndexInfo(built, [], 1, IndexConfig()).check_checkpoint(identity, path, where)
