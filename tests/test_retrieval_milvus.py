"""The Milvus backend behind the same Retriever as the FAISS folder, on Milvus Lite and on a real
Milvus standalone server (``milvus-server``, the session fixture in conftest.py): the same rankings
(ids and scores) as FAISS flat, with and without filters, single- and multi-attribute; add / update /
delete round trips on both backends; checkpoint identity; catalog paging; a Milvus that does not
answer."""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from conftest import make_asen
from test_retrieval_index import tiny_checkpoint

from agman.data.layouts import open_dataset
from agman.errors import InvalidValueError, NotFoundError
from agman.retrieval.backends import open_writer
from agman.retrieval.build import build_index
from agman.retrieval.filters import FilterFieldError, FilterSyntaxError
from agman.retrieval.info import (
    CatalogIndexError,
    IndexExistsError,
    IndexMismatchError,
    IndexNotFoundError,
)
from agman.retrieval.query import QueryError, UnknownItemError
from agman.retrieval.ranking import rank
from agman.retrieval.search import Retriever
from agman.retrieval.imagesets import ImageSet, from_split

pytest.importorskip("pymilvus")

from agman.retrieval.backends.milvus.client import (  # noqa: E402
    MilvusError,
    MilvusTarget,
    MilvusUnreachableError,
)
from agman.retrieval.backends.milvus.store import MilvusStore  # noqa: E402

META = {"price": "number", "category": "string", "in_stock": "bool"}
CATEGORIES = ["dress", 'say "hi"', "it's", "back\\slash", "ünï"]


def metadata(row: int) -> dict:
    """Typed metadata for catalog row ``row``, with some values missing."""
    out = {}
    if row % 7:
        out["price"] = float((row * 37) % 100)
    if row % 5:
        out["category"] = CATEGORIES[row % len(CATEGORIES)]
    if row % 3:
        out["in_stock"] = row % 2 == 0
    return out


def catalog(spec, rows=None) -> ImageSet:
    images = from_split(spec, "test")
    rows = range(len(images.ids)) if rows is None else rows
    return ImageSet(
        [images.ids[r] for r in rows], [images.paths[r] for r in rows], [images.labels[r] for r in rows],
        metadata=[metadata(r) for r in rows], metadata_types=META, root=images.root,
    )


_names = itertools.count()


@dataclass
class Milvus:
    """Where a test's Milvus collections go: Milvus Lite files, or collections on the real server."""

    kind: str
    uri: str | None = None  # the server's
    token: str | None = None

    def target(self, folder: Path, name: str) -> MilvusTarget | str:
        """A fresh collection: ``folder/name.db`` on Lite, a uniquely named collection on the server;
        a fresh ``memory://`` catalog for the in-memory backend."""
        if self.kind == "memory":
            return f"memory://{name}-{uuid.uuid4().hex[:8]}"
        if self.kind == "lite":
            return MilvusTarget(str(folder / f"{name}.db"))
        return MilvusTarget(self.uri, f"{name}_{next(_names)}_{uuid.uuid4().hex[:8]}", token=self.token)


@pytest.fixture(scope="module", params=["lite", "server", "memory"])
def milvus_kind(request) -> Milvus:
    """The backends compared with a FAISS folder: Milvus Lite (the embedded file), a Milvus 2.3
    standalone server, and the in-memory backend (``memory://``, retrieval/backends/memory)."""
    if request.param == "memory":
        return Milvus("memory")
    if request.param == "lite":
        pytest.importorskip("milvus_lite")
        return Milvus("lite")
    return Milvus("server", request.getfixturevalue("milvus_server").uri)


@pytest.fixture(scope="module")
def built(tmp_path_factory, milvus_kind):
    """The same 120 real images with metadata, embedded by a tiny real model into a FAISS flat folder
    and a Milvus collection (FLAT) by the same builder."""
    tmp = tmp_path_factory.mktemp("backends")
    spec = open_dataset(make_asen(tmp / "ds", n_per_split=(12, 10, 120), values=(3, 2)))
    ckpt = tiny_checkpoint(tmp / "ckpt.pt", spec.attributes)
    build_index(tmp / "faiss", catalog(spec), ckpt, batch_size=16)
    target = milvus_kind.target(tmp, "catalog")
    build_index(target, catalog(spec), ckpt, batch_size=16, work=tmp / "work")
    faiss = Retriever.open(tmp / "faiss")
    milvus = Retriever.open(target)
    yield tmp, spec, ckpt, faiss, milvus, milvus_kind
    milvus.store.close()


