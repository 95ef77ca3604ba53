"""The service over a catalog that changes: filters in POST /search (400 naming the position), the
index reloaded while searches run, DELETE / PUT /items/{id} (404 for unknown ids, 403 when
read-only), uploads embedded in dynamic batches — on a FAISS folder and on Milvus Lite."""
from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from test_retrieval_milvus import catalog
from test_service_api import LiveServer, service_index

from agman.retrieval.build import build_index
from agman.retrieval.search import Retriever
from agman.service.app import ServiceLimits, create_app
from agman.service.batcher import EmbedBatcher


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """(tmp, spec, checkpoint): 40 images with metadata in a FAISS folder (first 30) and Milvus Lite (all)."""
    tmp = tmp_path_factory.mktemp("svc")
    spec, ckpt, _ = service_index(tmp, n_test=40)
    build_index(tmp / "idx", catalog(spec, range(30)), ckpt, batch_size=8)
    build_index(str(tmp / "c.db"), catalog(spec), ckpt, batch_size=8)
    return tmp, spec, ckpt


def upload(url, data: bytes, **fields):
    return httpx.post(f"{url}/search", files={"image": ("q.png", data, "image/png")}, data=fields, timeout=60)


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_filters_in_the_search_form(shop, backend):
    tmp, spec, _ = shop
    index = tmp / "idx" if backend == "faiss" else str(tmp / "c.db")
    item = spec.split("test").paths[4]
    app = create_app(Retriever.open(index, load_model=True), reload_seconds=0)
    with LiveServer(app) as srv:
        info = httpx.get(f"{srv.url}/info").json()
        assert info["items"] == (30 if backend == "faiss" else 40) and len(info["examples"]) == 12
        r = httpx.post(f"{srv.url}/search", data={"item": item, "attributes": "attr0", "k": "30",
                                                   "filter": "price < 50 and category is not null"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["filter"] == "price < 50 and category is not null" and 0 < len(body["results"]) < 30
        assert all(h["metadata"]["price"] < 50 and "category" in h["metadata"] for h in body["results"])
        r = upload(srv.url, png(1), attributes="attr0,attr1:2", k="5", filter="in_stock")
        assert r.status_code == 200 and all(h["metadata"]["in_stock"] for h in r.json()["results"])
        r = httpx.post(f"{srv.url}/search", data={"item": item, "attributes": "attr0", "filter": "price <"})
        assert r.status_code == 400 and "column 8" in r.json()["detail"] and "expected a value" in r.json()["detail"]
        r = httpx.post(f"{srv.url}/search", data={"item": item, "attributes": "attr0", "filter": "colour == 'x'"})
        assert r.status_code == 400 and "unknown field 'colour'" in r.json()["detail"]
    if backend == "milvus":
        app.state.service.retriever.store.close()


def test_the_server_serves_an_index_grown_by_agman_index_while_searches_run(shop, tmp_path):
    tmp, spec, ckpt = shop
    import shutil

    index = shutil.copytree(tmp / "idx", tmp_path / "idx")
    app = create_app(Retriever.open(index, load_model=True), reload_seconds=0.1)
    item = spec.split("test").paths[2]
    errors, answers = [], []
    with LiveServer(app) as srv:
        stop = threading.Event()

        def hammer():
            while not stop.is_set():
                r = httpx.post(f"{srv.url}/search", data={"item": item, "attributes": "attr0,attr1", "k": "100"})
                (answers if r.status_code == 200 else errors).append(r.json())

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        assert httpx.get(f"{srv.url}/health").json()["items"] == 30
        build_index(index, catalog(spec), ckpt, add=True, batch_size=8)  # another process would do the same
        deadline = time.monotonic() + 20
        while httpx.get(f"{srv.url}/health").json()["items"] != 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        health = httpx.get(f"{srv.url}/health").json()
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
    assert health["items"] == 40 and health["index"]["generation"] == 1 and health["index"]["reload_error"] is None
    assert errors == [] and len(answers) > 3
    assert {len(a["results"]) for a in answers} <= {30, 40} and len(answers[-1]["results"]) == 40


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_delete_and_put_items_through_a_writable_server(shop, tmp_path, backend):
    tmp, spec, ckpt = shop
    import shutil

    if backend == "faiss":
        index = shutil.copytree(tmp / "idx", tmp_path / "idx")
    else:
        index = str(tmp_path / "w.db")
        build_index(index, catalog(spec, range(30)), ckpt, batch_size=8)
    ids = spec.split("test").paths
    with LiveServer(create_app(Retriever.open(index, load_model=True), reload_seconds=0)) as ro:
        r = httpx.delete(f"{ro.url}/items/{ids[1]}")
        assert r.status_code == 403 and "--writable" in r.json()["detail"]
    app = create_app(Retriever.open(index, load_model=True), reload_seconds=0, writable=True)
    with LiveServer(app) as srv:
        assert httpx.delete(f"{srv.url}/items/nope.png").status_code == 404
        r = httpx.delete(f"{srv.url}/items/{ids[1]}")
        assert r.status_code == 200 and r.json() == {"deleted": 1, "items": 29}
        assert httpx.delete(f"{srv.url}/items/{ids[1]}").status_code == 404  # gone
        r = httpx.post(f"{srv.url}/search", data={"item": ids[0], "attributes": "attr0", "k": "100"})
        assert ids[1] not in [h["id"] for h in r.json()["results"]]

        change = {"metadata": {"price": 0.5, "category": "sale"}, "path": ids[7]}
        r = httpx.put(f"{srv.url}/items/{ids[3]}", json=change)
        assert r.status_code == 200 and r.json() == {"updated": 1, "row": 30, "items": 29}, r.text
        r = httpx.post(f"{srv.url}/search", data={"item": ids[7], "attributes": "attr0", "k": "1",
                                                   "filter": 'category == "sale"'})
        hit = r.json()["results"][0]
        assert hit["id"] == ids[3] and hit["metadata"] == {"price": 0.5, "category": "sale"}
        assert hit["scores"]["attr0"] == pytest.approx(1.0, abs=1e-4)  # re-embedded from item 7's picture
        assert httpx.put(f"{srv.url}/items/nope.png", json={"labels": {}}).status_code == 404
        r = httpx.put(f"{srv.url}/items/{ids[3]}", json={"path": "../../etc/passwd"})
        assert r.status_code == 400 and "leaves the catalog root" in r.json()["detail"]
        r = httpx.put(f"{srv.url}/items/{ids[3]}", json={"labels": {"attr0": "nope"}})
        assert r.status_code == 400 and "not a value of attribute 'attr0'" in r.json()["detail"]
        r = httpx.put(f"{srv.url}/items/{ids[3]}", json={"metadata": {"weight": 3}})
        assert r.status_code == 400 and "no metadata column 'weight'" in r.json()["detail"]
    if backend == "milvus":
        app.state.service.retriever.store.close()


def test_concurrent_uploads_share_forward_passes(shop):
    tmp, _, _ = shop
    retriever = Retriever.open(tmp / "idx", load_model=True)
    app = create_app(retriever, limits=ServiceLimits(batch_size=8, batch_wait_ms=50),
                     reload_seconds=0)
    pictures = [png(100 + i) for i in range(16)]
    with LiveServer(app) as srv:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda d: upload(srv.url, d, attributes="attr0", k="3"), pictures))
        health = httpx.get(f"{srv.url}/health").json()
    assert [a.status_code for a in answers] == [200] * 16
    assert health["batches"]["images"] == 16 and health["batches"]["forward_passes"] < 16
    for data, answer in zip(pictures[:4], answers):  # a batched embedding ranks as one embedded alone
        alone = retriever.search(retriever.embed(Image.open(io.BytesIO(data))), "attr0", 3)
        assert [h["id"] for h in answer.json()["results"]] == alone.ids
        assert [h["score"] for h in answer.json()["results"]] == pytest.approx([h.score for h in alone.hits], abs=1e-5)


