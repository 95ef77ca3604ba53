"""The catalog index: image-set sources, building with a real (tiny) model, resume, --add, identity checks, index types.

``tiny_checkpoint`` / ``build_tiny_index`` are also used by the search, CLI and service tests.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_asen, make_csv, write_image

from agman.data.layouts import open_dataset
from agman.engine.checkpoint import save_checkpoint
from agman.models import build_model
from agman.retrieval.backends.faiss.index import auto_nlist, auto_pq_m, factory_string
from agman.retrieval.backends.faiss.store import FaissStore
from agman.retrieval.build import build_index
from agman.retrieval.filters import Filter, annotated
from agman.retrieval.info import (
    INDEX_TYPES,
    CatalogIndexError,
    IndexConfig,
    IndexExistsError,
    IndexMismatchError,
)
from agman.retrieval.items import read_items
from agman.retrieval.imagesets import ImageSet, from_csv, from_directory, from_split

INPUT_SIZE = 64


def tiny_checkpoint(path: Path, attributes, seed: int = 0, model: str = "agman") -> Path:
    """A real, randomly initialised small model saved as a checkpoint."""
    torch.manual_seed(seed)
    net = build_model(model, len(attributes), backbone="resnet18", embedding_dim=32, attention_dim=16)
    return save_checkpoint(path, model=net, model_name=model, attributes=attributes, input_size=INPUT_SIZE,
                           crop_ratio=1.0)


def tiny_dataset(root: Path, n_test: int = 30) -> Path:
    return make_asen(root, n_per_split=(12, 10, n_test), values=(3, 2))


def build_tiny_index(tmp: Path, kind: str = "flat", part: str = "all", seed: int = 0, **kwargs):
    """(spec, checkpoint, index dir) for the test split of a small ASEN dataset."""
    spec = open_dataset(tiny_dataset(tmp / "ds"))
    ckpt = tiny_checkpoint(tmp / f"ckpt{seed}.pt", spec.attributes, seed=seed)
    out = tmp / f"index-{kind}-{part}-{seed}"
    build_index(out, from_split(spec, "test", part), ckpt, config=IndexConfig(kind=kind), batch_size=8, **kwargs)
    return spec, ckpt, out


# --------------------------------------------------------------------------- sources
def test_directory_source_is_sorted_relative_ids(tmp_path):
    for name in ("b/2.png", "a.jpg", "b/1.PNG", "notes.txt", ".hidden.png"):
        p = tmp_path / "imgs" / name
        if name.endswith("txt"):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("x")
        else:
            write_image(p, seed=len(name))
    s = from_directory(tmp_path / "imgs")
    assert s.ids == ["a.jpg", "b/1.PNG", "b/2.png"]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in s.paths)
    assert s.labels == [{}, {}, {}]
    with pytest.raises(FileNotFoundError):
        from_directory(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        from_directory(tmp_path / "empty")


def test_csv_source_labels_and_path_only(tmp_path):
    csv_path = make_csv(tmp_path / "cat", n=20)
    s = from_csv(csv_path)
    assert len(s) == 20 and s.ids == sorted(s.ids)
    row = s.ids.index("img/007.png")  # 7 % 7 == 0: no pattern
    assert s.labels[row] == {"collar": "v"}
    assert s.labels[s.ids.index("img/001.png")] == {"collar": "v", "pattern": "stripes"}
    only = tmp_path / "cat" / "only.csv"
    only.write_text("path\nimg/001.png\nimg/000.png\n")
    s2 = from_csv(only)
    assert s2.ids == ["img/000.png", "img/001.png"] and s2.labels == [{}, {}]
    bad = tmp_path / "cat" / "bad.csv"
    bad.write_text("file,collar\nx.png,v\n")
    with pytest.raises(ValueError, match="bad.csv"):
        from_csv(bad)


def test_split_source_parts(tmp_path):
    spec = open_dataset(tiny_dataset(tmp_path / "ds"))
    every = from_split(spec, "test", "all")
    cands = from_split(spec, "test", "candidates")
    queries = from_split(spec, "test", "queries")
    s = spec.split("test")
    assert len(every) == len(s)
    assert cands.ids == [s.paths[i] for i in np.unique(s.candidates[:, 0])]
    assert set(cands.ids).isdisjoint(queries.ids)  # make_asen: images are either queries or candidates
    first = cands.ids.index(s.paths[int(s.candidates[0, 0])])
    a, v = int(s.candidates[0, 1]), int(s.candidates[0, 2])
    assert cands.labels[first][spec.attributes[a].name] == spec.attributes[a].values[v]
    with pytest.raises(ValueError, match="part"):
        from_split(spec, "test", "some")
    with pytest.raises(KeyError):
        from_split(spec, "nope")


def test_image_set_rejects_duplicate_ids():
    with pytest.raises(ValueError, match="twice"):
        ImageSet(["a", "a"], ["/x/a", "/y/a"])


# --------------------------------------------------------------------------- configuration
def test_index_config_and_factory_strings():
    assert set(INDEX_TYPES) == {"flat", "hnsw", "ivf", "ivf-sq8", "ivf-pq"}
    with pytest.raises(ValueError, match="unknown index type"):
        IndexConfig(kind="lsh")
    with pytest.raises(ValueError, match="nprobe"):
        IndexConfig(kind="ivf", nprobe=0)
    assert factory_string(IndexConfig("flat"), 512, 10)[0] == "Flat"
    assert factory_string(IndexConfig("hnsw"), 512, 10)[0] == "HNSW32,Flat"
    assert factory_string(IndexConfig("ivf"), 512, 1_000_000)[0] == "IVF4000,Flat"
    assert factory_string(IndexConfig("ivf-sq8", nlist=64), 512, 10_000)[0] == "IVF64,SQ8"
    assert factory_string(IndexConfig("ivf-pq"), 512, 1_000_000)[0] == "IVF4000,PQ64x8"
    assert auto_nlist(10) == 1 and auto_nlist(10_000) == 256
    assert auto_pq_m(512) == 64 and 48 % auto_pq_m(48) == 0
    cfg = IndexConfig("ivf", nprobe=7)
    assert cfg.tuned(nprobe=None, rerank=3) == IndexConfig("ivf", nprobe=7, rerank=3)
    with pytest.raises(ValueError, match="not a search-time setting"):
        cfg.tuned(nlist=4)


# --------------------------------------------------------------------------- building
def test_build_writes_the_documented_directory(tmp_path):
    spec, _ckpt, out = build_tiny_index(tmp_path, shard_size=8)
    meta = json.loads((out / "index.json").read_text())
    assert meta["count"] == 30 and meta["dim"] == 32 and meta["index"]["kind"] == "flat"
    assert meta["format_version"] == 3 and "model_name" not in meta  # since v2: the model name once, in "checkpoint"
    assert meta["root"] == str((tmp_path / "ds").resolve()) and meta["deleted"] == [] and meta["metadata"] == {}
    first = json.loads((out / "items.jsonl").read_text().splitlines()[0])
    assert first["path"] == spec.split("test").paths[0]  # relative to the catalog root: the folder can move
    assert meta["checkpoint"]["model_name"] == "agman" and len(meta["checkpoint"]["identity"]) == 16
    assert [a["name"] for a in meta["attributes"]] == ["attr0", "attr1"]
    assert not (out / "progress.json").exists() and not (out / "shards").exists()
    assert not (out / "faiss").exists()  # flat: the vector files are the index
    items = read_items(out / "items.jsonl", root=meta["root"])
    assert [it.id for it in items] == spec.split("test").paths
    assert items[1].labels == {"attr0": "attr0_v1", "attr1": "attr1_v1"}
    idx = FaissStore(out)
    for a in range(2):
        v = idx.vectors(a)
        assert v.shape == (30, 32)
        assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    labelled = idx.select(Filter("", annotated(["attr0"])))  # the rows annotated with attr0 (predictions' candidates)
    assert labelled.rows.tolist() == list(range(30))
    assert idx.memory_bytes()["vectors"] == 30 * 32 * 4


def test_index_embeddings_equal_the_one_pass_embedding(tmp_path):
    """The stored vectors are embed_all's, i.e. equal to per-attribute forward passes (to 1e-5)."""
    from agman.engine.checkpoint import load_model
    from agman.engine.embed import embed_images

    spec, ckpt, out = build_tiny_index(tmp_path)
    model, info = load_model(ckpt)
    paths = [str(spec.root / p) for p in spec.split("test").paths]
    ref = embed_images(model, paths, None, input_size=info.input_size, crop_ratio=info.crop_ratio, batch_size=8)
    idx = FaissStore(out)
    for a in range(2):
        assert np.array_equal(np.asarray(idx.vectors(a)), ref[:, a])
    from agman.data.images import load_image
    from agman.data.transforms import build_transform

    x = torch.stack([build_transform(INPUT_SIZE, crop_ratio=1.0)(load_image(p)) for p in paths[:4]])
    with torch.inference_mode():
        single = model(x, torch.full((4,), 1, dtype=torch.long)).embedding.numpy()
    assert np.allclose(single, ref[:4, 1], atol=1e-5)


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    spec = open_dataset(tiny_dataset(tmp_path / "ds"))
    ckpt = tiny_checkpoint(tmp_path / "c.pt", spec.attributes)
    images = from_split(spec, "test")

    def crash_after_first_shard(done, total):
        if done == 8:
            raise KeyboardInterrupt

    out = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        build_index(out, images, ckpt, batch_size=4, shard_size=8, on_shard=crash_after_first_shard)
    progress = json.loads((out / "progress.json").read_text())
    shards = json.loads((out / "shards" / "rank-000.json").read_text())
    assert progress["planned"] == 30 and [(s["start"], s["count"]) for s in shards] == [(0, 8)]
    assert FaissStore(out).count == 0  # nothing searchable until the run completes

    # a broken image stops the run with its path; shards before it are kept
    broken = Path(images.paths[13])
    good_bytes = broken.read_bytes()
    broken.write_bytes(b"not an image")
    with pytest.raises(Exception, match=broken.name):
        build_index(out, images, ckpt, batch_size=4, shard_size=8)
    assert len(json.loads((out / "shards" / "rank-000.json").read_text())) == 1
    broken.write_bytes(good_bytes)

    seen = []
    summary = build_index(out, images, ckpt, batch_size=4, shard_size=8, on_shard=lambda d, t: seen.append(d))
    assert summary.resumed_from == 8 and summary.embedded == 22 and summary.count == 30
    assert seen == [16, 24, 30]
    assert not (out / "progress.json").exists()

    fresh = tmp_path / "fresh"
    build_index(fresh, images, ckpt, batch_size=4, shard_size=8)
    for a in range(2):
        assert np.array_equal(np.asarray(FaissStore(out).vectors(a)), np.asarray(FaissStore(fresh).vectors(a)))


