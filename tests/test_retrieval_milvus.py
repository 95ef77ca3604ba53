"""The Milvus backend on Milvus Lite: the same rankings as the FAISS flat index (ids and scores),
with and without filters, single- and multi-attribute; add / update / upsert / delete round trips;
checkpoint identity; a Milvus that does not answer."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import make_asen
from test_retrieval_index import tiny_checkpoint

from agman.data.layouts import open_dataset
from agman.errors import AlreadyExistsError, InvalidValueError, NotFoundError
from agman.retrieval.catalog import CatalogItem, CatalogSchema
from agman.retrieval.filters import FilterFieldError, FilterSyntaxError, annotated, compile_filter
from agman.retrieval.build import build_index
from agman.retrieval.info import (
    CatalogIndexError,
    IndexConfig,
    IndexExistsError,
    IndexMismatchError,
    IndexNotFoundError,
)
from agman.retrieval.search import QueryError, Retriever, UnknownItemError
from agman.retrieval.sources import from_split

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from agman.retrieval.milvus import MilvusError, MilvusIndex, MilvusUnreachableError  # noqa: E402

def CHECKPOINT(r):
    ck = r.info.checkpoint
    return {"identity": ck.identity, "path": str(ck.path), "model_name": ck.model_name}


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


@pytest.fixture(scope="module")
def faiss_flat(tmp_path_factory):
    """A FAISS flat index built by today's code over 120 real images with a tiny real model."""
    tmp = tmp_path_factory.mktemp("faiss")
    spec = open_dataset(make_asen(tmp / "ds", n_per_split=(12, 10, 120), values=(3, 2)))
    ckpt = tiny_checkpoint(tmp / "ckpt.pt", spec.attributes)
    build_index(tmp / "index", from_split(spec, "test"), ckpt, config=IndexConfig("flat"), batch_size=16)
    r = Retriever.open(tmp / "index")
    schema = CatalogSchema.create(spec.attributes, META)
    items = [CatalogItem(it.id, it.path, dict(it.labels), metadata(i)) for i, it in enumerate(r.store.items)]
    vectors = np.stack([r.item_vectors(i) for i in range(len(r))])
    return r, schema, items, vectors


def new_collection(tmp_path, faiss_flat, name="catalog") -> MilvusIndex:
    r, schema, items, vectors = faiss_flat
    idx = MilvusIndex.create(
        str(tmp_path / "catalog.db"),
        schema=schema,
        dim=vectors.shape[2],
        checkpoint=CHECKPOINT(r),
        collection=name,
    )
    idx.add(items, vectors)
    return idx


@pytest.fixture(scope="module")
def milvus(tmp_path_factory, faiss_flat):
    idx = new_collection(tmp_path_factory.mktemp("milvus"), faiss_flat)
    yield idx
    idx.close()


def faiss_answer(r: Retriever, schema, items, query, weights, k, flt=None, exclude=(), annotated_only=False):
    """Today's exact search with the filter applied as excluded rows."""
    excluded = set(exclude)
    if flt is not None:
        mask = compile_filter(flt, schema.fields()).mask(schema.columns(items), len(items))
        excluded |= set(np.flatnonzero(~mask).tolist())
    return r.search(query, weights, k, exclude=excluded, annotated_only=annotated_only)


def assert_same(faiss_res, milvus_res):
    assert milvus_res.ids == faiss_res.ids
    f_scores = np.array([h.score for h in faiss_res.hits])
    assert np.abs(milvus_res.total - f_scores).max(initial=0) <= 1e-5
    assert np.array_equal(milvus_res.total, f_scores)  # in fact bit-identical: the same exact re-scoring
    for j, name in enumerate(milvus_res.weights):
        assert np.array_equal(milvus_res.per[j], np.array([h.scores[name] for h in faiss_res.hits], np.float32))
    assert [it.labels for it in milvus_res.items] == [h.labels for h in faiss_res.hits]


