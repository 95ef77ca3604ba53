"""Attribute extension: a trained model grown by an attribute keeps every old attribute's embeddings
bit for bit (models/extension.py, engine/extend.py), and an index grows in place (retrieval/extend.py)."""
from __future__ import annotations

import json
import shutil
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from agman.data.layouts import open_dataset
from agman.data.spec import DatasetError
from agman.engine.checkpoint import CheckpointError, load_checkpoint, load_model
from agman.engine.config import from_dict
from agman.engine.embed import embed_images
from agman.engine.evaluate import evaluate_embeddings
from agman.engine.extend import extend
from agman.engine.train import train
from agman.errors import InvalidValueError
from agman.models.extension import (
    ExtendedModel,
    ExtensionError,
    NewAttributes,
    attribute_identities,
)
from agman.models.registry import build_model
from agman.retrieval.backends import extend_index
from agman.retrieval.backends.faiss.layout import IndexLayout
from agman.retrieval.build import build_index
from agman.retrieval.info import IndexInfo, IndexMismatchError
from agman.retrieval.search import Retriever
from agman.retrieval.imagesets import from_split

COLOURS = np.array([[230, 30, 30], [30, 200, 30], [40, 40, 230]], dtype=np.int16)


def make_quadrants(root, names=("a0", "a1", "a2"), n=(36, 18, 18), size=32, seed=0):
    """An ASEN-layout set that can be learned: attribute ``k``'s value is the colour of quadrant ``k``
    (3 values), the fourth quadrant and the noise are nuisance; every image carries every attribute."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta.json").write_text(json.dumps({
        "ATTRIBUTES": list(names), "ATTRIBUTES_NUM": {a: 3 for a in names},
        "ATTRIBUTES_VALUES": {a: [f"{a}_{c}" for c in ("red", "green", "blue")] for a in names}}))
    h = size // 2
    corners = [(0, 0), (0, h), (h, 0), (h, h)]
    for split, count in zip(("train", "valid", "test"), n):
        paths, rows = [], []
        for i in range(count):
            values = rng.integers(0, 3, 3)
            image = rng.integers(0, 60, (size, size, 3)).astype(np.int16)
            for k, (y, x) in enumerate(corners[:3]):
                image[y:y + h, x:x + h] += COLOURS[values[k]] // 2
            image[h:, h:] += rng.integers(0, 120, 3).astype(np.int16)
            path = f"images/{split}/{i:03d}.png"
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / path)
            paths.append(path)
            rows.append([(j, int(values[j])) for j in range(len(names))])
        (root / f"filenames_{split}.txt").write_text("".join(p + "\n" for p in paths))
        if split == "train":
            (root / "label_train.txt").write_text(
                "".join(f"{i} " + " ".join(f"{a} {v}" for a, v in r) + "\n" for i, r in enumerate(rows)))
        else:
            q = [f"{i} {a} {v}\n" for i, r in enumerate(rows) for a, v in r if i % 3 == 0]
            c = [f"{i} {a} {v}\n" for i, r in enumerate(rows) for a, v in r if i % 3]
            (root / f"query_{split}.txt").write_text("".join(q))
            (root / f"candidate_{split}.txt").write_text("".join(c))
    return root


def run_config(root, out, model="agman", **train_options):
    return from_dict({
        "model": {"name": model, "backbone": "resnet18", "embedding_dim": 16, "attention_dim": 16},
        "data": {"root": str(root), "input_size": 32, "crop_ratio": 1.0},
        "train": {"epochs": 2, "triplets_per_epoch": 48, "batch_size": 8, "lr": 1e-3, "workers": 0,
                  "lr_step": 5, "threads": 1, **train_options},
        "eval": {"batch_size": 32},
        "output": {"dir": str(out), "progress": False, "tensorboard": False},
    })


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A parent trained on a0, a1 and its child extended by a2 (design adapter), on the same images."""
    tmp = tmp_path_factory.mktemp("family")
    full = make_quadrants(tmp / "full")
    parent_root = tmp / "parent-data"
    shutil.copytree(full, parent_root)
    meta = json.loads((parent_root / "meta.json").read_text())
    meta = {key: (value[:2] if key == "ATTRIBUTES" else {k: v for k, v in value.items() if k != "a2"})
            for key, value in meta.items()}
    (parent_root / "meta.json").write_text(json.dumps(meta))
    for name in ("label_train.txt", "query_valid.txt", "candidate_valid.txt", "query_test.txt", "candidate_test.txt"):
        lines = [" ".join(t for t in _drop_attribute(line.split(), 2)) for line in (parent_root / name).read_text().splitlines()]
        (parent_root / name).write_text("".join(line + "\n" for line in lines if len(line.split()) > 1))
    parent = train(run_config(parent_root, tmp / "parent", epochs=2)).run_dir / "last.pt"
    child = extend(run_config(full, tmp / "child", epochs=4, triplets_per_epoch=96, lr=1e-2), parent, design="adapter")
    return tmp, full, parent, child.run_dir / "best.pt"


