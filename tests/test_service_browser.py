"""The web page end to end in real headless Chromium (Debian ``chromium``, driven by Playwright):
upload, search, result tiles render, the attention heatmap loads; drag-and-drop; an error shows and
clears earlier results; labels as chips, the match summary and predicted values (#14); paging
through the catalog; more results; /docs and /redoc with every other host blocked."""
from __future__ import annotations

import base64
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from test_service_api import LiveServer, png_bytes, service_index

from agman.service.app import create_app

CHROMIUM = os.environ.get("AGMAN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.browser,
    # Skipped on a developer machine without Chromium; in CI (CI=true) a missing browser is a failure.
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file() and not os.environ.get("CI"),
        reason=f"headless Chromium not installed at {CHROMIUM}",
    ),
]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api")
    tmp = tmp_path_factory.mktemp("browser")
    spec, _, out = service_index(tmp, n_test=30)
    errors: list[str] = []
    with LiveServer(create_app(out)) as server, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            pg = browser.new_page()
            pg.set_default_timeout(TIMEOUT_MS)
            pg.on("pageerror", lambda exc: errors.append(str(exc)))
            pg.goto(server.url + "/")
            pg.wait_for_selector("body[data-ready=true]")
            yield pg, spec, errors
        finally:
            browser.close()


def heatmap_loaded(pg) -> None:
    pg.wait_for_function(
        "() => { const img = document.getElementById('heatmap');"
        " return img && img.complete && img.naturalWidth > 0 && !document.getElementById('heat-panel').hidden; }"
    )