def test_the_batcher_groups_what_arrives_together_and_reports_errors_to_every_caller():
    calls = []

    def embed(images):
        calls.append(len(images))
        if "bad" in images:
            raise ValueError("cannot embed")
        return np.asarray([[[float(i)]] for i in images])

    batcher = EmbedBatcher(embed, max_size=4, max_wait=0.2)
    futures = [batcher.submit(i) for i in range(10)]
    assert [float(f.result(timeout=10)[0, 0]) for f in futures] == [float(i) for i in range(10)]
    assert calls == [4, 4, 2]
    bad = [batcher.submit("bad"), batcher.submit(1)]
    for f in bad:
        with pytest.raises(ValueError, match="cannot embed"):
            f.result(timeout=10)
    alone = EmbedBatcher(embed, max_size=1)
    assert float(alone.submit(7).result(timeout=10)[0, 0]) == 7.0 and calls[-1] == 1
    batcher.close()
    alone.close()


# --------------------------------------------------------------------------- issue #19
@pytest.fixture(params=["faiss", "milvus"])
def writable(shop, tmp_path, request):
    """A writable server over a fresh 20-item index (with an empty string column ``brand``)."""
    tmp, spec, ckpt = shop
    from test_retrieval_milvus import META

    images = catalog(spec, range(20))
    images.metadata_types = {**META, "brand": "string"}
    index = tmp_path / "idx" if request.param == "faiss" else str(tmp_path / "w.db")
    build_index(index, images, ckpt, batch_size=8)
    app = create_app(Retriever.open(index, load_model=True), reload_seconds=0, writable=True)
    with LiveServer(app) as srv:
        yield request.param, srv.url, spec.split("test").paths
    if request.param == "milvus":
        app.state.service.retriever.store.close()


