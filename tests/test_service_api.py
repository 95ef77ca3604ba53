"""The HTTP service against a real uvicorn on a loopback port: endpoints, every bad input as a 4xx
with a message, and the server still serving afterwards.

``LiveServer`` and ``service_index`` are shared with the load and browser tests.
"""
from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from conftest import make_asen
from PIL import Image
from test_retrieval_index import tiny_checkpoint

from agman.data.layouts import open_dataset
from agman.retrieval.build import build_index
from agman.retrieval.info import IndexMismatchError
from agman.retrieval.imagesets import from_split
from agman.service.app import ServiceLimits, create_app


class LiveServer:
    """uvicorn serving ``app`` in a background thread on a free 127.0.0.1 port."""

    def __init__(self, app):
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on accepted sockets of that protocol;
        # without it every keep-alive response waits ~40 ms for the client's delayed ACK.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", backlog=1024)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def service_index(tmp: Path, n_test: int = 30, model: str = "agman", seed: int = 0):
    """(spec, checkpoint, flat index of the test split) with a tiny real model."""
    spec = open_dataset(make_asen(tmp / "ds", n_per_split=(12, 10, n_test), values=(3, 2)))
    ckpt = tiny_checkpoint(tmp / f"{model}.pt", spec.attributes, seed=seed, model=model)
    out = tmp / f"index-{model}"
    build_index(out, from_split(spec, "test"), ckpt, batch_size=8)
    return spec, ckpt, out