FILTERS = [
    None,
    "price < 40",
    'category == "dress" or category == \'say "hi"\' or category == "back\\\\slash"',
    "not in_stock and attr0 is not null",
    "attr1 == 'attr1_v0' and price >= 10 and category != \"ünï\"",
    "price in [0, 11, 22, 33, 44] or category is null",
]
WEIGHTS = [{"attr0": 1.0}, {"attr1": 1.0}, {"attr0": 1.0, "attr1": 2.5}, {"attr0": 0.3, "attr1": 0.3}]


def test_same_rankings_as_faiss_flat_with_and_without_filters(faiss_flat, milvus):
    r, schema, items, vectors = faiss_flat
    rng = np.random.default_rng(0)
    queries = [(vectors[row], row) for row in (0, 17, 55, 119)]
    off = vectors[3] + 0.2 * rng.standard_normal(vectors[3].shape).astype(np.float32)
    queries.append((off / np.linalg.norm(off, axis=1, keepdims=True), None))
    compared = 0
    for qi, (query, row) in enumerate(queries):
        for wi, weights in enumerate(WEIGHTS):
            for fi, flt in enumerate(FILTERS):
                k = (1, 7, 40, 200)[(qi + wi + fi) % 4]
                exclude = [row] if row is not None and fi % 2 == 0 else []
                f = faiss_answer(r, schema, items, query, weights, k, flt, exclude)
                m = milvus.search(query, weights, k, filter=flt, exclude_ids=[items[x].id for x in exclude])
                assert m.exact
                assert_same(f, m)
                if m.candidates is not None:
                    assert m.candidates == f.candidates
                compared += 1
    assert compared == len(queries) * len(WEIGHTS) * len(FILTERS)


def test_annotated_only_is_the_annotated_filter(faiss_flat, milvus):
    r, schema, items, vectors = faiss_flat
    for weights in WEIGHTS:
        f = r.search(vectors[9], weights, 15, annotated_only=True)
        m = milvus.search(vectors[9], weights, 15, filter=annotated(list(weights)))
        assert len(m.ids) == 15
        assert_same(f, m)


def test_small_shortlists_grow_and_the_limit_falls_back_to_a_scan(faiss_flat, milvus):
    r, schema, items, vectors = faiss_flat
    for weights in WEIGHTS:
        for flt in (None, "price < 70"):
            f = faiss_answer(r, schema, items, vectors[30], weights, 12, flt)
            grown = milvus.search(vectors[30], weights, 12, filter=flt, start=2)
            assert_same(f, grown)
            assert grown.rounds > 1 and not grown.scanned
            scanned = milvus.search(vectors[30], weights, 12, filter=flt, start=2, limit=4)
            assert_same(f, scanned)
            assert scanned.scanned and scanned.candidates == f.candidates


def test_k_above_the_matching_items_returns_them_all(faiss_flat, milvus):
    r, schema, items, vectors = faiss_flat
    f = faiss_answer(r, schema, items, vectors[4], {"attr0": 1.0, "attr1": 1.0}, 1000, "price < 15")
    m = milvus.search(vectors[4], {"attr0": 1.0, "attr1": 1.0}, 1000, filter="price < 15")
    assert 0 < len(m.ids) == f.candidates == m.candidates < 120
    assert_same(f, m)
    assert milvus.search(vectors[4], {"attr0": 1.0}, 5, filter="price > 1000").ids == []