def only_milvus(kind: Milvus) -> None:
    """Skip a test of Milvus itself (its client, its collections) on the in-memory backend."""
    if kind.kind == "memory":
        pytest.skip("a test of Milvus itself")


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    """A build into a server keeps its shards in ./agman-work-<collection>: here, not the checkout."""
    monkeypatch.chdir(tmp_path)


def assert_same(f, m):
    """Same ids, the same scores bit for bit (both re-score the same stored float32 vectors)."""
    assert m.ids == f.ids
    assert [h.score for h in m.hits] == [h.score for h in f.hits]
    assert [h.scores for h in m.hits] == [h.scores for h in f.hits]
    assert [(h.labels, h.metadata, h.path) for h in m.hits] == [(h.labels, h.metadata, h.path) for h in f.hits]
    assert m.candidates == f.candidates


FILTERS = [
    None,
    "price < 40",
    'category == "dress" or category == \'say "hi"\' or category == "back\\\\slash"',
    "not in_stock and attr0 is not null",
    "attr1 == 'attr1_v0' and price >= 10 and category != \"ünï\"",
    "price in [0, 11, 22, 33, 44] or category is null",
]
WEIGHTS = [{"attr0": 1.0}, {"attr1": 1.0}, {"attr0": 1.0, "attr1": 2.5}, {"attr0": 0.3, "attr1": 0.3}]


def test_same_rankings_as_faiss_flat_with_and_without_filters(built):
    _, _, _, faiss, milvus, _ = built
    rng = np.random.default_rng(0)
    queries = [(faiss.item_vectors(row), row) for row in (0, 17, 55, 119)]
    off = faiss.item_vectors(3) + 0.2 * rng.standard_normal((2, 32)).astype(np.float32)
    queries.append((off / np.linalg.norm(off, axis=1, keepdims=True), None))
    compared = 0
    for qi, (query, row) in enumerate(queries):
        for wi, weights in enumerate(WEIGHTS):
            for fi, flt in enumerate(FILTERS):
                k = (1, 7, 40, 200)[(qi + wi + fi) % 4]
                exclude = [row] if row is not None and fi % 2 == 0 else []
                f = faiss.search(query, weights, k, filter=flt, exclude=exclude)
                m = milvus.search(query, weights, k, filter=flt, exclude=exclude)
                assert m.exact and f.exact
                assert_same(f, m)
                assert len(f.hits) == min(k, f.candidates)  # k items whenever k pass the filter
                compared += 1
    assert compared == len(queries) * len(WEIGHTS) * len(FILTERS)


def test_item_queries_annotated_only_and_k_above_the_matching_items(built):
    _, spec, _, faiss, milvus, _ = built
    item = spec.split("test").paths[9]
    for weights in WEIGHTS:
        assert_same(faiss.search_item(item, weights, 15, annotated_only=True, exclude_self=True),
                    milvus.search_item(item, weights, 15, annotated_only=True, exclude_self=True))
    f = faiss.search_item(item, ["attr0", "attr1"], 1000, filter="price < 15")
    m = milvus.search_item(item, ["attr0", "attr1"], 1000, filter="price < 15")
    assert 0 < len(m.hits) == m.candidates < 120
    assert_same(f, m)
    assert milvus.search_item(item, "attr0", 5, filter="price > 1000").ids == []


def test_shortlists_grow_and_the_limit_falls_back_to_a_scan(built):
    """Milvus ranks through per-attribute shortlists (the threshold algorithm): started tiny they
    grow until the bound holds; past Milvus's limit an exact scan answers — the same top k."""
    _, _, _, faiss, milvus, _ = built
    store = milvus.store
    query = faiss.item_vectors(30)
    for weights in WEIGHTS:
        w = milvus.parse_attributes(weights)
        for flt in (None, "price < 70"):
            expected = faiss.search(query, w, 12, filter=flt)
            sel = store.select(milvus.compile_filter(flt))
            grown = rank(store, query, w, 12, sel, start=2)
            assert grown.rows.tolist() == [h.row for h in expected.hits] and grown.rounds > 1 and not grown.scanned
            assert grown.total.tolist() == [h.score for h in expected.hits]
            store.shortlist_limit = 4
            try:
                scanned = rank(store, query, w, 12, sel, start=2)
            finally:
                del store.shortlist_limit
            assert scanned.scanned and scanned.rows.tolist() == [h.row for h in expected.hits]