def test_upload_search_results_and_heatmap(page, tmp_path):
    pg, spec, errors = page
    assert "30 items" in pg.text_content("#status")
    assert pg.locator(".attr input[type=checkbox]").count() == 2
    query = tmp_path / "query.png"
    query.write_bytes((spec.root / spec.split("test").paths[3]).read_bytes())
    pg.set_input_files("#file", str(query))
    pg.wait_for_selector("#query-preview:not([hidden])")
    pg.fill("#k", "6")
    pg.check(".attr input[data-attribute=attr1]")  # both attributes, weighted 1 and 1
    pg.click("#search")
    pg.wait_for_function("() => document.querySelectorAll('#results .result').length === 6")
    tiles = pg.locator("#results .result")
    assert tiles.count() == 6
    assert tiles.first.get_attribute("data-id") == spec.split("test").paths[3]  # the query itself ranks first
    pg.wait_for_function(
        "() => [...document.querySelectorAll('#results .result img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert "6 of 30 items" in pg.text_content("#summary")
    heatmap_loaded(pg)  # the query's heatmap is shown after a search
    assert "query" in pg.text_content("#heat-caption")
    tiles.nth(2).click()
    heatmap_loaded(pg)
    assert "result #3" in pg.text_content("#heat-caption")
    assert "item=" in pg.get_attribute("#heatmap", "src")
    pg.select_option("#heat-attr", "attr1")
    heatmap_loaded(pg)
    assert "attribute=attr1" in pg.get_attribute("#heatmap", "src")
    assert errors == []


def test_drop_an_image_and_pick_a_catalog_item(page):
    pg, spec, errors = page
    data = base64.b64encode(png_bytes(77)).decode()
    transfer = pg.evaluate_handle(
        """(b64) => {
            const bin = atob(b64);
            const bytes = new Uint8Array(bin.length);
            for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'dropped.png', { type: 'image/png' }));
            return dt;
        }""",
        data,
    )
    pg.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    pg.fill("#k", "4")
    pg.click("#search")
    pg.wait_for_function("() => document.querySelectorAll('#results .result').length === 4")
    heatmap_loaded(pg)
    # pick a catalog item from the examples: labels are known, so tiles are framed green or red
    pg.click("#examples-box summary")
    pg.click("#examples img >> nth=1")
    pg.fill("#k", "5")
    pg.click("#search")
    pg.wait_for_function(
        "() => document.querySelectorAll('#results .result').length === 5"
        " && document.querySelectorAll('#results .result.correct, #results .result.wrong').length === 5"
    )
    heatmap_loaded(pg)
    assert errors == []


def test_a_filter_narrows_the_results_and_a_malformed_one_shows_where(page):
    pg, spec, errors = page
    pg.evaluate("document.getElementById('examples-box').open = true")  # an earlier test may have opened it
    pg.click("#examples img >> nth=2")
    pg.fill("#k", "30")
    pg.fill("#filter", "attr0 == 'attr0_v1'")
    pg.evaluate("document.getElementById('results').replaceChildren()")  # results of an earlier test
    pg.click("#search")
    pg.wait_for_function("() => document.querySelectorAll('#results .result').length > 0")
    shown = pg.locator("#results .result").evaluate_all("tiles => tiles.map(t => t.dataset.id)")
    labels = {p: row for p, row in zip(spec.split("test").paths, spec.split("test").labels)}
    assert 0 < len(shown) < 30 and all(labels[i][0] == 1 for i in shown)  # only items valued attr0_v1
    pg.fill("#filter", "attr0 ==")
    pg.click("#search")
    pg.wait_for_selector("#error:not([hidden])")
    assert "column 9" in pg.text_content("#error")  # the end of "attr0 =="
    pg.fill("#filter", "")
    assert errors == []


# --------------------------------------------------------------------------- results that explain themselves (#14)
def set_weights(pg, weights: dict) -> None:
    """Tick exactly the attributes in ``weights`` and set their sliders (whatever earlier tests left)."""
    pg.evaluate(
        """(weights) => { for (const row of document.querySelectorAll('.attr')) {
            const box = row.querySelector('input[type=checkbox]');
            const slider = row.querySelector('input[type=range]');
            box.checked = box.value in weights;
            slider.value = String(weights[box.value] ?? 1);
            slider.dispatchEvent(new Event('input'));
        } }""",
        weights,
    )


def search_and_read(pg) -> dict:
    """Click Search; the JSON the server answered, once the page has drawn it."""
    with pg.expect_response(lambda r: r.url.endswith("/search")) as answer:
        pg.click("#search")
    body = answer.value.json()
    pg.wait_for_function(f"() => document.body.dataset.results === '{len(body['results'])}'")
    return body


def pick_example(pg, nth: int) -> None:
    pg.evaluate("document.getElementById('examples-box').open = true")
    pg.click(f"#examples img >> nth={nth}")


def test_tiles_show_labels_as_chips_with_the_match_summary_and_predicted_values(page, tmp_path):
    pg, spec, errors = page
    query = tmp_path / "catalog-image.png"
    query.write_bytes((spec.root / spec.split("test").paths[8]).read_bytes())
    pg.set_input_files("#file", str(query))
    set_weights(pg, {"attr0": 1})
    pg.fill("#k", "6")
    pg.fill("#filter", "")
    body = search_and_read(pg)
    # predicted values: one chip per attribute, value and share as the server voted
    for name, p in body["predicted"].items():
        chip = pg.locator(f"#predicted .chip[data-attribute={name}]")
        assert chip.get_attribute("data-value") == p["value"]
        assert f"{name}: {p['value']} ({round(100 * p['share'])}%)" == chip.text_content()
    # "k of k match" per attribute, the reference being the predicted value (an upload has no labels)
    for name, s in body["summary"].items():
        row = pg.locator(f"#matches .match-row[data-attribute={name}]")
        assert f"{name}: {s['matches']} of {s['of']} match {s['value']} (predicted)" in row.text_content()
        assert s["value"] == body["predicted"][name]["value"]
        marked = pg.locator(f"#results .chip.match[data-attribute={name}]")
        assert marked.count() == s["matches"]  # the marked chips are the matching labels
        assert all(t.endswith("✓") for t in marked.all_text_contents())
    # every tile: one chip per known label, marked exactly where the server says it matches
    tiles = pg.locator("#results .result")
    assert tiles.count() == 6
    for i, hit in enumerate(body["results"]):
        chips = tiles.nth(i).locator(".chip")
        assert chips.count() == len(hit["labels"]) == 2
        for name, value in hit["labels"].items():
            chip = tiles.nth(i).locator(f".chip[data-attribute={name}]")
            assert f"{name}: {value}" in chip.text_content()
            assert ("match" in chip.get_attribute("class").split()) == hit["matches"][name]
    assert errors == []


def test_a_bad_upload_shows_the_servers_message_and_clears_earlier_results(page, tmp_path):
    pg, spec, errors = page
    pick_example(pg, 3)
    set_weights(pg, {"attr0": 1, "attr1": 1})
    pg.fill("#k", "5")
    pg.fill("#filter", "")
    search_and_read(pg)
    assert pg.locator("#results .result").count() == 5 and pg.locator("#predicted .chip").count() == 2
    heatmap_loaded(pg)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"definitely not a PNG")
    pg.set_input_files("#file", str(bad))
    pg.click("#search")
    pg.wait_for_selector("#error:not([hidden])")
    assert "not an image" in pg.text_content("#error")
    assert pg.locator("#results .result").count() == 0  # nothing of the earlier search stays on show
    assert pg.text_content("#predicted") == "" and pg.text_content("#matches") == ""
    assert pg.is_hidden("#heat-panel") and pg.is_hidden("#more")
    assert errors == []