def png_bytes(seed: int, size=(40, 56)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


LIMITS = ServiceLimits(max_k=20, max_upload_bytes=300_000, max_pixels=1_000_000, query_cache=8)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("service")
    spec, _ckpt, out = service_index(tmp)
    with LiveServer(create_app(out, limits=LIMITS)) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield spec, client


def search(client, **form):
    files = form.pop("files", None)
    return client.post("/search", data=form, files=files)


# --------------------------------------------------------------------------- happy paths
def test_health_info_page_and_docs(live):
    _spec, client = live
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["items"] == 30 and health["index_type"] == "flat"
    info = client.get("/info").json()
    assert [a["name"] for a in info["attributes"]] == ["attr0", "attr1"]
    assert info["attributes"][0]["values"] == ["attr0_v0", "attr0_v1", "attr0_v2"]
    assert info["max_k"] == 20 and len(info["examples"]) == 12
    page = client.get("/")
    assert page.status_code == 200 and 'id="search"' in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/search", "/attention", "/health", "/items/{item_id}/image"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


def test_search_by_upload_then_by_query_id_and_the_urls_it_returns(live):
    spec, client = live
    data = (spec.root / spec.split("test").paths[4]).read_bytes()
    r = search(client, files={"image": ("q.png", data, "image/png")}, attributes=["attr0:1", "attr1:2"], k="5")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"]["kind"] == "upload" and body["attributes"] == {"attr0": 1.0, "attr1": 2.0}
    assert len(body["results"]) == 5 and body["exact"] is True and body["candidates"] == 30
    top = body["results"][0]
    assert top["id"] == spec.split("test").paths[4] and top["score"] == pytest.approx(3.0, abs=1e-4)
    assert "path" not in top  # server paths stay private
    assert [x["rank"] for x in body["results"]] == [1, 2, 3, 4, 5]
    img = client.get(top["image_url"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    heat = client.get(top["attention_urls"]["attr1"])
    assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(heat.content)).size == (64, 64)
    q = body["query"]
    assert client.get(q["image_url"]).headers["content-type"] == "image/png"
    assert client.get(q["attention_urls"]["attr0"]).status_code == 200
    again = search(client, query=q["id"], attributes="attr0:1,attr1:2", k="5").json()
    assert [x["id"] for x in again["results"]] == [x["id"] for x in body["results"]]


def test_search_by_item_with_exclude_self_and_annotated_only(live):
    spec, client = live
    item = spec.split("test").paths[6]
    body = search(client, item=item, attributes="attr1", k="4", exclude_self="true", annotated_only="true").json()
    assert body["query"] == {
        "kind": "item",
        "id": item,
        "image_url": f"/items/{item}/image",
        "labels": {"attr0": "attr0_v0", "attr1": "attr1_v0"},
        "attention_urls": {"attr1": f"/attention?attribute=attr1&item={item.replace('/', '%2F')}"},
    }
    assert item not in [x["id"] for x in body["results"]] and body["candidates"] == 29
    assert all(x["correct"] == (x["labels"]["attr1"] == "attr1_v0") for x in body["results"])


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "form, status, message",
    [
        ({"attributes": "colour"}, 400, "unknown attribute 'colour'"),
        ({"attributes": "attr0:heavy"}, 400, "weight of 'attr0' must be a number"),
        ({"attributes": "attr0:nan"}, 400, "finite"),
        ({"attributes": "attr0:1e308,attr1:1e308"}, 400, "from 0 to 1e+06"),  # #12.9: was inf scores -> 500
        ({"attributes": "attr0:0"}, 400, "above 0"),
        ({"attributes": "attr0", "k": "0"}, 400, "k must be between 1 and 20"),
        ({"attributes": "attr0", "k": "-4"}, 400, "k must be between 1 and 20"),
        ({"attributes": "attr0", "k": "21"}, 400, "k must be between 1 and 20"),
        ({"attributes": "attr0", "k": "ten"}, 400, "k must be an integer"),
        ({"attributes": "attr0", "exclude_self": "maybe"}, 400, "exclude_self must be true or false"),
        ({}, 422, "attributes: Field required"),
    ],
)
def test_bad_search_fields(live, form, status, message):
    spec, client = live
    r = search(client, item=spec.split("test").paths[0], **form)
    assert r.status_code == status and message in r.json()["detail"]


def test_bad_uploads(live):
    spec, client = live
    good = (spec.root / spec.split("test").paths[0]).read_bytes()
    cases = [
        (b"this is not an image", 400, "not an image"),
        (good[: len(good) // 2], 400, "truncated"),
        (b"", 400, "empty"),
    ]
    bomb = io.BytesIO()
    Image.new("RGB", (2000, 1000)).save(bomb, format="PNG")  # 2 Mpx in a few kB: over max_pixels
    cases.append((bomb.getvalue(), 413, "2000x1000"))
    thin = io.BytesIO()
    Image.new("L", (1, 200_000)).save(thin, format="PNG")  # #12.2: ~100 bytes; resizing it made 800 Mpx
    cases.append((thin.getvalue(), 413, "aspect ratio 200000.0:1 exceeds 20:1"))
    pcx = io.BytesIO()
    Image.new("RGB", (8, 8)).save(pcx, format="PCX")  # #12.8: a format Pillow reads, outside the allowed list
    cases.append((pcx.getvalue(), 400, "not an image in a supported format"))
    cases.append((b"\0" * 400_000, 413, "upload limit"))  # over max_upload_bytes
    for data, status, message in cases:
        r = search(client, files={"image": ("q.png", data, "image/png")}, attributes="attr0")
        assert r.status_code == status, (message, r.text)
        assert message in r.json()["detail"]


def test_unknown_items_queries_and_conflicting_inputs(live):
    spec, client = live
    r = search(client, item="nope.png", attributes="attr0")
    assert r.status_code == 404 and "no item 'nope.png'" in r.json()["detail"]
    r = search(client, query="q0000", attributes="attr0")
    assert r.status_code == 404 and "no recent query" in r.json()["detail"]
    r = search(client, attributes="attr0")
    assert r.status_code == 400 and "exactly one of image, item or query" in r.json()["detail"]
    r = search(client, item=spec.split("test").paths[0], query="q1", attributes="attr0")
    assert r.status_code == 400 and "got item, query" in r.json()["detail"]
    assert client.get("/items/nope.png/image").status_code == 404
    assert client.get("/queries/q123/image").status_code == 404
    r = client.get("/attention", params={"item": "nope.png", "attribute": "attr0"})
    assert r.status_code == 404
    r = client.get("/attention", params={"item": spec.split("test").paths[0], "attribute": "colour"})
    assert r.status_code == 400 and "unknown attribute" in r.json()["detail"]
    r = client.get("/attention", params={"attribute": "attr0"})
    assert r.status_code == 400 and "exactly one of item or query" in r.json()["detail"]
    r = client.get("/attention", params={"item": spec.split("test").paths[0], "attribute": "attr0", "alpha": "2"})
    assert r.status_code == 422 and "alpha" in r.json()["detail"]
    r = client.get("/attention", params={"item": spec.split("test").paths[0]})
    assert r.status_code == 422 and "attribute" in r.json()["detail"]


def test_server_keeps_serving_after_bad_requests(live):
    _spec, client = live
    for _ in range(3):
        search(client, files={"image": ("q.png", b"junk", "image/png")}, attributes="attr0")
        search(client, item="nope", attributes="attr0")
    assert client.get("/health").json()["status"] == "ok"
    r = search(client, files={"image": ("q.png", png_bytes(5), "image/png")}, attributes="attr0", k="3")
    assert r.status_code == 200 and len(r.json()["results"]) == 3


def test_uploaded_queries_expire_after_the_cache_fills(live):
    _, client = live
    first = search(client, files={"image": ("q.png", png_bytes(100), "image/png")}, attributes="attr0").json()
    for seed in range(101, 101 + LIMITS.query_cache):
        search(client, files={"image": ("q.png", png_bytes(seed), "image/png")}, attributes="attr0")
    r = search(client, query=first["query"]["id"], attributes="attr0")
    assert r.status_code == 404


# --------------------------------------------------------------------------- other apps
def test_index_of_another_checkpoint_is_refused_at_start(tmp_path, capsys):
    spec, _, out = service_index(tmp_path, n_test=10)
    other = tiny_checkpoint(tmp_path / "other.pt", spec.attributes, seed=5)
    with pytest.raises(IndexMismatchError, match="cannot be mixed"):
        create_app(out, checkpoint=other)
    from agman.cli import main

    assert main(["serve", "--index", str(out), "--checkpoint", str(other), "--port", "1"]) == 2
    assert "cannot be mixed" in capsys.readouterr().err
    assert main(["serve", "--index", str(tmp_path / "none")]) == 2
    assert "no index at" in capsys.readouterr().err


def test_model_without_attention_and_missing_catalog_files(tmp_path):
    spec, _, out = service_index(tmp_path, n_test=10, model="csn")
    item = spec.split("test").paths[1]
    with LiveServer(create_app(out)) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        r = client.get("/attention", params={"item": item, "attribute": "attr0"})
        assert r.status_code == 409 and "no spatial attention" in r.json()["detail"]
        (spec.root / item).unlink()
        r = client.get(f"/items/{item}/image")
        assert r.status_code == 404 and "missing" in r.json()["detail"]
        assert search(client, item=item, attributes="attr0", k="2").status_code == 200  # stored vectors still work


# --------------------------------------------------------------------------- what is kept of an upload
@pytest.mark.parametrize("size, input_size, crop_ratio", [((40, 56), 64, 1.0), ((900, 500), 224, 0.875),
                                                           ((333, 1000), 96, 0.8)])
def test_the_kept_view_is_what_the_model_would_see_of_the_full_upload(size, input_size, crop_ratio):
    """The service keeps the upload resized as the model's transform resizes it: the model's input
    tensor (embedding and attention) is bit for bit that of the full image."""
    from agman.data.transforms import build_transform, model_view
    from agman.service.uploads import reduce_upload

    full = Image.open(io.BytesIO(png_bytes(3, size))).convert("RGB")
    kept = reduce_upload(full.copy(), input_size, crop_ratio, thumbnail=64)
    transform = build_transform(input_size, train=False, crop_ratio=crop_ratio)
    assert torch_equal(transform(kept.view), transform(full))
    assert np.array_equal(np.asarray(model_view(kept.view, input_size, crop_ratio)),
                          np.asarray(model_view(full, input_size, crop_ratio)))
    thumb = Image.open(io.BytesIO(kept.thumbnail_png))
    assert max(thumb.size) == min(64, max(size)) and kept.nbytes < full.width * full.height * 3 + 64 * 64 * 3 * 4


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def test_query_cache_is_bounded_in_entries_and_bytes():
    from agman.service.state import CachedQuery, QueryStore
    from agman.service.uploads import QueryPicture

    def query(i, side=32):
        return CachedQuery(f"q{i}", QueryPicture(Image.new("RGB", (side, side)), b"png"), np.zeros((2, 8), np.float32))

    one = query(0).nbytes
    store = QueryStore(capacity=10, max_bytes=3 * one)
    for i in range(5):
        store.put(query(i))
    assert len(store) == 3 and store.nbytes == 3 * one and store.get("q1") is None
    store.get("q2")  # used: now the most recent
    store.put(query(5))
    assert store.get("q2") is not None and store.get("q3") is None
    store.put(query(6, side=400))  # larger than the whole budget: not kept, the others stay
    assert store.get("q6") is None and store.get("q2") is not None and store.nbytes == 3 * one
    small = QueryStore(capacity=2, max_bytes=10**9)
    for i in range(4):
        small.put(query(i))
    assert len(small) == 2


# --------------------------------------------------------------------------- serving beyond localhost
def test_exposure_checks_and_default_allowed_hosts():
    from agman.errors import UsageError
    from agman.service.server import check_exposure, default_allowed_hosts, is_loopback

    assert [is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost")] == [True] * 5
    assert [is_loopback(h) for h in ("0.0.0.0", "::", "10.1.2.3", "192.168.0.7")] == [False] * 4
    check_exposure("127.0.0.1", None, False)  # loopback: no token needed
    check_exposure("0.0.0.0", "t" * 16, False)
    check_exposure("0.0.0.0", None, True)  # explicitly insecure
    with pytest.raises(UsageError, match="--host 10.1.2.3 makes the service reachable"):
        check_exposure("10.1.2.3", None, False)
    assert default_allowed_hosts("::1") == ["localhost", "127.0.0.1", "[::1]"]  # Host: [::1]:8000
    assert default_allowed_hosts("10.1.2.3", ["Shop.Example"])[-2:] == ["10.1.2.3", "shop.example"]
    with pytest.raises(UsageError, match="at least 16 characters"):
        create_app("/nonexistent/index", token="short")  # checked before anything is loaded