def test_round_trips_add_update_upsert_delete(tmp_path, faiss_flat):
    r, schema, items, vectors = faiss_flat
    idx = MilvusIndex.create(
        str(tmp_path / "rt.db"), schema=schema, dim=vectors.shape[2], checkpoint=CHECKPOINT(r)
    )
    assert idx.add(items[:80], vectors[:80]) == 80 and len(idx) == 80
    assert idx.add(items[80:], vectors[80:]) == 40 and len(idx) == 120
    assert idx.existing([items[0].id, "nope", items[119].id]) == {items[0].id, items[119].id}
    with pytest.raises(AlreadyExistsError, match="already in collection"):
        idx.add(items[5:6], vectors[5:6])
    q = vectors[11]
    w = {"attr0": 1.0, "attr1": 2.0}
    assert_same(r.search(q, w, 10), idx.search(q, w, 10))

    # delete: gone from the results, the rest ranks as FAISS does without those rows
    top = idx.search(q, w, 3).ids
    assert idx.delete(top) == 3 and len(idx) == 117
    rows = [r.row(i) for i in top]
    assert_same(r.search(q, w, 10, exclude=rows), idx.search(q, w, 10))
    with pytest.raises(UnknownItemError, match=repr(top[0])):
        idx.get([top[0]])
    with pytest.raises(UnknownItemError, match="no item 'nope'"):
        idx.delete([items[50].id, "nope"])
    assert len(idx) == 117 and idx.get([items[50].id])[0].id == items[50].id  # nothing was removed

    # update: new embeddings and metadata (kept row), or metadata alone (kept embeddings)
    changed = CatalogItem(items[50].id, "moved.png", {"attr0": "attr0_v2"}, {"price": 1.5, "category": "new"})
    assert idx.update([changed], vectors[11:12]) == 1
    got = idx.search(q, w, 1)
    assert got.ids == [items[50].id] and got.items[0].metadata == {"price": 1.5, "category": "new"}
    assert got.items[0].path == "moved.png" and got.rows[0] == 50
    keep = CatalogItem(items[60].id, items[60].path, {}, {"in_stock": True})
    idx.update([keep])
    assert np.array_equal(idx.item_vectors(items[60].id), vectors[60])
    assert idx.get([items[60].id])[0].metadata == {"in_stock": True}
    found = idx.search(q, w, 120, filter="in_stock and price is null and category is null")
    assert items[60].id in found.ids
    assert all(it.metadata == {"in_stock": True} for it in found.items)
    with pytest.raises(UnknownItemError):
        idx.update([CatalogItem("nope", "x.png")], vectors[:1])

    # upsert: deleted items come back with fresh rows, stored ones are replaced in place
    back = [items[r.row(i)] for i in top]
    back_vectors = np.stack([vectors[r.row(i)] for i in top])
    assert idx.upsert(back + [items[50]], np.concatenate([back_vectors, vectors[50:51]])) == (3, 1)
    assert len(idx) == 120
    restored = idx.search(q, w, 3)
    assert restored.ids == top and sorted(restored.rows.tolist()) == [120, 121, 122]
    assert_same(r.search(q, w, 25), idx.search(q, w, 25))  # everything as built again
    idx.drop()


def test_an_interrupted_add_is_completed_by_running_it_again(tmp_path, faiss_flat, monkeypatch):
    r, schema, items, vectors = faiss_flat
    idx = MilvusIndex.create(
        str(tmp_path / "crash.db"), schema=schema, dim=vectors.shape[2], checkpoint=CHECKPOINT(r)
    )
    real_upsert = idx.client.upsert
    calls = []

    def flaky(*args, **kwargs):
        calls.append(kwargs.get("partition_name"))
        if len(calls) == 2:  # the first attribute is written, the second fails
            raise __import__("pymilvus").MilvusException(message="connection reset")
        return real_upsert(*args, **kwargs)

    monkeypatch.setattr(idx.client, "upsert", flaky)
    with pytest.raises(MilvusError, match="could not write items: connection reset"):
        idx.add(items[:30], vectors[:30])
    monkeypatch.setattr(idx.client, "upsert", real_upsert)
    assert idx.existing(it.id for it in items[:30]) == set()  # half-written items do not count
    assert idx.add(items[:30], vectors[:30]) == 30
    assert len(idx) == 30
    got = idx.search(vectors[2], {"attr0": 1.0, "attr1": 1.0}, 30)
    assert sorted(got.rows.tolist()) == list(range(30))  # the rows given before the failure are kept
    idx.drop()