def test_the_catalog_pages_through_every_item(page):
    pg, spec, errors = page
    ids = list(spec.split("test").paths)
    pg.evaluate("document.getElementById('examples-box').open = true")
    while pg.is_enabled("#examples-prev"):  # back to the first page, wherever an earlier test left it
        pg.click("#examples-prev")
        pg.wait_for_timeout(50)

    def shown():
        pg.wait_for_function("() => document.querySelectorAll('#examples img').length > 0")
        return pg.locator("#examples img").evaluate_all("imgs => imgs.map(i => i.dataset.id)")

    assert shown() == ids[:12] and pg.text_content("#examples-range") == "1–12 of 30"
    pg.click("#examples-next")
    pg.wait_for_function("() => document.getElementById('examples-range').textContent.startsWith('13')")
    assert shown() == ids[12:24] and pg.is_enabled("#examples-prev")
    pg.click("#examples-next")
    pg.wait_for_function("() => document.getElementById('examples-range').textContent === '25–30 of 30'")
    assert shown() == ids[24:] and pg.is_disabled("#examples-next")
    pg.click("#examples img >> nth=2")  # an item only the third page shows is a query like any other
    set_weights(pg, {"attr1": 1})
    pg.fill("#k", "3")
    pg.fill("#filter", "")
    body = search_and_read(pg)
    assert body["query"] == {**body["query"], "kind": "item", "id": ids[26]}
    pg.click("#examples-prev")
    pg.wait_for_function("() => document.getElementById('examples-range').textContent.startsWith('13')")
    assert shown() == ids[12:24]
    assert errors == []


def test_more_results_and_the_heaviest_attributes_heatmap(page):
    pg, spec, errors = page
    pick_example(pg, 0)
    set_weights(pg, {"attr0": 1, "attr1": 3})
    pg.fill("#k", "4")
    pg.fill("#filter", "")
    first = search_and_read(pg)
    heatmap_loaded(pg)
    assert pg.input_value("#heat-attr") == "attr1"  # the most heavily weighted attribute's map by default
    assert "attribute=attr1" in pg.get_attribute("#heatmap", "src")
    pg.select_option("#heat-attr", "attr0")
    with pg.expect_response(lambda r: r.url.endswith("/search")) as answer:
        pg.click("#more")
    more = answer.value.json()
    pg.wait_for_function("() => document.body.dataset.results === '8'")
    assert more["k"] == 8 and pg.input_value("#k") == "8"
    assert [x["id"] for x in more["results"][:4]] == [x["id"] for x in first["results"]]  # the same query, longer
    assert pg.input_value("#heat-attr") == "attr0"  # more of the same results keeps the chosen map
    pg.fill("#k", "20")
    search_and_read(pg)
    pg.click("#more")  # 40 would pass the 30 candidates: all 30
    pg.wait_for_function("() => document.body.dataset.results === '30'")
    assert pg.is_hidden("#more")  # nothing more to ask for
    assert errors == []


def test_the_api_docs_render_with_the_network_cut_off(page):
    pg, _, errors = page
    url = urlsplit(pg.url)
    origin = f"{url.scheme}://{url.netloc}"
    blocked: list[str] = []
    docs = pg.context.browser.new_page()  # a page of its own: the shared one keeps its state
    docs.set_default_timeout(TIMEOUT_MS)

    def only_this_server(route):
        if route.request.url.startswith(origin + "/"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    try:
        docs.route("**/*", only_this_server)
        docs.goto(origin + "/docs")
        docs.wait_for_selector("#swagger-ui .opblock-summary-path")
        paths = docs.locator("#swagger-ui .opblock-summary-path").all_text_contents()
        assert "/search" in paths and "/items" in paths
        docs.goto(origin + "/redoc")
        docs.wait_for_selector("text=Rank catalog items by (weighted) attribute similarity to a query")
    finally:
        docs.close()
    assert blocked == []  # nothing was even asked of another host
    assert errors == []