def test_put_merges_labels_and_metadata_by_key(writable):
    """#19.2: a PUT naming one label or one metadata key keeps the item's others; null removes one;
    an unknown key is a 400 even when removing it."""
    backend, url, ids = writable
    item = ids[4]  # row 4: price, category and in_stock set, both labels
    before = httpx.get(f"{url}/items", params={"limit": 20}).json()["items"][4]
    assert before["id"] == item and len(before["labels"]) == 2 and len(before["metadata"]) == 3
    r = httpx.put(f"{url}/items/{item}", json={"labels": {"attr0": "attr0_v0"}})
    assert r.status_code == 200, r.text
    r = httpx.put(f"{url}/items/{item}", json={"metadata": {"category": "x"}})
    assert r.status_code == 200, r.text
    after = next(it for it in httpx.get(f"{url}/items", params={"limit": 20}).json()["items"] if it["id"] == item)
    assert after["labels"] == {**before["labels"], "attr0": "attr0_v0"}, backend
    assert after["metadata"] == {**before["metadata"], "category": "x"}, backend
    r = httpx.put(f"{url}/items/{item}", json={"metadata": {"price": None}, "labels": {"attr1": None}})
    assert r.status_code == 200, r.text
    after = next(it for it in httpx.get(f"{url}/items", params={"limit": 20}).json()["items"] if it["id"] == item)
    assert "price" not in after["metadata"] and after["metadata"]["category"] == "x" and "in_stock" in after["metadata"]
    assert after["labels"] == {"attr0": "attr0_v0"}
    r = httpx.post(f"{url}/search", json={"item": item, "attributes": ["attr0"], "k": 20, "filter": "price is null"})
    assert item in [h["id"] for h in r.json()["results"]]
    r = httpx.put(f"{url}/items/{item}", json={"metadata": {"weight": None}})
    assert r.status_code == 400 and "'weight'" in r.json()["detail"]


