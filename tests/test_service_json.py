"""The service's machine-readable side (#14): ``POST /search`` with a JSON body as well as forms (a
clear 415 for other content types), the predicted values and match summary in every answer, the
catalog listed page by page (``GET /items``), the API docs from local assets, and ``agman serve``'s
``--access-log`` / ``--log-level``."""
from __future__ import annotations

import time

import httpx
import pytest
from test_service_abuse import Served
from test_service_api import LiveServer, png_bytes, search, service_index

from agman.service.app import ServiceLimits, create_app

LIMITS = ServiceLimits(max_k=20, max_page=8)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("service-json")
    spec, _ckpt, out = service_index(tmp)
    with LiveServer(create_app(out, limits=LIMITS)) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield spec, client, out


# --------------------------------------------------------------------------- JSON bodies
def test_a_json_search_answers_as_the_form_does(live):
    spec, client, _ = live
    item = spec.split("test").paths[5]
    form = search(client, item=item, attributes=["attr0:2", "attr1"], k="7", exclude_self="true").json()
    body = {"item": item, "attributes": ["attr0:2", "attr1"], "k": 7, "exclude_self": True}
    r = client.post("/search", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert [x["id"] for x in answer["results"]] == [x["id"] for x in form["results"]]
    assert answer["attributes"] == {"attr0": 2.0, "attr1": 1.0} and answer["k"] == 7
    as_dict = client.post("/search", json={**body, "attributes": {"attr0": 2, "attr1": 1}}).json()
    assert [x["id"] for x in as_dict["results"]] == [x["id"] for x in form["results"]]
    text = client.post("/search", json={**body, "attributes": "attr0:2,attr1", "k": "7"}).json()
    assert [x["id"] for x in text["results"]] == [x["id"] for x in form["results"]]
    # an upload's id from a multipart answer is a JSON query's source
    up = search(client, files={"image": ("q.png", png_bytes(3), "image/png")}, attributes="attr1", k="4").json()
    again = client.post("/search", json={"query": up["query"]["id"], "attributes": ["attr1"], "k": 4}).json()
    assert [x["id"] for x in again["results"]] == [x["id"] for x in up["results"]]
    filtered = client.post("/search", json={"item": item, "attributes": ["attr0"], "k": 20,
                                            "filter": "attr1 == 'attr1_v1'"}).json()
    assert filtered["results"] and all(x["labels"]["attr1"] == "attr1_v1" for x in filtered["results"])


@pytest.mark.parametrize(
    "request_kwargs, status, message",
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"json": ["attr0"]}, 400, "must be an object of search fields, got list"),
        ({"json": {"item": "ITEM", "attributes": ["attr0"], "image": "abc"}}, 400, "upload it as multipart"),
        ({"json": {"item": "ITEM", "attributes": ["attr0"], "k": 99}}, 400, "k must be between 1 and 20"),
        ({"json": {"item": "ITEM", "attributes": ["attr0"], "k": 2.5}}, 422, "k"),
        ({"json": {"item": "ITEM", "attributes": ["colour"]}}, 400, "unknown attribute 'colour'"),
        ({"json": {"item": "ITEM", "attributes": ["attr0"], "exclude_self": "maybe"}}, 400,
         "exclude_self must be true or false"),
        ({"json": {"item": "ITEM", "attributes": ["attr0"], "colour": "red"}}, 422, "colour: Extra inputs"),
        ({"json": {"item": "ITEM"}}, 422, "attributes: Field required"),
        ({"json": {"attributes": ["attr0"]}}, 400, "exactly one of image, item or query (got none)"),
        ({"json": {"item": "ITEM", "attributes": ["attr0"], "filter": "attr0 =="}}, 400, "column 9"),
        ({"content": b"item=x", "headers": {"content-type": "text/plain"}}, 415,
         "takes multipart/form-data (needed to upload an image), application/x-www-form-urlencoded or "
         "application/json; got text/plain"),
        ({"content": b"item=x"}, 415, "got no content type"),
    ],
)
def test_bad_json_bodies_and_content_types(live, request_kwargs, status, message):
    spec, client, _ = live
    item = spec.split("test").paths[0]
    if "json" in request_kwargs and isinstance(request_kwargs["json"], dict) and "item" in request_kwargs["json"]:
        request_kwargs = {"json": {**request_kwargs["json"], "item": item}}
    r = client.post("/search", **request_kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_the_openapi_schema_offers_the_form_and_json(live):
    _, client, _ = live
    body = client.get("/openapi.json").json()["paths"]["/search"]["post"]["requestBody"]
    form = body["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["image"]["format"] == "binary"
    assert {"attributes", "item", "query", "k", "exclude_self", "annotated_only", "filter"} <= set(form["properties"])
    assert "image" not in body["content"]["application/json"]["schema"]["properties"]


# --------------------------------------------------------------------------- what an answer explains
def test_answers_carry_predicted_values_and_the_match_summary(live):
    spec, client, _ = live
    test = spec.split("test")
    item = test.paths[2]
    labels = dict(zip(["attr0", "attr1"], [f"attr{a}_v{v}" for a, v in enumerate(test.labels[2])]))
    body = client.post("/search", json={"item": item, "attributes": ["attr0"], "k": 9, "exclude_self": True}).json()
    assert set(body["predicted"]) == {"attr0", "attr1"}
    for name, p in body["predicted"].items():
        assert p["votes"] == max(p["counts"].values()) and p["of"] == sum(p["counts"].values()) == 9
        assert p["counts"][p["value"]] == p["votes"] and p["share"] == pytest.approx(p["votes"] / p["of"])
    assert list(body["summary"]) == ["attr0", "attr1"]  # the queried attribute first
    for name, s in body["summary"].items():
        assert (s["value"], s["source"], s["queried"]) == (labels[name], "query", name == "attr0")
        hits = [x for x in body["results"] if name in x["labels"]]
        assert s["matches"] == sum(x["labels"][name] == labels[name] for x in hits) and s["of"] == len(hits)
        assert all(x["matches"][name] == (x["labels"][name] == labels[name]) for x in hits)
    upload = search(client, files={"image": ("q.png", png_bytes(11), "image/png")}, attributes="attr1", k="5").json()
    assert upload["query"]["labels"] == {}
    for name, s in upload["summary"].items():  # an upload has no labels: the predicted value is the reference
        assert s["source"] == "predicted" and s["value"] == upload["predicted"][name]["value"]


# --------------------------------------------------------------------------- the catalog page by page
def test_the_catalog_is_listed_page_by_page(live):
    spec, client, _ = live
    ids = []
    offset = 0
    while True:
        page = client.get("/items", params={"offset": offset, "limit": 8}).json()
        assert page["total"] == 30 and page["offset"] == offset and page["limit"] == 8
        if not page["items"]:
            break
        assert len(page["items"]) == min(8, 30 - offset)
        ids += [x["id"] for x in page["items"]]
        offset += 8
    assert ids == list(spec.split("test").paths)  # every item once, in index order
    first = client.get("/items").json()  # limit defaults to max_page
    assert first["limit"] == 8 and [x["id"] for x in first["items"]] == ids[:8]
    one = first["items"][0]
    assert one["image_url"] == f"/items/{ids[0]}/image" and set(one["labels"]) == {"attr0", "attr1"}
    assert "path" not in one
    r = client.get("/items", params={"limit": 9})
    assert r.status_code == 400 and "limit must be between 1 and 8, got 9" in r.json()["detail"]
    assert client.get("/items", params={"limit": 0}).status_code == 400
    r = client.get("/items", params={"offset": -1})
    assert r.status_code == 422 and "offset" in r.json()["detail"]
    assert client.get("/info").json()["max_page"] == 8


# --------------------------------------------------------------------------- docs without a CDN
def test_docs_and_redoc_load_their_assets_from_this_server(live):
    _, client, _ = live
    for page, assets in (("/docs", ["swagger-ui-bundle.js", "swagger-ui.css"]), ("/redoc", ["redoc.standalone.js"])):
        html = client.get(page)
        assert html.status_code == 200
        assert "cdn" not in html.text.lower() and "https://" not in html.text
        assert "default-src 'self'" in html.headers["content-security-policy"]  # the browser asks no other host
        for name in assets:
            assert f"/docs-assets/{name}" in html.text
            asset = client.get(f"/docs-assets/{name}")
            assert asset.status_code == 200 and len(asset.content) > 10_000


# --------------------------------------------------------------------------- logging
def test_log_levels_and_the_access_log_configuration():
    from agman.service.limits import LOG_LEVELS
    from agman.service.server import access_level, log_config

    uvicorn_config = pytest.importorskip("uvicorn.config")
    assert set(LOG_LEVELS) == set(uvicorn_config.LOG_LEVELS)  # --log-level offers exactly uvicorn's levels
    assert [access_level(x) for x in LOG_LEVELS] == ["INFO", "INFO", "INFO", "INFO", "DEBUG", "TRACE"]
    assert log_config("debug")["loggers"]["agman"]["level"] == "DEBUG"


def test_serve_rejects_an_unknown_log_level(capsys):
    from agman.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--index", "x", "--log-level", "loud"])
    assert exit_.value.code == 2 and "invalid choice: 'loud'" in capsys.readouterr().err


def wait_for(served: Served, text: str, seconds: float = 20) -> bool:
    """Whether ``text`` appears in the server's output within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text in "".join(served.lines):
            return True
        time.sleep(0.1)
    return False


def test_serve_writes_an_access_log_only_when_asked(live):
    _, _, out = live
    info = Served(["--index", str(out), "--log-level", "info"])  # uvicorn's INFO lines, no access log
    try:
        assert httpx.get(info.url + "/health", timeout=60).status_code == 200
        assert wait_for(info, "INFO:     Started server process"), info.lines
    finally:
        info.stop()
    assert not [line for line in info.lines if "GET /health" in line]
    logged = Served(["--index", str(out), "--access-log"])  # shown at the default level (warning)
    try:
        assert httpx.get(logged.url + "/health", timeout=60).status_code == 200
        httpx.get(logged.url + "/items/nope.png/image", timeout=60)
        assert wait_for(logged, '"GET /items/nope.png/image HTTP/1.1" 404')
    finally:
        logged.stop()
    assert '"GET /health HTTP/1.1" 200' in "".join(logged.lines)
    assert "Started server process" not in "".join(logged.lines)  # uvicorn's other INFO lines stay hidden