def test_round_trips_add_update_delete_on_both_backends(built, tmp_path):
    """The same changes on a FAISS folder and a Milvus collection keep their rankings equal."""
    _, spec, ckpt, _, _, kind = built
    paths = {"faiss": tmp_path / "faiss", "milvus": kind.target(tmp_path, "rt")}
    for out in paths.values():
        build_index(out, catalog(spec, range(80)), ckpt, batch_size=16)
    r = {name: Retriever.open(out) for name, out in paths.items()}
    q = r["faiss"].item_vectors(11)
    w = {"attr0": 1.0, "attr1": 2.0}

    def same(k=25, **kw):
        f, m = r["faiss"].search(q, w, k, **kw), r["milvus"].search(q, w, k, **kw)
        assert_same(f, m)
        return f

    same()
    for out in paths.values():  # add: the other 40 (the 80 are there already)
        summary = build_index(out, catalog(spec), ckpt, add=True, batch_size=16)
        assert (summary.added, summary.skipped, summary.count) == (40, 80, 120)
    r["faiss"].refresh()
    assert len(r["faiss"]) == len(r["milvus"]) == 120
    same(k=120)

    top = same(k=3).ids
    for out in paths.values():  # delete: gone from the results, the rest ranks as before
        writer = open_writer(out)
        try:
            assert writer.delete(top) == 3
            with pytest.raises(UnknownItemError, match="no item 'nope'"):
                writer.delete([spec.split("test").paths[50], "nope"])
        finally:
            writer.close()
    r["faiss"].refresh()
    assert len(r["faiss"]) == len(r["milvus"]) == 117
    after = same(k=117)
    assert not set(top) & set(after.ids)
    for name in r:
        with pytest.raises(UnknownItemError):
            r[name].search_item(top[0], "attr0")

    # update: item 50 gets another image and new metadata (a fresh row), item 60 only new metadata
    ids = spec.split("test").paths
    images = catalog(spec, [50, 60])
    images.paths[0] = catalog(spec).paths[12]  # another picture
    images.metadata[0] = {"price": 1.5, "category": "new"}
    images.metadata[1] = {"in_stock": True}
    for out in paths.values():
        summary = build_index(out, images, ckpt, update=True, batch_size=16)
        assert (summary.added, summary.updated, summary.count) == (0, 2, 117)
        with pytest.raises(UnknownItemError, match="no item 'nope'"):
            build_index(out, ImageSet(["nope"], [images.paths[0]]), ckpt, update=True)
    r["faiss"].refresh()
    got = same(k=2, filter='category == "new"')
    assert np.allclose(r["faiss"].item_vectors(120), r["faiss"].item_vectors(r["faiss"].row(ids[12])), atol=1e-5)
    assert got.ids == [ids[50]] and got.hits[0].row == 120 and got.hits[0].metadata == {"price": 1.5, "category": "new"}
    assert same(k=120, filter="in_stock and price is null and category is null").ids.count(ids[60]) == 1
    same(k=117)

    # #19.16: a delete sticks: --add of a source that still holds them leaves them out (tombstones
    # in the index's description, on both backends); include_deleted adds them back as fresh rows
    def tombstones():
        from agman.retrieval.backends.milvus.client import INFO_KEY
        from agman.retrieval.info import IndexInfo

        store = r["milvus"].store
        other = store.info if kind.kind == "memory" else IndexInfo.parse(store.conn.properties()[INFO_KEY], "milvus")
        return IndexInfo.read(paths["faiss"] / "index.json").removed, other.removed

    assert tombstones() == (sorted(top), sorted(top))
    for out in paths.values():
        summary = build_index(out, catalog(spec, [ids.index(i) for i in top]), ckpt, add=True)
        assert (summary.added, summary.deleted_skipped, summary.count) == (0, 3, 117)
    r["faiss"].refresh()
    assert len(r["faiss"]) == len(r["milvus"]) == 117
    for out in paths.values():
        summary = build_index(out, catalog(spec, [ids.index(i) for i in top]), ckpt, add=True, include_deleted=True)
        assert (summary.added, summary.deleted_skipped) == (3, 0)
    assert tombstones() == ([], [])
    r["faiss"].refresh()
    back = same(k=120)
    assert len(back.hits) == 120 and sorted(h.row for h in back.hits if h.id in top) == [122, 123, 124]
    r["milvus"].store.close()