def test_add_appends_new_images_only_and_grows_faiss(tmp_path):
    spec = open_dataset(tiny_dataset(tmp_path / "ds"))
    ckpt = tiny_checkpoint(tmp_path / "c.pt", spec.attributes)
    every = from_split(spec, "test")
    first = ImageSet(every.ids[:20], every.paths[:20], every.labels[:20])
    out = tmp_path / "idx"
    build_index(out, first, ckpt, config=IndexConfig("hnsw"), batch_size=8)
    with pytest.raises(IndexExistsError, match="--add"):
        build_index(out, every, ckpt)
    summary = build_index(out, every, ckpt, add=True, batch_size=8)
    assert (summary.added, summary.skipped, summary.count, summary.embedded) == (10, 20, 30, 10)
    idx = FaissStore(out)
    assert [it.id for it in idx.items] == every.ids
    assert idx.faiss_index(0).ntotal == 30 and idx.kind == "hnsw"
    again = build_index(out, every, ckpt, add=True)
    assert (again.added, again.skipped, again.embedded) == (0, 30, 0)
    # the same file under another id is the same item; an id reused for another file is an error
    alias = ImageSet(["alias"], [every.paths[0]])
    assert build_index(out, alias, ckpt, add=True).added == 0
    clash = ImageSet([every.ids[0]], [every.paths[1]])
    with pytest.raises(CatalogIndexError, match="ids must be unique"):
        build_index(out, clash, ckpt, add=True)
    with pytest.raises(CatalogIndexError, match="type 'hnsw'"):
        build_index(out, every, ckpt, add=True, config=IndexConfig("flat"))


