"""`agman export --format onnx`, ONNX Runtime embedding (`index` / `serve --runtime onnx`) and INT8 exports."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from conftest import make_asen
from test_retrieval_cli import run
from test_retrieval_index import INPUT_SIZE, tiny_checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from agman.data.layouts import open_dataset  # noqa: E402
from agman.engine.checkpoint import load_model, save_checkpoint  # noqa: E402
from agman.engine.onnx_export import META_IDENTITY, export_onnx  # noqa: E402
from agman.engine.onnx_runtime import OnnxExportError, OnnxModel  # noqa: E402
from agman.models.registry import build_model  # noqa: E402


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    root = make_asen(tmp / "ds", n_per_split=(12, 10, 20), values=(3, 2))
    spec = open_dataset(root)
    return tmp, root, spec


@pytest.mark.parametrize("model, options", [
    ("agman-official", {}), ("agman", {}), ("asenet-v2", {"embedding_dim": None}), ("csn", {"embedding_dim": 24}),
])
def test_onnx_runtime_equals_pytorch_for_every_attribute_at_any_batch(catalog, tmp_path, model, options):
    _, _, spec = catalog
    torch.manual_seed(0)
    kwargs = {"backbone": "resnet18", "embedding_dim": 32, "attention_dim": 16, **options}
    if model == "csn":
        kwargs.pop("attention_dim")
    net = build_model(model, len(spec.attributes), **kwargs)
    with torch.no_grad():  # move BN statistics off their defaults so the test sees them
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ckpt = save_checkpoint(tmp_path / "m.pt", model=net, model_name=model, attributes=spec.attributes,
                           input_size=INPUT_SIZE, crop_ratio=1.0)
    attention = model != "csn"
    path = export_onnx(ckpt, tmp_path / "m.onnx", attention=attention)
    torch_model, info = load_model(ckpt)
    runtime = OnnxModel(path, identity=info.identity)
    assert runtime.n_attributes == len(spec.attributes) and runtime.embedding_dim == torch_model.embedding_dim
    for batch in (1, 3, 5):  # the graph was traced at batch 2
        x = torch.randn(batch, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = torch_model.embed_all(x)
        got = runtime.embed_all(x)
        assert got.shape == want.shape == (batch, len(spec.attributes), torch_model.embedding_dim)
        assert (got - want).abs().max().item() <= 1e-4
        if attention:
            ids = torch.arange(batch) % len(spec.attributes)
            with torch.no_grad():
                maps = torch_model.attention_map(x, ids)
            assert (runtime.attention_map(x, ids) - maps).abs().max().item() <= 1e-5


def test_identity_travels_in_the_metadata_and_another_checkpoints_export_is_refused(catalog, tmp_path, capsys):
    import onnx

    tmp, root, spec = catalog
    a = tiny_checkpoint(tmp_path / "a.pt", spec.attributes, seed=0)
    b = tiny_checkpoint(tmp_path / "b.pt", spec.attributes, seed=1)
    rc, out, err = run(capsys, "export", "--checkpoint", a, "--format", "onnx", "--out", tmp_path / "a.onnx")
    assert rc == 0, err
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "a.onnx")).metadata_props}
    _, info = load_model(a)
    assert meta[META_IDENTITY] == info.identity and json.loads(meta["agman.attributes"])[0]["name"] == "attr0"
    with pytest.raises(OnnxExportError, match="exported from checkpoint"):
        OnnxModel(tmp_path / "a.onnx", identity=load_model(b)[1].identity)
    rc, _, err = run(capsys, "index", "--checkpoint", b, "--images", root, "--split", "test", "--out",
                     tmp_path / "idx", "--runtime", "onnx", "--onnx", tmp_path / "a.onnx", "--no-progress")
    assert rc == 2 and "exported from checkpoint" in err and not (tmp_path / "idx" / "index.json").exists()
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(OnnxExportError, match="cannot be opened"):
        OnnxModel(tmp_path / "junk.onnx")


def test_index_with_onnx_runtime_matches_the_pytorch_index_and_searches_alike(catalog, tmp_path, capsys):
    from agman.retrieval.backends.faiss.store import FaissStore

    _, root, spec = catalog
    ck = tiny_checkpoint(tmp_path / "c.pt", spec.attributes, seed=2)
    assert run(capsys, "export", "--checkpoint", ck, "--out", tmp_path / "c.onnx")[0] == 0
    common = ["--checkpoint", ck, "--images", root, "--split", "test", "--batch-size", "8", "--no-progress"]
    assert run(capsys, "index", *common, "--out", tmp_path / "pt")[0] == 0
    rc, _, err = run(capsys, "index", *common, "--out", tmp_path / "ox", "--runtime", "onnx")  # default: c.onnx
    assert rc == 0, err
    pt, ox = FaissStore(tmp_path / "pt"), FaissStore(tmp_path / "ox")
    assert [it.id for it in pt.items_of(pt.rows())] == [it.id for it in ox.items_of(ox.rows())]
    for a in range(len(spec.attributes)):
        assert np.abs(pt.vectors(a) - ox.vectors(a)).max() <= 1e-4
    image = root / spec.split("test").paths[4]
    for attrs in (["-a", "attr0"], ["-a", "attr1"], ["-a", "attr0:1", "-a", "attr1:2"]):
        hits = []
        for index in ("pt", "ox"):
            rc, out, err = run(capsys, "search", "--index", tmp_path / index, "--image", image, *attrs, "--k", "8",
                               "--json")
            assert rc == 0, err
            hits.append([r["id"] for r in json.loads(out)["results"]])
        assert hits[0] == hits[1]


def test_serve_runtime_onnx_embeds_queries_with_onnx_runtime(catalog, tmp_path, capsys):
    from agman.cli.retrieval import runtime_model
    from agman.retrieval.backends import open_store
    from agman.retrieval.search import Retriever

    _, root, spec = catalog
    ck = tiny_checkpoint(tmp_path / "s.pt", spec.attributes, seed=3)
    assert run(capsys, "export", "--checkpoint", ck, "--out", tmp_path / "s.onnx", "--attention")[0] == 0
    assert run(capsys, "index", "--checkpoint", ck, "--images", root, "--split", "test", "--out",
               tmp_path / "idx", "--no-progress")[0] == 0
    args = argparse.Namespace(runtime="onnx", onnx=str(tmp_path / "s.onnx"), device="cpu")
    onnx_side = Retriever(open_store(tmp_path / "idx"))
    onnx_side.set_model(*runtime_model(args, ck))  # what `agman serve --runtime onnx` does at startup
    assert isinstance(onnx_side.model, OnnxModel)
    torch_side = Retriever(open_store(tmp_path / "idx"), checkpoint=ck)
    image = root / spec.split("test").paths[2]
    assert np.abs(onnx_side.embed(image) - torch_side.embed(image)).max() <= 1e-4
    got = onnx_side.search(image, ["attr0", "attr1:0.5"], 6)
    want = torch_side.search(image, ["attr0", "attr1:0.5"], 6)
    assert [h.id for h in got.hits] == [h.id for h in want.hits]
    assert np.abs(onnx_side.attention(image, "attr1") - torch_side.attention(image, "attr1")).max() <= 1e-5


def test_int8_export_is_calibrated_on_catalog_images_and_keeps_the_identity(catalog, tmp_path, capsys):
    _, root, spec = catalog
    ck = tiny_checkpoint(tmp_path / "q.pt", spec.attributes, seed=4)
    rc, out, err = run(capsys, "export", "--checkpoint", ck, "--out", tmp_path / "q.onnx", "--int8",
                       tmp_path / "q8.onnx", "--calibration", root / "images" / "train", "--calibration-images", "8")
    assert rc == 0, err
    assert "int8, calibrated on 8 images" in out
    torch_model, info = load_model(ck)
    int8 = OnnxModel(tmp_path / "q8.onnx", identity=info.identity)
    assert int8.precision == "int8"
    x = torch.randn(4, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = torch_model.embed_all(x)
    got = int8.embed_all(x)
    cosine = (got * want).sum(-1)  # unit vectors
    assert cosine.min().item() > 0.9 and (got - want).abs().max().item() > 1e-6  # close, and really quantized
    rc, _, err = run(capsys, "export", "--checkpoint", ck, "--out", tmp_path / "r.onnx", "--int8", tmp_path / "r8.onnx")
    assert rc == 2 and "--calibration" in err
