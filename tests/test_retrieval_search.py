"""The Retriever: ranking rule and equality with evaluation, weighted multi-attribute scores,
filters, exclusion, correctness marks, attention, checkpoint identity."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import make_asen, make_csv, write_image
from PIL import Image
from test_retrieval_index import INPUT_SIZE, build_tiny_index, tiny_checkpoint

from agman.data.layouts import open_dataset
from agman.retrieval.backends.faiss.store import FaissStore
from agman.retrieval.build import build_index
from agman.retrieval.info import IndexConfig, IndexMismatchError
from agman.retrieval.query import AttributeWeights
from agman.retrieval.ranking import exact_scores, rank_order
from agman.retrieval.search import NoModelError, QueryError, Retriever, UnknownItemError
from agman.retrieval.imagesets import ImageSet, from_csv, from_split


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    spec, ckpt, out = build_tiny_index(tmp_path_factory.mktemp("flat"))
    return spec, ckpt, Retriever.open(out)


def _brute(retriever: Retriever, q: np.ndarray, weights: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    n = len(retriever)
    total = np.zeros(n)
    for name, w in weights.items():
        a = retriever.attributes.index(name)
        total += w * exact_scores(np.asarray(retriever.store.vectors(a)), q[a]).astype(np.float64)
    order = rank_order(total, np.arange(n))
    return order, total[order]


# --------------------------------------------------------------------------- ranking
def test_search_matches_ranking_of_an_unfiltered_brute_force(flat):
    _spec, _, r = flat
    q = r.item_vectors(5)
    for weights in ({"attr0": 1.0}, {"attr0": 1.0, "attr1": 2.5}, {"attr1": 0.3}):
        res = r.search(q, weights, k=12)
        order, totals = _brute(r, q, weights)
        assert [h.row for h in res.hits] == order[:12].tolist()
        assert np.allclose([h.score for h in res.hits], totals[:12], atol=1e-6)


# --------------------------------------------------------------------------- weighting
def test_multi_attribute_score_is_the_weighted_sum_of_per_attribute_similarities(flat):
    spec, _, r = flat
    res = r.search_item(spec.split("test").paths[4], ["attr0:2", "attr1:0.5"], k=30)
    assert res.weights == {"attr0": 2.0, "attr1": 0.5}
    for h in res.hits:
        assert h.score == pytest.approx(2 * h.scores["attr0"] + 0.5 * h.scores["attr1"], abs=1e-6)
    scores = [h.score for h in res.hits]
    assert scores == sorted(scores, reverse=True)
    # scaling every weight does not change the ranking
    scaled = r.search_item(spec.split("test").paths[4], {"attr0": 4, "attr1": 1}, k=30)
    assert scaled.ids == res.ids


def test_attributes_are_parsed_once_into_weights():
    known = ["neckline_design", "sleeve_length"]

    def parse(spec):
        return AttributeWeights.parse(spec, known).as_dict()

    assert parse("neckline_design") == {"neckline_design": 1.0}
    assert parse(["neckline_design:2", "sleeve_length:0.5"]) == {"neckline_design": 2.0, "sleeve_length": 0.5}
    assert parse("neckline_design:1, sleeve_length:0") == {"neckline_design": 1.0}
    assert parse({"sleeve_length": 3}) == {"sleeve_length": 3.0}
    parsed = AttributeWeights.parse("sleeve_length:2,neckline_design", known)
    assert [(t.index, t.name, t.weight) for t in parsed] == [(1, "sleeve_length", 2.0), (0, "neckline_design", 1.0)]
    assert AttributeWeights.parse(parsed, known) is parsed  # parsed values pass through unchecked
    for bad, message in [
        ("collar", "unknown attribute 'collar'"),
        ("neckline_design:heavy", "must be a number"),
        ("neckline_design:-1", "from 0 to 1e\\+06"),
        ("neckline_design:1e308,sleeve_length:1e308", "from 0 to 1e\\+06"),  # #12.9: their sum would overflow
        ("neckline_design:1000001", "from 0 to 1e\\+06"),
        ({"neckline_design": 10**400}, "must be a number"),
        ("neckline_design:nan", "finite"),
        ("neckline_design:inf", "finite"),
        ("neckline_design,neckline_design:2", "twice"),
        ("sleeve_length:0", "above 0"),
        ("", "no attribute"),
        ([], "no attribute"),
    ]:
        with pytest.raises(QueryError, match=message):
            AttributeWeights.parse(bad, known)


# --------------------------------------------------------------------------- queries and filters
def test_image_query_is_the_item_query_and_exclude_self_drops_it(flat):
    spec, _, r = flat
    path = spec.root / spec.split("test").paths[7]
    by_image = r.search(path, "attr1", k=5)
    by_item = r.search_item(spec.split("test").paths[7], "attr1", k=5)
    assert by_image.ids == by_item.ids
    assert by_image.hits[0].id == spec.split("test").paths[7] and by_image.hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert by_image.query_id == spec.split("test").paths[7]
    without = r.search(path, "attr1", k=5, exclude_self=True)
    assert without.ids == by_image.ids[1:] + [without.ids[-1]] and spec.split("test").paths[7] not in without.ids
    assert r.search_item(spec.split("test").paths[7], "attr1", k=5, exclude_self=True).ids == without.ids
    assert without.candidates == len(r) - 1


def test_pil_image_and_embedding_queries(flat):
    spec, _, r = flat
    path = spec.root / spec.split("test").paths[2]
    with Image.open(path) as im:
        from_pil = r.search(im.convert("L"), "attr0", k=3)  # any mode is converted to RGB
    emb = r.embed(path)
    assert emb.shape == (2, 32) and emb.dtype == np.float32
    assert r.search(emb, "attr0", k=3).ids == r.search(path, "attr0", k=3).ids
    assert from_pil.query_id is None and all(h.correct is None for h in from_pil.hits)
    with pytest.raises(QueryError, match=r"\[2, 32\]"):
        r.search(np.zeros((3, 32), np.float32), "attr0")


def test_k_bounds_and_unknown_items(flat):
    spec, _, r = flat
    item = spec.split("test").paths[0]
    assert len(r.search_item(item, "attr0", k=1000).hits) == len(r)
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(QueryError, match="k must be"):
            r.search_item(item, "attr0", k=bad)
    with pytest.raises(UnknownItemError, match="no item 'nope'"):
        r.search_item("nope", "attr0")
    with pytest.raises(QueryError, match="unknown attribute"):
        r.search_item(item, "colour")


def test_correct_marks_follow_the_query_labels(flat):
    spec, _, r = flat
    item = r.item(spec.split("test").paths[3])
    res = r.search_item(item.id, ["attr0", "attr1"], k=30)
    for h in res.hits:
        assert h.correct == (h.labels["attr0"] == item.labels["attr0"] and h.labels["attr1"] == item.labels["attr1"])
    assert res.query_labels == item.labels


def test_annotated_only_filters_items_without_the_attribute(tmp_path):
    csv_path = make_csv(tmp_path / "cat", n=28)  # every 7th image has no 'pattern'
    images = from_csv(csv_path)
    spec = open_dataset(csv_path)
    ckpt = tiny_checkpoint(tmp_path / "c.pt", spec.attributes)
    for kind in ("flat", "hnsw", "ivf"):
        out = tmp_path / kind
        build_index(out, images, ckpt, config=IndexConfig(kind), batch_size=8)
        r = Retriever.open(out)
        unlabeled = {i for i in images.ids if "pattern" not in images.labels[images.ids.index(i)]}
        assert len(unlabeled) == 4
        everything = r.search_item("img/001.png", "pattern", k=100)
        assert unlabeled <= set(everything.ids)
        only = r.search_item("img/001.png", "pattern", k=100, annotated_only=True)
        assert set(only.ids) == set(images.ids) - unlabeled and only.candidates == 24
        assert all(h.correct is not None for h in only.hits)
        both = r.search_item("img/001.png", ["pattern", "collar"], k=100, annotated_only=True, exclude_self=True)
        assert len(both.hits) == 23
        # filtered results keep the exact order of the full ranking
        full_order = [i for i in everything.ids if i not in unlabeled]
        assert only.ids == full_order


def test_exact_search_breaks_ties_by_row_even_past_the_faiss_shortlist(tmp_path):
    """40 copies of one image tie exactly: the top k must be the lowest rows, as evaluation orders them."""
    folder = tmp_path / "imgs"
    write_image(folder / "a-000.png", seed=1)
    for i in range(1, 41):
        (folder / f"b-{i:03d}.png").write_bytes((folder / "a-000.png").read_bytes())
    for i in range(5):
        write_image(folder / f"c-{i:03d}.png", seed=100 + i)
    from agman.data.spec import Attribute

    ckpt = tiny_checkpoint(tmp_path / "c.pt", [Attribute("attr0", ("x", "y"))])
    from agman.retrieval.imagesets import from_directory

    out = tmp_path / "idx"
    build_index(out, from_directory(folder), ckpt, batch_size=1)
    r = Retriever.open(out)
    res = r.search_item("a-000.png", "attr0", k=5, exclude_self=True)
    assert [h.row for h in res.hits] == [1, 2, 3, 4, 5]
    assert len({h.score for h in res.hits}) == 1


@pytest.mark.parametrize("kind", ["hnsw", "ivf-pq"])
def test_approximate_search_rescores_exactly(tmp_path, kind):
    spec, _, out = build_tiny_index(tmp_path, kind=kind)
    r = Retriever.open(out, rerank=2, nprobe=4, ef_search=16)
    assert (r.store.config.rerank, r.store.config.nprobe, r.store.config.ef_search) == (2, 4, 16)
    res = r.search_item(spec.split("test").paths[0], {"attr0": 1, "attr1": 1}, k=4)
    q = r.item_vectors(0)
    for h in res.hits:
        exact = [float(exact_scores(np.asarray(r.store.vectors(a))[[h.row]], q[a])[0]) for a in range(2)]
        assert h.scores == pytest.approx({"attr0": exact[0], "attr1": exact[1]}, abs=1e-7)


# --------------------------------------------------------------------------- model and identity
def test_attention_map_and_overlay(flat):
    spec, _, r = flat
    path = spec.root / spec.split("test").paths[1]
    att = r.attention(path, "attr0")
    assert att.ndim == 2 and att.sum() == pytest.approx(1.0, abs=1e-4)
    overlay = r.attention_image(path, "attr0", alpha=0.5)
    assert overlay.size == (INPUT_SIZE, INPUT_SIZE)
    assert r.model_view(path).size == (INPUT_SIZE, INPUT_SIZE)
    with pytest.raises(QueryError):
        r.attention(path, "nope")


def test_the_attention_path_loads_the_query_image_once(flat, monkeypatch):
    import agman.data.images

    spec, _, r = flat
    opened = []
    load = agman.data.images.load_image
    monkeypatch.setattr(agman.data.images, "load_image", lambda p: opened.append(p) or load(p))
    path = spec.root / spec.split("test").paths[1]
    assert r.attention_image(path, "attr0").size == (INPUT_SIZE, INPUT_SIZE)
    assert opened == [path]
    opened.clear()
    r.search(path, ["attr0", "attr1:2"], k=3)
    assert opened == [path]


def test_model_without_attention_gives_none(tmp_path):
    spec = open_dataset(make_asen(tmp_path / "ds", n_per_split=(12, 10, 10)))
    ckpt = tiny_checkpoint(tmp_path / "csn.pt", spec.attributes, model="csn")
    build_index(tmp_path / "idx", from_split(spec, "test"), ckpt)
    r = Retriever.open(tmp_path / "idx")
    assert r.attention(spec.root / spec.split("test").paths[0], "attr0") is None
    assert r.attention_image(spec.root / spec.split("test").paths[0], "attr0") is None


def test_retriever_refuses_another_checkpoint_and_works_without_one_for_items(tmp_path):
    spec, ckpt, out = build_tiny_index(tmp_path)
    other = tiny_checkpoint(tmp_path / "other.pt", spec.attributes, seed=9)
    with pytest.raises(IndexMismatchError, match="cannot be mixed"):
        Retriever.open(out, other, load_model=True)
    moved = tmp_path / "moved.pt"
    ckpt.rename(moved)
    r = Retriever.open(out)
    assert len(r.search_item(spec.split("test").paths[0], "attr0", k=3).hits) == 3  # no model needed
    with pytest.raises(NoModelError, match="not found"):
        r.search(spec.root / spec.split("test").paths[0], "attr0")
    r2 = Retriever.open(out, moved)
    assert len(r2.search(spec.root / spec.split("test").paths[0], "attr0", k=3).hits) == 3


def test_concurrent_searches_agree_with_serial_ones(flat):
    spec, _, r = flat
    paths = [spec.root / p for p in spec.split("test").paths[:6]]
    serial = [r.search(p, "attr0", k=5).ids for p in paths]
    out: dict[int, list[str]] = {}

    def work(i):
        out[i] = r.search(paths[i % 6], "attr0", k=5).ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(out[i] == serial[i % 6] for i in range(12))


def test_incomplete_index_serves_committed_rows_only(tmp_path):
    spec = open_dataset(make_asen(tmp_path / "ds", n_per_split=(12, 10, 20)))
    ckpt = tiny_checkpoint(tmp_path / "c.pt", spec.attributes)
    every = from_split(spec, "test")
    out = tmp_path / "idx"
    build_index(out, ImageSet(every.ids[:10], every.paths[:10], every.labels[:10]), ckpt)

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(out, every, ckpt, add=True, batch_size=4, shard_size=4, on_shard=stop)
    idx = FaissStore(out)
    assert idx.unfinished and len(idx) == 10
    assert len(Retriever(idx).search_item(every.ids[0], "attr0", k=100).hits) == 10


def test_approximate_search_that_finds_too_few_falls_back_to_an_exact_scan(tmp_path):
    csv_path = make_csv(tmp_path / "cat", n=40)
    spec = open_dataset(csv_path)
    ckpt = tiny_checkpoint(tmp_path / "c.pt", spec.attributes)
    out = tmp_path / "ivf"
    build_index(out, from_csv(csv_path), ckpt, config=IndexConfig("ivf", nlist=8), batch_size=8)
    r = Retriever.open(out, nprobe=1, rerank=1)
    res = r.search_item("img/001.png", "pattern", k=30, annotated_only=True)
    assert len(res.hits) == 30 == min(30, res.candidates)
    exact_r = Retriever.open(out, nprobe=8, rerank=40)
    assert res.ids == exact_r.search_item("img/001.png", "pattern", k=30, annotated_only=True).ids