def test_ivf_index_retrains_once_the_catalog_doubles(tmp_path):
    spec = open_dataset(tiny_dataset(tmp_path / "ds", n_test=40))
    ckpt = tiny_checkpoint(tmp_path / "c.pt", spec.attributes)
    every = from_split(spec, "test")
    out = tmp_path / "idx"
    build_index(out, ImageSet(every.ids[:12], every.paths[:12]), ckpt, config=IndexConfig("ivf-sq8"))
    build_index(out, ImageSet(every.ids[:20], every.paths[:20]), ckpt, add=True)
    meta = json.loads((out / "index.json").read_text())
    assert meta["faiss"]["0"]["trained_on"] == 12  # grown in place
    build_index(out, every, ckpt, add=True)
    meta = json.loads((out / "index.json").read_text())
    assert meta["faiss"]["0"]["trained_on"] == 40 and meta["count"] == 40  # retrained


def test_other_checkpoint_is_refused_naming_both_identities(tmp_path):
    spec, _ckpt, out = build_tiny_index(tmp_path)
    other = tiny_checkpoint(tmp_path / "other.pt", spec.attributes, seed=1)
    meta = json.loads((out / "index.json").read_text())
    with pytest.raises(IndexMismatchError) as err:
        build_index(out, from_split(spec, "valid"), other, add=True)
    from agman.engine.checkpoint import load_checkpoint

    assert meta["checkpoint"]["identity"] in str(err.value)
    assert load_checkpoint(other)["identity"] in str(err.value)
    assert json.loads((out / "index.json").read_text())["count"] == 30  # untouched