def test_collections_of_another_checkpoint_are_refused(tmp_path, faiss_flat):
    r, schema, items, vectors = faiss_flat
    uri = str(tmp_path / "id.db")
    idx = MilvusIndex.create(uri, schema=schema, dim=vectors.shape[2], checkpoint=CHECKPOINT(r))
    idx.add(items[:3], vectors[:3])
    same = MilvusIndex.open(uri, identity=r.info.checkpoint.identity)
    assert len(same) == 3 and same.schema == schema and same.dim == vectors.shape[2]
    with pytest.raises(IndexMismatchError, match="identity"):
        MilvusIndex.open(uri, identity="0" * 16, checkpoint_path="other.pt")
    with pytest.raises(IndexNotFoundError, match="no collection 'other'"):
        MilvusIndex.open(uri, collection="other")
    with pytest.raises(IndexExistsError, match="already has a collection 'catalog'"):
        MilvusIndex.create(uri, schema=schema, dim=vectors.shape[2], checkpoint=CHECKPOINT(r))
    plain = idx.client
    schema_ = plain.create_schema(auto_id=False)
    schema_.add_field("pk", __import__("pymilvus").DataType.INT64, is_primary=True)
    schema_.add_field("v", __import__("pymilvus").DataType.FLOAT_VECTOR, dim=2)
    plain.create_collection("foreign", schema=schema_)
    with pytest.raises(CatalogIndexError, match="not made by agman"):
        MilvusIndex.open(uri, collection="foreign")
    with pytest.raises(InvalidValueError, match="collection name"):
        MilvusIndex.open(uri, collection="no-dashes")


def test_bad_queries_and_writes_are_clear_errors(faiss_flat, milvus):
    r, schema, items, vectors = faiss_flat
    with pytest.raises(FilterSyntaxError, match="column 8"):
        milvus.search(vectors[0], {"attr0": 1.0}, 5, filter="price <")
    with pytest.raises(FilterFieldError, match="unknown field 'colour'"):
        milvus.search(vectors[0], {"attr0": 1.0}, 5, filter="colour == 'red'")
    with pytest.raises(QueryError, match="unknown attribute 'sleeve'"):
        milvus.search(vectors[0], {"sleeve": 1.0}, 5)
    with pytest.raises(QueryError, match="k must be a positive integer"):
        milvus.search(vectors[0], {"attr0": 1.0}, 0)
    with pytest.raises(QueryError, match="query embeddings must be"):
        milvus.search(vectors[0][:1], {"attr0": 1.0}, 5)
    with pytest.raises(InvalidValueError, match="vectors must be"):
        milvus.add([CatalogItem("new", "n.png")], vectors[0])
    with pytest.raises(InvalidValueError, match="not a value of attribute 'attr0'"):
        milvus.add([CatalogItem("new", "n.png", {"attr0": "nope"})], vectors[:1])
    with pytest.raises(InvalidValueError, match="must be 1 to 1024 bytes"):
        milvus.add([CatalogItem("x" * 1025, "n.png")], vectors[:1])
    with pytest.raises(InvalidValueError, match="NaN"):
        milvus.add([CatalogItem("new", "n.png")], np.full((1,) + vectors.shape[1:], np.nan, np.float32))
    assert len(milvus) == 120


def test_an_unreachable_milvus_is_an_error_naming_the_uri_within_the_timeout(tmp_path):
    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
    started = time.perf_counter()
    with pytest.raises(MilvusUnreachableError, match=f"cannot connect to Milvus at {uri}"):
        MilvusIndex.open(uri, timeout=1.5)
    assert time.perf_counter() - started < 8
    silent.close()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(MilvusUnreachableError, match=f"127.0.0.1:{port}"):
        MilvusIndex.open(f"http://127.0.0.1:{port}", timeout=1.5)
    with pytest.raises(NotFoundError, match="does not exist"):
        MilvusIndex.open(str(tmp_path / "no" / "such" / "x.db"))
    with pytest.raises(InvalidValueError, match="ending in .db"):
        MilvusIndex.open(str(tmp_path / "catalog.sqlite"))


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
            MilvusIndex.open(str(path))
    finally:
        holder.kill()
        holder.wait()