def test_an_interrupted_milvus_commit_is_completed_by_running_it_again(built, tmp_path, monkeypatch):
    _, spec, ckpt, faiss, _, kind = built
    only_milvus(kind)
    uri = kind.target(tmp_path, "crash")
    calls = []
    real = MilvusStore._upsert

    def flaky(self, pending):
        calls.append(len(pending))
        if len(calls) == 1:
            raise MilvusError(f"Milvus at {uri.uri}: could not write items: connection reset")
        return real(self, pending)

    monkeypatch.setattr(MilvusStore, "_upsert", flaky)
    with pytest.raises(MilvusError, match="connection reset"):
        build_index(uri, catalog(spec, range(30)), ckpt, batch_size=16)
    summary = build_index(uri, catalog(spec, range(30)), ckpt, batch_size=16)
    assert summary.embedded == 0 and summary.count == 30  # the shards were kept: nothing embedded again
    m = Retriever.open(uri)
    got = m.search(faiss.item_vectors(2), ["attr0", "attr1"], 30)
    assert sorted(h.row for h in got.hits) == list(range(30))  # the rows reserved before the failure
    m.store.close()


def test_collections_of_another_checkpoint_and_foreign_ones_are_refused(built, tmp_path):
    tmp, spec, ckpt, _, milvus, kind = built
    only_milvus(kind)
    other = tiny_checkpoint(tmp_path / "other.pt", spec.attributes, seed=1)
    uri = kind.target(tmp_path, "id")
    build_index(uri, catalog(spec, range(3)), ckpt)
    with pytest.raises(IndexMismatchError, match="identity"):
        build_index(uri, catalog(spec, range(5)), other, add=True)
    with pytest.raises(IndexExistsError, match=f"already has a collection '{uri.collection}'"):
        build_index(uri, catalog(spec, range(5)), ckpt)
    r = Retriever.open(uri, checkpoint=other)
    with pytest.raises(IndexMismatchError, match="identity"):
        r.search(spec.root / spec.split("test").paths[0], "attr0")
    with pytest.raises(IndexNotFoundError, match="no collection 'other'"):
        Retriever.open(replace(uri, collection="other"))
    client = r.store.conn.client
    schema = client.create_schema(auto_id=False)
    schema.add_field("pk", __import__("pymilvus").DataType.INT64, is_primary=True)
    schema.add_field("v", __import__("pymilvus").DataType.FLOAT_VECTOR, dim=2)
    foreign = replace(uri, collection=uri.collection + "_foreign")
    client.create_collection(foreign.collection, schema=schema)
    r.store.close()
    with pytest.raises(CatalogIndexError, match="not made by agman"):
        Retriever.open(foreign)
    with pytest.raises(InvalidValueError, match="collection name"):
        Retriever.open(uri.uri, collection="no-dashes")


def test_bad_queries_are_clear_errors(built):
    _, spec, _, _, milvus, _ = built
    item = spec.split("test").paths[0]
    with pytest.raises(FilterSyntaxError, match="column 8"):
        milvus.search_item(item, "attr0", 5, filter="price <")
    with pytest.raises(FilterFieldError, match="unknown field 'colour'"):
        milvus.search_item(item, "attr0", 5, filter="colour == 'red'")
    with pytest.raises(FilterFieldError, match="'vneck' is not a value of attribute 'attr0'"):
        milvus.search_item(item, "attr0", 5, filter="attr0 == 'vneck'")
    with pytest.raises(QueryError, match="unknown attribute 'sleeve'"):
        milvus.search_item(item, "sleeve", 5)
    with pytest.raises(UnknownItemError, match="no item 'nope'"):
        milvus.search_item("nope", "attr0", 5)


