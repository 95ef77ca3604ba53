"""What a search returns: predicted values (a k-NN vote per attribute), match summaries, the result
as a sequence, a DataFrame and an HTML grid (rendered through IPython's display machinery), readable
reprs, every accepted form of query image, and items named by path."""
from __future__ import annotations

import base64
import dataclasses
import io
import re
import sys
from collections import Counter
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image
from test_retrieval_index import build_tiny_index

from agman.retrieval.ranking import exact_scores, rank_order
from agman.retrieval.results import HTML_MAX_HITS, SearchResult, vote
from agman.retrieval.search import QueryError, Retriever, UnknownItemError, query_input


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    spec, ckpt, out = build_tiny_index(tmp_path_factory.mktemp("results"))
    return spec, Retriever.open(out)


def _knn_vote(r: Retriever, q: np.ndarray, name: str, k: int, excluded=()) -> tuple[str, int, int]:
    """The vote recomputed by brute force: top k labelled rows by attribute ``name`` (ties by row)."""
    a = r.attributes.index(name)
    rows = np.array([i for i in range(len(r)) if name in r.store.item(i).labels and i not in excluded])
    scores = exact_scores(np.asarray(r.store.vectors(a))[rows], q[a])
    top = rows[rank_order(scores.astype(np.float64), rows)[:k]]
    values = [r.store.item(int(i)).labels[name] for i in top]
    counts = Counter(values)
    best = max(counts.values())
    winner = next(v for v in values if counts[v] == best)  # tie: the best-ranked neighbour's value
    return winner, best, len(values)


# --------------------------------------------------------------------------- predicted values
def test_predicted_value_is_the_vote_of_the_k_nearest_labelled_items_per_attribute(flat):
    spec, r = flat
    for row in (0, 3, 7):
        q = r.item_vectors(row)
        res = r.search(q, "attr0", k=5)
        assert set(res.predicted) == {"attr0", "attr1"}  # every attribute, not only the queried one
        for name, p in res.predicted.items():
            assert (p.value, p.votes, p.voters) == _knn_vote(r, q, name, 5)
            assert p.share == pytest.approx(p.votes / p.voters)
            assert sum(p.counts.values()) == p.voters and list(p.counts)[0] == p.value
    # rows left out of the search do not vote
    item = spec.split("test").paths[4]
    row = r.row(item)
    res = r.search_item(item, "attr1", k=3, exclude_self=True)
    for name, p in res.predicted.items():
        assert (p.value, p.votes, p.voters) == _knn_vote(r, r.item_vectors(row), name, 3, excluded={row})
    assert r.search_item(item, "attr1", k=3, predict=False).predicted == {}
    assert set(r.search_item(item, "attr1", k=3, predict=["attr1"]).predicted) == {"attr1"}


def test_vote_ties_go_to_the_best_ranked_neighbour():
    p = vote("colour", ["red", "blue", "blue", "red", "green"])
    assert (p.value, p.votes, p.voters) == ("red", 2, 5) and list(p.counts) == ["red", "blue", "green"]
    assert vote("colour", ["blue", "red", "red"]).value == "red"
    assert vote("colour", []) is None


def test_match_summary_counts_hits_with_the_reference_value(flat):
    spec, r = flat
    item = r.item(spec.split("test").paths[3])
    res = r.search_item(item.id, ["attr0", "attr1:2"], k=8)
    for name in ("attr0", "attr1"):
        s = res.summary[name]
        assert (s.value, s.source, s.queried) == (item.labels[name], "query", True)
        assert s.matches == sum(h.labels[name] == item.labels[name] for h in res)
        assert s.labelled == 8 and s.unknown == 0
        assert all(h.matches[name] == (h.labels[name] == item.labels[name]) for h in res)
    assert str(res.summary["attr0"]).startswith(f"attr0: {res.summary['attr0'].matches} of 8 match")
    # an image the index does not hold has no labels: the reference is the predicted value
    image = Image.open(spec.root / spec.split("test").paths[3]).copy()
    res = r.search(image.rotate(90), "attr1", k=6)
    assert res.query_labels == {}
    s = res.summary["attr1"]
    assert s.source == "predicted" and s.value == res.predicted["attr1"].value
    assert not res.summary["attr0"].queried
    body = res.to_dict()
    assert body["predicted"]["attr1"]["value"] == s.value and body["summary"]["attr1"]["source"] == "predicted"
    assert set(body["results"][0]["matches"]) == {"attr0", "attr1"}


# --------------------------------------------------------------------------- the result object
def test_a_result_is_a_sequence_of_hits_with_readable_reprs(flat):
    spec, r = flat
    res = r.search_item(spec.split("test").paths[1], "attr0", k=7)
    assert len(res) == 7 and list(res) == res.hits and res[0] is res.hits[0] and res[-1].rank == 7
    assert [h.rank for h in res[2:4]] == [3, 4]
    text = repr(res)
    assert text.startswith(f"SearchResult(query {spec.split('test').paths[1]}: attr0:1; 7 of 30 items (exact)")
    assert "... 2 more" in text and "predicted: attr0=" in text
    assert re.fullmatch(r"Hit\(#1 '.+' score=-?\d\.\d{4}, (match|no match)\)", repr(res[0]))
    fresh = Retriever.open(r.store.location)
    assert repr(fresh) == (f"Retriever({r.store.location!r}: 30 items, flat (exact), agman model not loaded, "
                           "attributes attr0, attr1)")
    fresh.model  # noqa: B018
    assert "agman model loaded" in repr(fresh)