def _drop_attribute(tokens, attribute):
    """Label / query line tokens without the pairs of ``attribute``."""
    if len(tokens) == 3:  # query/candidate line: image attribute value
        return tokens if int(tokens[1]) != attribute else []
    out = [tokens[0]]
    for a, v in zip(tokens[1::2], tokens[2::2]):
        if int(a) != attribute:
            out += [a, v]
    return out


@pytest.mark.parametrize("name", ["agman", "agman-official", "asenet-v2", "csn", "attnfashion"])
@pytest.mark.parametrize("design", ["rows", "adapter"])
def test_every_model_keeps_its_old_attributes_bit_identical_and_trains_only_the_new_branch(name, design):
    torch.manual_seed(0)
    parent = build_model(name, 3, backbone="resnet18", embedding_dim=16, attention_dim=16).eval()
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        before = parent.embed_all(images)
    ids = attribute_identities(parent)
    child = ExtendedModel.grow(parent, 1, design, torch.Generator().manual_seed(1))
    view = NewAttributes(child, 1).train()
    opt = torch.optim.Adam([p for p in child.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):  # train the new attribute in train mode: BatchNorm statistics must not move
        out = view(images, torch.zeros(6, dtype=torch.long))
        opt.zero_grad()
        (out.embedding[:3] * out.embedding[3:]).sum().backward()
        opt.step()
    with torch.no_grad():
        after = child.eval().embed_all(images)
    assert torch.equal(after[:, :3], before)
    assert attribute_identities(child)[:3] == ids and attribute_identities(child)[3] not in ids
    trained = {n for n, p in child.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("branches.0.") for n in trained)
    assert any(n.startswith("branches.0.adapters") for n in trained) == (design == "adapter")
    one = child(images, torch.tensor([3, 0, 3, 1, 2, 3]))  # mixed old/new ids in one batch
    assert torch.allclose(one.embedding[0], after[0, 3], atol=1e-5)
    assert torch.allclose(one.embedding[1], after[1, 0], atol=1e-5)


def test_a_model_that_cannot_hold_it_says_so():
    fixed = build_model("csn", 3, backbone="resnet18", embedding_dim=16, mask_init="fixed")
    with pytest.raises(ExtensionError, match="fixed"):
        ExtendedModel.grow(fixed, 1, "rows")


def _test_maps(checkpoint, spec):
    model, info = load_model(checkpoint)
    emb = embed_images(model, spec.split("test").paths, spec.root, input_size=32, crop_ratio=1.0)
    cols = np.stack([emb[:, info.attribute_names.index(n)] for n in spec.attribute_names], 1)
    return evaluate_embeddings(cols, spec, "test").asfr.per_attribute_map, emb


def test_extension_keeps_old_embeddings_and_identities_and_learns_the_new_attribute(family):
    tmp, full, parent, child = family
    spec = open_dataset(full)
    parent_model, parent_info = load_model(parent)
    child_model, child_info = load_model(child)
    assert child_info.attribute_names == ["a0", "a1", "a2"]
    paths = spec.split("test").paths
    old = embed_images(parent_model, paths, spec.root, input_size=32, crop_ratio=1.0)
    new = embed_images(child_model, paths, spec.root, input_size=32, crop_ratio=1.0)
    assert np.array_equal(new[:, :2], old)  # bit for bit, every test image
    ids = attribute_identities(parent_model)
    assert attribute_identities(child_model)[:2] == ids
    lineage = child_info.lineage
    assert lineage["parent"]["identity"] == parent_info.identity
    assert list(lineage["parent"]["attribute_identities"].values()) == ids
    assert lineage["attribute_identities"]["a0"] == ids[0] and lineage["designs"]["a2"] == "adapter"
    # the new attribute's MAP beats the same child before training (its branch as initialised)
    untrained = ExtendedModel.grow(parent_model, 1, "adapter", torch.Generator().manual_seed(0))
    raw = embed_images(untrained, paths, spec.root, input_size=32, crop_ratio=1.0)
    baseline = evaluate_embeddings(raw, spec, "test").asfr.per_attribute_map["a2"]
    trained, _ = _test_maps(child, spec)
    assert trained["a2"] > baseline + 0.05, (trained, baseline)


def test_bad_extensions_are_refused(family, tmp_path):
    tmp, full, parent, _ = family
    with pytest.raises(InvalidValueError, match="'a1' is already in the parent"):
        extend(run_config(full, tmp_path / "x"), parent, attributes=["a1"])
    unlabelled = shutil.copytree(full, tmp_path / "unlabelled")
    label = unlabelled / "label_train.txt"
    label.write_text("".join(" ".join(_drop_attribute(line.split(), 2)) + "\n" for line in label.read_text().splitlines()))
    with pytest.raises(DatasetError, match="label_train.txt") as err:
        extend(run_config(unlabelled, tmp_path / "y"), parent)
    assert "'a2'" in str(err.value) and err.value.exit_code == 2
    from agman.cli import main

    config = tmp_path / "x.yaml"
    config.write_text(json.dumps(run_config(full, tmp_path / "x2").to_dict()))
    assert main(["train", "--extend", str(parent), "--config", str(config), "--attributes", "a0"]) == 2
    damaged = tmp_path / "damaged.pt"
    ckpt = load_checkpoint(parent)
    ckpt["state_dict"]["trunk.conv1.weight"][0, 0, 0, 0] += 1.0
    torch.save(ckpt, damaged)
    with pytest.raises(CheckpointError, match="do not match the identity"):
        extend(run_config(full, tmp_path / "z"), damaged)


def test_an_interrupted_extension_resumes_to_the_same_weights(family, tmp_path):
    _, full, parent, _ = family
    whole = extend(run_config(full, tmp_path / "whole"), parent, design="rows")
    cut = extend(run_config(full, tmp_path / "cut"), parent, design="rows", stop=lambda epoch, step: step == 3)
    assert cut.interrupted
    done = extend(run_config(full, tmp_path / "cut"), parent, design="rows", resume=True)
    a, b = load_checkpoint(whole.last_path)["state_dict"], load_checkpoint(done.last_path)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_index_extends_in_place_and_the_service_follows(family, tmp_path):
    from test_service_api import LiveServer

    from agman.service.app import create_app

    tmp, full, parent, child = family
    spec = open_dataset(full)
    index = tmp_path / "idx"
    build_index(index, from_split(spec, "test"), parent, batch_size=8)
    layout = IndexLayout(index)
    before = {a: layout.vectors(a).read_bytes() for a in range(2)}
    items = layout.items.read_bytes()
    app = create_app(Retriever.open(index, load_model=True), reload_seconds=0.1)
    with LiveServer(app) as srv:
        item = spec.split("test").paths[0]
        r = httpx.post(f"{srv.url}/search", data={"item": item, "attributes": "a2", "k": "5"})
        assert r.status_code >= 400  # the index has no a2 yet
        summary = extend_index(index, child, batch_size=8)
        assert summary.added == ["a2"] and summary.sample_rows == 8
        assert {a: layout.vectors(a).read_bytes() for a in range(2)} == before  # old vectors byte-equal
        assert layout.items.read_bytes() == items
        info = IndexInfo.read(layout.info)
        assert info.attribute_names == ["a0", "a1", "a2"] and info.lineage == [load_model(parent)[1].identity]
        deadline = time.monotonic() + 20
        while httpx.get(f"{srv.url}/health").json()["checkpoint"] != load_model(child)[1].identity \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        r = httpx.post(f"{srv.url}/search", data={"item": item, "attributes": "a2", "k": "5"})
        assert r.status_code == 200, r.text
        upload = (full / item).read_bytes()
        r = httpx.post(f"{srv.url}/search", data={"attributes": "a0,a2", "k": "3"},
                       files={"image": ("q.png", upload, "image/png")})
        assert r.status_code == 200, r.text
    hits = Retriever.open(index).search(full / item, ["a2"], k=3)
    assert len(hits.hits) == 3
    assert extend_index(index, child, batch_size=8).added == []  # already done: nothing to add


def test_index_extension_refuses_another_lineage_and_resumes(family, tmp_path):
    tmp, full, parent, child = family
    spec = open_dataset(full)
    other = train(run_config(full, tmp_path / "other", epochs=1)).run_dir / "last.pt"  # a0..a2 from scratch
    index = tmp_path / "idx"
    build_index(index, from_split(spec, "test"), parent, batch_size=8)
    with pytest.raises(IndexMismatchError, match="'a0'"):
        extend_index(index, other, batch_size=8)
    # a run stopped after writing part of the new vectors resumes from the whole batches written
    layout = IndexLayout(index)
    (layout.root / "extend.json").write_text(json.dumps({"checkpoint": load_model(child)[1].identity,
                                                         "batch_size": 8, "attributes": ["a2"]}))
    model, info = load_model(child)
    first = embed_images(model, [it for it in (spec.root / p for p in spec.split("test").paths[:8])], None,
                         input_size=32, crop_ratio=1.0, batch_size=8)
    layout.vectors(2).write_bytes(np.ascontiguousarray(first[:, 2]).tobytes() + b"\0" * 20)
    summary = extend_index(index, child, batch_size=8)
    assert summary.resumed_from == 8 and summary.rows == len(spec.split("test")) - 8
    fresh = tmp_path / "fresh"
    build_index(fresh, from_split(spec, "test"), parent, batch_size=8)
    extend_index(fresh, child, batch_size=8)
    assert IndexLayout(fresh).vectors(2).read_bytes() == layout.vectors(2).read_bytes()


def test_milvus_lite_collection_extends_in_place(family, tmp_path):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    tmp, full, parent, child = family
    spec = open_dataset(full)
    other = train(run_config(full, tmp_path / "other", epochs=1)).run_dir / "last.pt"  # another lineage
    uri = str(tmp_path / "catalog.db")
    build_index(uri, from_split(spec, "test"), parent, batch_size=8)
    serving = Retriever.open(uri, load_model=True)
    before = {a: serving.store.vectors(a, serving.store.rows()) for a in range(2)}
    summary = extend_index(uri, child, batch_size=8)
    assert summary.added == ["a2"] and summary.sample_rows == 8
    assert serving.refresh() and serving.attributes == ["a0", "a1", "a2"]  # the running retriever follows
    rows = serving.store.rows()
    assert len(rows) == len(spec.split("test")) and len(serving) == len(rows)
    for a in range(2):
        assert np.array_equal(serving.store.vectors(a, rows), before[a])  # old entities untouched
    model, _ = load_model(child)
    want = embed_images(model, [spec.root / p for p in spec.split("test").paths], None, input_size=32,
                        crop_ratio=1.0, batch_size=8)[:, 2]
    assert np.array_equal(serving.store.vectors(2, rows), want)
    item = spec.split("test").paths[1]
    hits = serving.search(full / item, ["a2"], k=3, filter="a0 is not null")
    assert len(hits.hits) == 3
    with pytest.raises(IndexMismatchError, match="'a0'"):
        extend_index(uri, other, batch_size=8)
    serving.store.close()