def test_an_unreachable_milvus_is_an_error_naming_the_uri_within_the_timeout(tmp_path):
    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
    started = time.perf_counter()
    with pytest.raises(MilvusUnreachableError, match=f"cannot connect to Milvus at {uri}"):
        MilvusStore.open(MilvusTarget(uri, timeout=1.5))
    assert time.perf_counter() - started < 8
    silent.close()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(MilvusUnreachableError, match=f"127.0.0.1:{port}"):
        MilvusStore.open(MilvusTarget(f"http://127.0.0.1:{port}", timeout=1.5))
    with pytest.raises(NotFoundError, match="does not exist"):
        Retriever.open(str(tmp_path / "no" / "such" / "x.db"))
    with pytest.raises(InvalidValueError, match="ending in .db"):
        MilvusTarget(str(tmp_path / "catalog.sqlite"))


def test_a_lite_file_held_by_another_process_is_a_clear_error(tmp_path):
    path = tmp_path / "held.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pymilvus import MilvusClient; MilvusClient(sys.argv[1]); "
            "print('open', flush=True); time.sleep(60)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(MilvusUnreachableError, match="one process at a time"):
            Retriever.open(str(path))
    finally:
        holder.kill()
        holder.wait()


def test_catalog_pages_are_stable_and_in_row_order_on_both_backends(built):
    """`Retriever.items(start, limit)` (the service's GET /items paging): every page of either
    backend is the slice of the whole listing, so paging shows each item once, in row order."""
    _, _, _, faiss, milvus, _ = built
    for retriever in (faiss, milvus):
        listing = [it.id for it in retriever.items()]
        assert len(listing) == len(retriever)
        paged = [it.id for start in range(0, len(listing), 7) for it in retriever.items(start, 7)]
        assert paged == listing
    assert [it.id for it in milvus.items()] == [it.id for it in faiss.items()]


def listening_tcp_sockets() -> set[str]:
    """Inodes of the TCP sockets this process listens on (any address)."""
    import os

    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        listening |= {p[9] for p in (line.split() for line in lines) if p[3] == "0A"}
    own = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            own.add(link[8:-1])
    return listening & own


def test_milvus_lite_listens_on_a_private_unix_socket_not_a_tcp_port(tmp_path):
    """#19.13: opening a Milvus Lite file opens no TCP port (pymilvus's default: an unauthenticated
    127.0.0.1 port any local process could use to bypass --token); its server listens on a unix
    socket in a folder only this user can enter."""
    import os
    import stat

    from agman.retrieval.backends.milvus.lite import LOOPBACK, lite_uri

    before = listening_tcp_sockets()
    path = str(tmp_path / "private.db")
    target = MilvusTarget(path)
    conn = target.connect()
    try:
        conn.list_collections()
        assert listening_tcp_sockets() - before == set()
        uri = lite_uri(path)
        assert uri.startswith("unix:") and os.path.abspath(path) not in LOOPBACK
        folder = os.path.dirname(uri.removeprefix("unix:"))
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700 and os.stat(folder).st_uid == os.getuid()
    finally:
        conn.close()


def test_a_served_lite_file_truncated_on_disk_is_damage(built, tmp_path):
    """#19.15: a Milvus Lite data file truncated under the open store: ``health()`` names it (the
    service's /health answers 503 and searches 503), instead of ok until the next start."""
    _, spec, ckpt, _, _, kind = built
    if kind.kind != "lite":
        pytest.skip("a Milvus Lite file's own check: a server's storage is its own")
    path = str(tmp_path / "served.db")
    build_index(path, catalog(spec, range(30)), ckpt, batch_size=16)
    retriever = Retriever.open(path)
    try:
        assert retriever.store.health().ok
        data = sorted((tmp_path / "served.db" / "collections").rglob("*.parquet"), key=lambda p: -p.stat().st_size)
        assert data, "no Parquet data file written"
        data[0].write_bytes(data[0].read_bytes()[: data[0].stat().st_size // 2])
        health = retriever.store.health()
        assert not health.ok and any("truncated" in d and d.endswith(")") for d in health.damage), health
        assert all(str(tmp_path) not in d for d in health.damage)
        from fastapi.testclient import TestClient

        from agman.service.app import create_app

        with TestClient(create_app(retriever, reload_seconds=0)) as client:
            r = client.get("/health")
            assert r.status_code == 503 and r.json()["status"] == "damaged", r.text
            r = client.post("/search", json={"item": spec.split("test").paths[0], "attributes": ["attr0"]})
            assert r.status_code == 503 and "damaged" in r.json()["detail"]
    finally:
        retriever.store.close()