def test_odd_json_ids_and_filters_are_4xx_on_both_backends(writable):
    """#19.4-7: a filter on a string column no item has a value for, lone UTF-16 surrogates, an id
    with a line break, a body nested 100,000 deep and a 400-digit number: 200 / 400 / 404 with a
    message, never a 500 or 503, and the server keeps answering."""
    backend, url, ids = writable
    search = {"item": ids[0], "attributes": ["attr0"], "k": 20}
    for flt in ['brand == "acme"', 'brand in ["acme"]', 'brand != "x"', 'not brand == "x"']:
        r = httpx.post(f"{url}/search", json={**search, "filter": flt})
        assert r.status_code == 200, (flt, r.text)
        assert len(r.json()["results"]) == (20 if flt.startswith("not") else 0), flt
    r = httpx.post(f"{url}/search", data={**search, "attributes": "attr0", "filter": 'brand != "x"'})
    assert r.status_code == 200 and r.json()["results"] == []
    surrogate = [
        ("/search", b'{"item": "x", "attributes": ["attr0"], "filter": "category == \\"\\ud800\\""}', "post"),
        ("/search", b'{"item": "SKU\\udc00", "attributes": ["attr0"]}', "post"),
        (f"/items/{ids[1]}", b'{"metadata": {"category": "a\\ud800b"}}', "put"),
        (f"/items/{ids[1]}", b'{"metadata": {"\\ud800": "a"}}', "put"),
    ]
    for path, body, method in surrogate:
        r = httpx.request(method, url + path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "surrogate" in r.json()["detail"], (backend, body, r.text)
    for bad in ["SKU\nX", "SKU\rX", "SKU\r\nX", 'a"\\\n']:
        r = httpx.post(f"{url}/search", json={"item": bad, "attributes": ["attr0"]})
        assert r.status_code == 404, (backend, bad, r.text)
        r = httpx.get(f"{url}/attention", params={"attribute": "attr0", "item": bad})
        assert r.status_code == 404, (backend, bad, r.text)
    deep = b'{"item": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for path, method in (("/search", "post"), (f"/items/{ids[1]}", "put")):
        r = httpx.request(method, url + path, content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "nested deeper" in r.json()["detail"], r.text
    huge = b'{"metadata": {"price": 1' + b"0" * 399 + b"}}"
    r = httpx.put(f"{url}/items/{ids[1]}", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "400 characters" in r.json()["detail"], r.text
    r = httpx.put(f"{url}/items/{ids[1]}", content=b'{"metadata": {"price": 1e400}}',
                  headers={"content-type": "application/json"})
    assert r.status_code == 400 and "out of range" in r.json()["detail"], r.text
    r = httpx.put(f"{url}/items/{ids[1]}", content=b'{"metadata": {"price": NaN}}',
                  headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert httpx.get(f"{url}/health").status_code == 200


def test_health_shows_no_server_path_in_the_reload_error(shop, tmp_path):
    """#19.12: a reload that fails (index.json replaced by junk) is reported in ``/health`` with the
    index folder as ``<index>``, like ``problems``."""
    import json
    import os
    import re
    import shutil

    tmp, _, _ = shop
    index = shutil.copytree(tmp / "idx", tmp_path / "idx")
    app = create_app(Retriever.open(index, load_model=True), reload_seconds=0)
    with LiveServer(app) as srv:
        junk = index / "index.json.new"
        junk.write_text("{not json")
        os.replace(junk, index / "index.json")
        assert app.state.service.watch.check() is False
        body = httpx.get(f"{srv.url}/health").json()
        error = body["index"]["reload_error"]
        assert error and "<index>" in error, body
        assert str(tmp_path) not in json.dumps(body) and not re.search(r"(?<![\w<])/(?:\w+/)+", error), error


def test_image_urls_of_ids_with_dot_segments_resolve_to_the_item(shop, tmp_path):
    """#19.17: an item id holding ``../`` (or ``%2F``) gets an image URL that a browser resolving it
    (dot segments removed, as ``urljoin`` does) still sends to that item."""
    from urllib.parse import urljoin

    from agman.retrieval.imagesets import ImageSet, from_split

    tmp, spec, ckpt = shop
    ids = ["../up/x.png", "a/../../b.png", "shop/%2F../c d.png", "plain.png"]
    build_index(tmp_path / "idx", ImageSet(ids, from_split(spec, "test").paths[:4]), ckpt, batch_size=8)
    with LiveServer(create_app(Retriever.open(tmp_path / "idx", load_model=True), reload_seconds=0)) as srv:
        listed = httpx.get(f"{srv.url}/items").json()["items"]
        assert [it["id"] for it in listed] == ids
        for it in listed:
            url = urljoin(srv.url + "/", it["image_url"])  # what the page's <img src> loads
            r = httpx.get(url)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png", (it["id"], url)
        hits = httpx.post(f"{srv.url}/search", json={"item": ids[0], "attributes": ["attr0"], "k": 4}).json()
        for h in hits["results"]:
            assert httpx.get(urljoin(srv.url + "/", h["image_url"])).status_code == 200, h["image_url"]
