"""The Milvus backend: a catalog collection read as a :class:`~agman.retrieval.store.VectorStore`
and written as a :class:`~agman.retrieval.store.CatalogWriter` (layout and connection in
:mod:`agman.retrieval.backends.milvus.client`).

Searches go through :func:`agman.retrieval.ranking.rank` like the FAISS folder's: per-attribute
shortlists from Milvus (``search`` in the attribute's partition, the filter as a Milvus boolean
expression, :func:`agman.retrieval.backends.milvus.expression.to_milvus`), re-scored exactly from the stored vectors
(fetched by primary key) and grown until the threshold bound proves the top k — so a weighted
multi-attribute query is exact on Milvus ``FLAT``, and ranks (ids and scores) as on a FAISS
``flat`` folder.  Writes: an item is written attribute by attribute and counts as stored once its
last attribute is; an updated item gets a fresh row and its old row's entities are deleted after.
One process writes at a time.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from agman.errors import InvalidValueError
from agman.retrieval.backends.milvus.client import (
    FETCH_BATCH,
    INFO_KEY,
    MAX_ID_BYTES,
    MAX_TEXT_BYTES,
    MAX_TOPK,
    MILVUS_INDEX,
    ROW_KEY,
    WRITE_BATCH_BYTES,
    Connection,
    MilvusError,
    MilvusTarget,
    field_names,
    index_params,
    milvus_schema,
    search_params,
)
from agman.retrieval.backends.milvus.expression import milvus_expression, milvus_literal
from agman.retrieval.filters import Filter
from agman.retrieval.info import (
    CatalogIndexError,
    IndexConfig,
    IndexExistsError,
    IndexInfo,
    IndexNotFoundError,
)
from agman.retrieval.items import Item, resolve_path, stored_path
from agman.retrieval.query import UnknownItemError
from agman.retrieval.ranking import exact_scores
from agman.retrieval.store import Blocks, Capabilities, Rows, Selection, deletion, readded


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


class MilvusStore:
    """A catalog collection on Milvus, opened for search and writes (:meth:`open`, :meth:`create`)."""

    in_memory = False
    shortlist_limit = MAX_TOPK

    def __init__(self, conn: Connection, info: IndexInfo, config: IndexConfig, catalog: str | Path | None = None):
        from agman.retrieval.catalog import CatalogSchema

        self.conn, self.target = conn, conn.target
        self.location = self.target.where
        # the served store writes too; a Lite file's data files can be damaged on disk; a server takes
        # writes from several processes (a Lite file from one)
        self.capabilities = Capabilities(writes=True, health=self.target.lite, parallel_writes=not self.target.lite)
        self.info = info
        self.config = config
        self.catalog_root = str(Path(catalog).resolve()) if catalog is not None else info.root
        # the collection's scalar fields were laid out for the attributes it was created with; an attribute
        # added by `agman index --extend` has vectors but no label field (no item carries a label for it)
        laid_out = info.attributes[:info.pk_attributes or len(info.attributes)]
        self.fields = CatalogSchema.create(laid_out, info.metadata).fields()
        self.names = field_names(self.fields)
        self._watch = None  # a served Lite file's LiteWatch, made by the first health()
        self.unlabelled = {a.name for a in info.attributes[len(laid_out):]}
        self.n_attributes = len(info.attributes)
        self.dim = info.dim

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, target: MilvusTarget, info: IndexInfo) -> MilvusStore:
        """Create the collection ``target`` names for the index ``info`` describes (checkpoint,
        attributes, metadata schema, D, type, catalog root)."""
        if info.config.kind not in MILVUS_INDEX:
            raise InvalidValueError(f"index type {info.config.kind!r} has no Milvus counterpart")
        conn = Connection(target)
        store = cls(conn, info, info.config)
        if conn.call("check the collection", "has_collection", conn.name):
            raise IndexExistsError(
                f"Milvus at {target.uri} already has a collection {conn.name!r}: pass --add or --update to change it, "
                "or choose another --collection"
            )
        conn.call(
            "create the collection",
            "create_collection",
            conn.name,
            schema=milvus_schema(info.dim, store.fields),
            index_params=index_params(conn.client, info.config, info.dim),
            consistency_level="Strong",
            properties={INFO_KEY: info.to_json(), ROW_KEY: "0"},
        )
        for a in range(store.n_attributes):
            conn.call("create a partition", "create_partition", conn.name, _partition(a))
        conn.call("load the collection", "load_collection", conn.name)
        return store

    @classmethod
    def open(
        cls,
        target: MilvusTarget,
        *,
        catalog: str | Path | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        rerank: int | None = None,
    ) -> MilvusStore:
        """Open an agman collection (check its checkpoint with ``info.check_checkpoint``)."""
        conn = Connection(target)
        if not conn.call("check the collection", "has_collection", conn.name):
            raise IndexNotFoundError(
                f"Milvus at {target.uri} has no collection {conn.name!r}: build one with `agman index`"
            )
        raw = conn.properties().get(INFO_KEY)
        if raw is None:
            raise CatalogIndexError(f"collection {target.where} was not made by agman (no {INFO_KEY} property)")
        info = IndexInfo.parse(raw, target.where)
        config = info.config.tuned(nprobe=nprobe, ef_search=ef_search, rerank=rerank)
        store = cls(conn, info, config, catalog)
        conn.call("load the collection", "load_collection", conn.name)
        # one Strong read: what was committed before this open is visible to the cheaper reads after it
        conn.call("count items", "query", conn.name, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return store

    def reopened(self) -> MilvusStore | None:
        """None: this process's writes are visible to its next search (consistency Session or Strong); a store with the new
        description when ``agman index --extend`` committed attributes since this one was opened."""
        raw = self.conn.properties().get(INFO_KEY)
        if raw is None:
            return None
        info = IndexInfo.parse(raw, self.location)
        if info.attribute_names == self.info.attribute_names:
            return None
        return MilvusStore(self.conn, info, info.config.tuned(nprobe=self.config.nprobe, ef_search=self.config.ef_search,
                                                               rerank=self.config.rerank), self.catalog_root)

    def health(self):
        """A served Milvus Lite file's health (its data files truncated or missing on disk are
        damage: :class:`~agman.retrieval.backends.milvus.lite.LiteWatch`); None for a server."""
        if not self.target.lite:
            return None
        if self._watch is None:
            from agman.retrieval.backends.milvus.lite import LiteWatch

            self._watch = LiteWatch(self.target.uri, self.target.collection)
        return self._watch.check()

    def close(self) -> None:
        self.conn.close()

    def drop(self) -> None:
        """Delete the collection and everything in it."""
        self.conn.call("drop the collection", "drop_collection", self.conn.name)

    def __len__(self) -> int:
        """Stored items: entities / attributes (Milvus Lite counts every partition in count(*))."""
        return self._count("") // self.n_attributes

    def _count(self, expression: str) -> int:
        # only the entities of the attributes the index describes (`--extend` writes a new one's before committing)
        laid_out = self.info.pk_attributes or self.n_attributes
        known = f"pk < {(self.n_attributes - laid_out + 1) << EXTENDED_PK_SHIFT}"
        expression = f"({expression}) and {known}" if expression else known
        rows = self.conn.call("count items", "query", self.conn.name, filter=expression, output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def count_selected(self, selection: Selection) -> int:
        """How many items ``selection`` holds (a count query)."""
        return self._count(selection.expression or "") // self.n_attributes

    # ------------------------------------------------------------------ items
    def _pk(self, row: int, a: int) -> int:
        laid_out = self.info.pk_attributes or self.n_attributes
        if a < laid_out:
            return int(row) * laid_out + a
        return ((a - laid_out + 1) << EXTENDED_PK_SHIFT) + int(row)  # an attribute added by `agman index --extend`

    def _record(self, e: Mapping) -> Item:
        labels, metadata = {}, {}
        for name, (value, present) in self.names.items():
            if e.get(present):
                if self.fields[name].kind == "label":
                    labels[name] = e[value]
                else:
                    metadata[name] = e[value]
        return Item(e["item"], resolve_path(e["path"], self.catalog_root), labels, metadata)

    def _query_last(self, expression: str, fields: list[str]) -> list[dict]:
        """Entities of the last attribute's partition (written last: the items stored whole)."""
        return self.conn.call(
            "look up items", "query", self.conn.name, filter=expression, output_fields=fields,
            partition_names=[_partition(self.n_attributes - 1)],
        )

    def rows(self, limit: int | None = None) -> np.ndarray:
        """Every stored row, ascending (a scan of the collection); with ``limit`` only that many,
        the first the query iterator hands out — it walks primary keys (``row × A + attribute``)
        upwards, so the lowest rows: pages of ``Retriever.items`` are stable (tested on Milvus Lite)."""
        rows = []
        for batch in self.conn.iterate("list items", output_fields=["row"], limit=-1 if limit is None else int(limit),
                                       partition_names=[_partition(self.n_attributes - 1)]):
            rows += [e["row"] for e in batch]
        return np.sort(np.asarray(rows, dtype=np.int64))

    def items_of(self, rows: Sequence[int]) -> list[Item]:
        last = self.n_attributes - 1
        fields = ["row", "item", "path"] + [f for pair in self.names.values() for f in pair]
        found = {int(e["row"]): self._record(e) for e in self.conn.get([self._pk(r, last) for r in rows], fields)}
        missing = [int(r) for r in rows if int(r) not in found]
        if missing:
            raise UnknownItemError(f"no row {missing[0]} in {self.location}")
        return [found[int(r)] for r in rows]

    def item(self, row: int) -> Item:
        return self.items_of([row])[0]

    def row_of_id(self, item_id: str) -> int | None:
        found = self._query_last(f"item == {milvus_literal(item_id)}", ["row"])
        return max((int(e["row"]) for e in found), default=None)

    def row_of_path(self, path: str) -> int | None:
        stored = stored_path(path, self.catalog_root)
        found = self._query_last(f"path == {milvus_literal(stored)}", ["row"])
        return max((int(e["row"]) for e in found), default=None)

    def live_ids(self, ids: Iterable[str]) -> dict[str, int]:
        ids = list(dict.fromkeys(ids))
        out: dict[str, int] = {}
        for lo in range(0, len(ids), FETCH_BATCH):
            listed = ", ".join(milvus_literal(i) for i in ids[lo : lo + FETCH_BATCH])
            for e in self._query_last(f"item in [{listed}]", ["item", "row"]):
                out[e["item"]] = max(int(e["row"]), out.get(e["item"], -1))
        return out

    def searchable(self) -> int:
        return len(self)

    def known(self, ids: Iterable[str], paths: Iterable[str]) -> tuple[dict[str, tuple[int, Item]], set[str]]:
        """The stored items among ``ids`` (``{id: (row, item)}``), and which of ``paths`` (absolute)
        are the images of stored items."""
        rows = self.live_ids(ids)
        items = self.items_of(list(rows.values()))
        paths = list(dict.fromkeys(paths))
        present: set[str] = set()
        for lo in range(0, len(paths), FETCH_BATCH):
            chunk = paths[lo : lo + FETCH_BATCH]
            stored = {stored_path(p, self.info.root): p for p in chunk}
            listed = ", ".join(milvus_literal(s) for s in stored)
            present |= {stored[e["path"]] for e in self._query_last(f"path in [{listed}]", ["path"])}
        return {i: (r, it) for (i, r), it in zip(rows.items(), items)}, present

    # ------------------------------------------------------------------ search
    def select(self, flt: Filter | None = None, exclude: Iterable[int] = ()) -> Selection:
        parts = [milvus_expression(flt.expr, self.names, self.unlabelled)] if flt is not None else []
        rows = sorted({int(r) for r in exclude})
        if rows:
            parts.append(f"(not (row in [{', '.join(str(r) for r in rows)}]))")
        return Selection(None, expression=" and ".join(parts))

    def vectors(self, attribute: int, rows: np.ndarray) -> np.ndarray:
        pks = [self._pk(r, attribute) for r in rows]
        found = {int(e["pk"]): e["vector"] for e in self.conn.get(pks, ["pk", "vector"])}
        if len(found) < len(pks):
            raise MilvusError(f"items of {self.location} were deleted or rewritten during the search; search again")
        return np.asarray([found[pk] for pk in pks], dtype=np.float32).reshape(len(pks), self.dim)

    def similarities(
        self, attribute: int, query: np.ndarray, selection: Selection, exact: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        rows, sims = [], []
        for batch in self.conn.iterate("scan items", filter=selection.expression or "",
                                       output_fields=["row", "vector"], partition_names=[_partition(attribute)]):
            rows.append(np.asarray([e["row"] for e in batch], dtype=np.int64))
            sims.append(exact_scores(np.asarray([e["vector"] for e in batch], np.float32), query))
        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        s = np.concatenate(sims) if sims else np.zeros(0, np.float32)
        order = np.argsort(r, kind="stable")
        return r[order], s[order]

    def shortlist(self, attribute: int, query: np.ndarray, n: int, selection: Selection):
        res = self.conn.call(
            "search", "search", self.conn.name, data=[np.asarray(query, np.float32).tolist()], anns_field="vector",
            limit=int(n), filter=selection.expression or "", output_fields=["row"],
            partition_names=[_partition(attribute)], search_params=search_params(self.config, int(n)),
        )
        hits = list(res[0])
        rows = np.fromiter((h["entity"]["row"] for h in hits), dtype=np.int64, count=len(hits))
        sims = np.fromiter((h["distance"] for h in hits), dtype=np.float64, count=len(hits))
        return rows, sims

    # ------------------------------------------------------------------ writing
    def reserve(self, n: int) -> int:
        """Take ``n`` fresh rows (the collection's row counter moves on first)."""
        start = int(self.conn.properties().get(ROW_KEY, "0"))
        self.conn.set_properties(**{ROW_KEY: str(start + n)})
        return start

    def commit(self, items: Sequence[Item], blocks: Blocks, replaces: Rows, skipped: Sequence[int], first_row: int):
        """Write ``items`` as rows ``first_row ..`` (upserts by primary key: a rerun after a crash
        writes the same entities again), then delete the entities of the rows they replace."""
        self._check(items)
        i = 0
        for block in blocks():
            self.write_block(items, i, block, skipped, first_row)
            i += len(block)
        if i != len(items):
            raise CatalogIndexError(f"{len(items)} items to write to {self.location}, but {i} embeddings")
        self.finish(items, replaces, first_row)

    def write_block(self, items: Sequence[Item], start: int, block: np.ndarray, skipped: Iterable[int],
                    first_row: int) -> None:
        """Upsert plan positions ``start ..`` (embeddings ``block [n, A, D]``) as rows ``first_row +
        position``, but the ``skipped`` positions — the part of a commit one torchrun rank writes."""
        if not np.isfinite(block).all():
            raise InvalidValueError(f"embeddings of rows {first_row + start}.. hold NaN or infinite values")
        self._check(items[start : start + len(block)])
        skipped = set(skipped)
        per_batch = max(1, WRITE_BATCH_BYTES // (4 * self.dim + 512))
        pending: list[tuple[int, Item, np.ndarray]] = []
        for j, vectors in enumerate(block):
            if start + j not in skipped:
                pending.append((first_row + start + j, items[start + j], vectors))
            if len(pending) >= per_batch:
                self._upsert(pending)
                pending = []
        self._upsert(pending)

    def finish(self, items: Sequence[Item], replaces: Rows, first_row: int) -> None:
        """After the rows ``first_row ..`` of the planned ``items`` are written: delete the rows they
        replace, flush, and record the new row count in the collection's description."""
        self._delete_rows([r for r in replaces if r is not None])
        self.conn.call("flush", "flush", self.conn.name)
        self.info.count = max(self.info.count, first_row + len(items))
        self.info.removed = readded(self.info.removed, items)
        self.conn.set_properties(**{INFO_KEY: self.info.to_json()})

    def _check(self, items: Sequence[Item]) -> None:
        for it in items:
            if not it.id or _utf8_len(it.id) > MAX_ID_BYTES:
                raise InvalidValueError(f"item id {it.id[:80]!r}: must be 1 to {MAX_ID_BYTES} bytes of UTF-8")
            texts = [("path", stored_path(it.path, self.info.root)), *it.labels.items()]
            texts += [(k, v) for k, v in it.metadata.items() if isinstance(v, str)]
            for name, text in texts:
                if _utf8_len(text) > MAX_TEXT_BYTES:
                    raise InvalidValueError(f"item {it.id!r}: {name} is longer than {MAX_TEXT_BYTES} bytes")

    def _upsert(self, pending: list[tuple[int, Item, np.ndarray]]) -> None:
        """Every attribute's entity of each pending item, attribute by attribute (an item counts as
        stored once its last attribute is written)."""
        for a in range(self.n_attributes):
            if pending:
                entities = [self._entity(a, row, item, vectors[a]) for row, item, vectors in pending]
                self.conn.call("write items", "upsert", self.conn.name, entities, partition_name=_partition(a))

    def _entity(self, a: int, row: int, item: Item, vector: np.ndarray) -> dict:
        """Attribute ``a``'s entity of ``item``: missing values stored as "" / 0 / false, flagged unset."""
        e = {
            "pk": self._pk(row, a),
            "row": int(row),
            "item": item.id,
            "path": stored_path(item.path, self.info.root),
            "vector": np.asarray(vector, dtype=np.float32),
        }
        for name, (value, present) in self.names.items():
            kind = self.fields[name].kind
            v = item.labels.get(name) if kind == "label" else item.metadata.get(name)
            e[present] = v is not None
            e[value] = v if v is not None else {"number": 0.0, "bool": False}.get(kind, "")
        return e

    def _delete_rows(self, rows: Sequence[int]) -> None:
        pks = [self._pk(r, a) for r in rows for a in range(self.n_attributes)]
        for lo in range(0, len(pks), FETCH_BATCH):
            self.conn.call("delete items", "delete", self.conn.name, ids=pks[lo : lo + FETCH_BATCH])

    def delete(self, ids: Sequence[str]) -> int:
        """Remove items; an unknown id is an :class:`UnknownItemError` (and nothing is removed)."""
        live = deletion(self, ids, self.location)
        self.conn.set_properties(**{INFO_KEY: self.info.to_json()})
        self._delete_rows(list(live.values()))
        self.conn.call("flush", "flush", self.conn.name)
        return len(live)


EXTENDED_PK_SHIFT = 48
"""Entities of an attribute added by ``--extend`` have keys ``(k << 48) + row`` (k = 1, 2, ...), above the
``row x A + attribute`` keys of the attributes the collection was created with."""


def _partition(a: int) -> str:
    return f"a{a:02d}"