def test_to_pandas_and_its_error_without_pandas(flat, monkeypatch):
    spec, r = flat
    res = r.search_item(spec.split("test").paths[2], "attr0:1,attr1:0.5", k=4)
    df = res.to_pandas()
    assert list(df.columns) == ["rank", "id", "score", "score:attr0", "score:attr1", "attr0", "attr1", "correct",
                                "path"]
    assert df["id"].tolist() == res.ids and df["score:attr1"].tolist() == [h.scores["attr1"] for h in res]
    assert df["attr0"].tolist() == [h.labels["attr0"] for h in res]
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(ImportError, match=r"pip install 'agman\[pandas\]'"):
        res.to_pandas()


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_jupyter_renders_the_result_as_an_html_grid(flat):
    """Rendered the way a notebook does: IPython's display formatter builds the mime bundle."""
    from IPython.core.formatters import DisplayFormatter

    spec, r = flat
    res = r.search_item(spec.split("test").paths[5], "attr1", k=4)
    bundle, _ = DisplayFormatter().format(res)
    assert bundle["text/plain"] == repr(res)
    page = _Tags()
    page.feed(bundle["text/html"])
    assert len(page.images) == 1 + 4  # the query, then each hit
    for uri in page.images:
        assert uri.startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as thumb:
            assert max(thumb.size) <= 112
    text = " ".join(page.text)
    assert "#1" in text and res[0].id in text and f"predicted: {res.predicted['attr0']}" in text
    # bounded: at most HTML_MAX_HITS tiles, the rest counted; an image that is gone is a placeholder
    many = r.search_item(spec.split("test").paths[5], "attr1", k=30)
    many.hits = [dataclasses.replace(h, rank=i + 1) for i, h in enumerate(many.hits * 2)]
    many.hits[0].path = "/nowhere/gone.png"
    page = _Tags()
    page.feed(many._repr_html_())
    assert len(page.images) == HTML_MAX_HITS  # the query + 49 readable hits (one is gone)
    assert "(no image)" in " ".join(page.text) and f"{60 - HTML_MAX_HITS} more hits" in " ".join(page.text)


def test_html_escapes_ids_and_shows_in_memory_query_images(flat):
    spec, r = flat
    image = Image.open(spec.root / spec.split("test").paths[0]).convert("RGB")
    res = r.search(image, "attr0", k=2)
    res.hits[0].id = "<b>x&y</b>"
    page = res._repr_html_()
    assert "&lt;b&gt;x&amp;y&lt;/b&gt;" in page and "<b>x&y</b>" not in page
    assert page.count("data:image/jpeg;base64,") == 3  # the in-memory query has a thumbnail too
    assert isinstance(res, SearchResult) and res.query_path is None


# --------------------------------------------------------------------------- query forms
def test_images_as_paths_pil_numpy_and_tensors_give_the_same_search(flat):
    spec, r = flat
    path = spec.root / spec.split("test").paths[6]
    rgb = np.array(Image.open(path).convert("RGB"))
    by_path = r.search(path, "attr0", k=5)
    forms = {
        "pil": Image.fromarray(rgb),
        "numpy uint8 HxWx3": rgb,
        "numpy uint8 HxWx4": np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2),
        "tensor uint8 3xHxW": torch.from_numpy(rgb).permute(2, 0, 1),
        "tensor float 1x3xHxW": torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255,
    }
    for name, query in forms.items():
        res = r.search(query, "attr0", k=5)
        assert res.ids == by_path.ids, name
        assert [h.score for h in res] == pytest.approx([h.score for h in by_path], abs=1e-5), name
    # embeddings are 2-D: a float array or tensor [A, D] is taken as precomputed embeddings
    emb = r.embed(rgb)
    assert emb.shape == (2, 32)
    assert r.search(emb, "attr0", k=5).ids == by_path.ids
    assert r.search(torch.from_numpy(emb), "attr0", k=5).ids == by_path.ids
    assert r.attention(rgb, "attr0").shape == r.attention(path, "attr0").shape


@pytest.mark.parametrize("query, words", [
    (np.zeros((8, 8, 3), np.float32), "float32 [8, 8, 3]"),
    (np.zeros((8, 8), np.uint8), "uint8 [8, 8]"),
    (np.zeros((8, 8, 2), np.uint8), "uint8 [8, 8, 2]"),
    (torch.zeros(8, 8, 3), "float32 [8, 8, 3]"),
    (torch.full((3, 4, 4), 2.0), "[0, 1]"),
    (torch.zeros(2, 3, 4, 4), "[2, 3, 4, 4]"),
    (42, "not int"),
])
def test_queries_that_are_neither_image_nor_embeddings_are_refused(query, words):
    with pytest.raises(QueryError) as err:
        query_input(query)
    assert words in str(err.value)


def test_embeddings_are_refused_where_an_image_is_needed(flat):
    _, r = flat
    with pytest.raises(QueryError, match="expected an image"):
        r.embed(np.zeros((2, 32), np.float32))


def test_items_are_found_by_id_or_by_image_path(flat, monkeypatch):
    spec, r = flat
    item_id = spec.split("test").paths[8]
    absolute = spec.root / item_id
    assert r.find_item(item_id).id == r.find_item(absolute).id == r.find_item(str(absolute)).id == item_id
    monkeypatch.chdir(spec.root)
    assert r.find_item(f"./{item_id}").id == item_id  # a path relative to the working directory
    with pytest.raises(UnknownItemError, match="neither an item id nor the path of an indexed image"):
        r.find_item("images/test/nope.png")
    # the id-only methods (what the HTTP service calls) do not look paths up
    with pytest.raises(UnknownItemError):
        r.search_item(str(absolute), "attr0")
    with pytest.raises(UnknownItemError):
        r.item(str(absolute))