def test_output_folder_that_is_not_an_index_is_refused(tmp_path):
    spec = open_dataset(tiny_dataset(tmp_path / "ds"))
    ckpt = tiny_checkpoint(tmp_path / "c.pt", spec.attributes)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("x")
    with pytest.raises(CatalogIndexError, match="not an agman index"):
        build_index(tmp_path / "busy", from_split(spec, "test"), ckpt)


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivf-sq8", "ivf-pq"])
def test_every_index_type_builds_and_finds_exact_neighbours_on_a_small_catalog(tmp_path, kind):
    from agman.retrieval.search import Retriever

    _, _, out = build_tiny_index(tmp_path, kind=kind)
    exact = FaissStore(out).vectors(0)
    r = Retriever.open(out)
    assert r.store.kind == kind
    q = r.item_vectors(3)
    res = r.search(q, "attr0", k=5)
    truth = np.lexsort((np.arange(len(exact)), -np.einsum("ij,j->i", np.asarray(exact), q[0])))[:5]
    assert [h.row for h in res.hits] == truth.tolist()  # tiny catalog: the shortlist holds everything
    assert not res.exact


# --------------------------------------------------------------------------- index.json
def test_a_version_1_index_is_read_and_rewritten_as_version_3_when_grown(tmp_path):
    """Folders written before IndexInfo (format 1: model_name stored twice, absolute image paths, no
    catalog root) keep working, and keep their absolute paths when grown."""
    from agman.retrieval.search import Retriever

    spec = open_dataset(tiny_dataset(tmp_path / "ds"))
    ckpt = tiny_checkpoint(tmp_path / "c.pt", spec.attributes)
    every = from_split(spec, "test")
    out = tmp_path / "idx"
    build_index(out, ImageSet(every.ids[:20], every.paths[:20], every.labels[:20]), ckpt, batch_size=8)
    meta = json.loads((out / "index.json").read_text())
    v1 = {k: v for k, v in meta.items() if k not in ("root", "metadata", "deleted")}
    v1 = dict(v1, format_version=1, model_name=meta["checkpoint"]["model_name"])
    v1["index"] = dict(meta["index"], future_key=1)  # keys a reader does not know are ignored
    (out / "index.json").write_text(json.dumps(v1))
    assert meta["root"] is None  # an ImageSet without a root: absolute paths, as formats 1 and 2 stored them
    assert json.loads((out / "items.jsonl").read_text().splitlines()[3])["path"] == every.paths[3]
    store = FaissStore(out)
    assert store.info.model_name == "agman" and store.info.count == 20 and store.info.dim == 32
    assert store.info.root is None and store.items[3].path == every.paths[3]
    r = Retriever.open(out)
    assert len(r.search_item(every.ids[0], "attr0", k=5).hits) == 5
    assert r.search(every.paths[2], "attr0", k=1, exclude_self=True).hits[0].id != every.ids[2]
    build_index(out, every, ckpt, add=True, batch_size=8)  # a source with a root: the index keeps none
    grown = json.loads((out / "index.json").read_text())
    assert grown["format_version"] == 3 and "model_name" not in grown and grown["count"] == 30
    assert grown["root"] is None
    assert json.loads((out / "items.jsonl").read_text().splitlines()[25])["path"] == every.paths[25]
    assert {k: v for k, v in grown.items() if k not in ("count", "updated", "format_version", "faiss", "files")} == {
        k: v for k, v in meta.items() if k not in ("count", "updated", "format_version", "faiss", "files")
    }
    assert grown["files"]["items.jsonl"]["size"] > meta["files"]["items.jsonl"]["size"]  # re-recorded


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small flat index, built once for the tests that damage copies of it."""
    return build_tiny_index(tmp_path_factory.mktemp("built"))[2]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: [m], "Input should be an object"),
        (lambda m: {k: v for k, v in m.items() if k != "dim"}, "dim is missing"),
        (lambda m: dict(m, dim="32"), "dim: Input should be a valid integer (got '32')"),
        (lambda m: dict(m, count=-1), "count: Input should be greater than or equal to 0 (got -1)"),
        (lambda m: dict(m, checkpoint=dict(m["checkpoint"], identity=7)), "checkpoint.identity: Input should be"),
        (lambda m: dict(m, checkpoint=dict(m["checkpoint"], crop_ratio=None)), "checkpoint.crop_ratio: Input should"),
        (lambda m: dict(m, attributes=[{"name": "a", "values": "xyz"}]), "attributes.0.values: Input should"),
        (lambda m: dict(m, attributes=[]), "attributes: List should have at least 1 item"),
        (lambda m: dict(m, index={"kind": "lsh"}), "index: unknown index type 'lsh'"),
        (lambda m: dict(m, index=dict(m["index"], nprobe="many")), "index.nprobe: Input should be a valid integer"),
        (lambda m: dict(m, faiss={"9": {"factory": "Flat", "trained_on": 1}}), "faiss: attribute 9 does not exist"),
        (lambda m: dict(m, format_version=99), "format version 99; upgrade agman"),
    ],
)
def test_a_malformed_index_json_is_an_error_naming_the_file_and_the_key(built, tmp_path, edit, message):
    from agman.cli import main

    out = shutil.copytree(built, tmp_path / "idx")
    meta = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps(edit(meta)))
    with pytest.raises(CatalogIndexError) as err:
        FaissStore(out)
    assert str(out / "index.json") in str(err.value) and message in str(err.value)
    assert main(["search", "--index", str(out), "--item", "x", "-a", "attr0"]) == 1  # a damaged index: exit 1


def test_index_json_that_is_not_json(built, tmp_path):
    out = shutil.copytree(built, tmp_path / "idx")
    (out / "index.json").write_text("{ not json")
    with pytest.raises(CatalogIndexError, match="unreadable index metadata"):
        FaissStore(out)
