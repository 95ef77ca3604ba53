"""Configs: every packaged config resolves, inheritance, overrides, and errors that name key and file."""
from __future__ import annotations

import pytest

from agman.engine import config as C

DATASETS = ("fashionai", "deepfashion", "zappos50k")
MODELS = ("agman", "agman-official", "csn", "asenet-v2", "attnfashion")


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("model", MODELS)
def test_every_paper_config_has_the_paper_settings(dataset, model):
    cfg = C.load_config(f"configs/{dataset}/{model}.yaml")
    assert cfg["model"]["name"] == model
    assert cfg["model"]["backbone"] == "resnet50" and cfg["model"]["pretrained"] == "imagenet"
    t = cfg["train"]
    triplets = 200_000 if dataset == "zappos50k" else 100_000  # mainZappos50k.py's num_triplets
    assert (t["batch_size"], t["lr"], t["lr_step"], t["lr_gamma"], t["epochs"], t["triplets_per_epoch"]) == (
        16, 1e-4, 3, 0.9, 50, triplets)
    assert cfg["loss"]["margin"] == 0.2 and cfg["data"]["input_size"] == 224
    assert (t["amp"], t["bn_passes"], t["sampling"], cfg["data"]["crop_ratio"]) == ("none", "separate", "value", 1.0)
    if model == "agman":
        assert cfg["model"]["embedding_dim"] == 1024
        if dataset != "zappos50k":  # Eq. 9 held at the paper's start (docs/training.md, Eq. 9)
            assert (cfg["loss"]["weighting"], cfg["loss"]["weight_init"]) == ("released", 0.0)
    if model == "agman-official" and dataset != "zappos50k":
        assert (cfg["loss"]["weighting"], cfg["loss"]["weight_init"]) == ("released", 1.0)
    if model == "csn":  # ASEN's CSN: the triplet loss only
        assert (cfg["loss"]["mask_l1"], cfg["loss"]["embed_l2"]) == (0.0, 0.0)
        assert cfg["loss"]["classification"] is False
    if dataset == "zappos50k":  # the released Zappos50k script trains the plain triplet loss
        assert cfg["loss"]["classification"] is False and cfg["loss"]["weighting"] == "fixed"


def test_synthetic_configs_and_listing():
    listed = C.list_configs()
    for m in MODELS:
        assert f"configs/synthetic/{m}.yaml" in listed
        cfg = C.load_config(f"configs/synthetic/{m}.yaml")
        assert cfg["model"]["backbone"] == "resnet18" and cfg["model"]["pretrained"] == "none"
        assert cfg["data"]["synthetic"]
    assert "configs/synthetic/demo.yaml" in listed
    assert not any("/_" in c for c in listed)


def test_packaged_fallback_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spelling in ("configs/fashionai/agman.yaml", "fashionai/agman.yaml", "configs/fashionai/agman"):
        assert C.resolve_config_path(spelling).is_file()
    local = tmp_path / "configs" / "mine.yaml"
    local.parent.mkdir()
    local.write_text("base: " + str(C.packaged_config_dir() / "synthetic" / "agman.yaml") + "\ntrain: {epochs: 2}\n")
    cfg = C.load_config("configs/mine.yaml")
    assert cfg["train"]["epochs"] == 2 and cfg["model"]["name"] == "agman"
    with pytest.raises(C.ConfigError, match="config file not found: nope.yaml"):
        C.load_config("nope.yaml")


def test_overrides():
    cfg = C.load_config("configs/synthetic/agman.yaml",
                        ["train.epochs=3", "lr=3e-4", "model.ca=false", "eval.ks=[1, 2]", "data.root=/x", "loss.weights={triplet: 2}"])
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["lr"] == 3e-4 and isinstance(cfg["train"]["lr"], float)
    assert cfg["model"]["ca"] is False and cfg["eval"]["ks"] == [1, 2] and cfg["data"]["root"] == "/x"
    assert cfg["loss"]["weights"] == {"triplet": 2}
    assert cfg["overrides"][0] == "train.epochs=3"
    cfg = C.load_config("configs/synthetic/agman.yaml", ["epochs=4", "warmup.epochs=0", "warmup.lr=0.01"])
    assert cfg["train"]["epochs"] == 4 and cfg["warmup"]["epochs"] == 0 and cfg["warmup"]["lr"] == 0.01
    with pytest.raises(C.ConfigError, match="warmup.epochs must not be negative"):
        C.load_config("configs/synthetic/agman.yaml", ["warmup.epochs=-1"])


@pytest.mark.parametrize("item, message", [
    ("train.lrr=1", r"unknown key train\.lrr.*configs/synthetic/agman\.yaml|configs/synthetic/agman\.yaml.*unknown key train\.lrr"),
    ("bogus.x=1", "unknown section 'bogus'"),
    ("epochz=1", "unknown key 'epochz'"),
    ("batch_size=2", "ambiguous"),
    ("train.epochs=abc", r"train\.epochs must be an integer, got 'abc'"),
    ("train.epochs=0", r"train\.epochs must be at least 1"),
    ("train.lr=fast", r"train\.lr must be a number"),
    ("train.amp=fp8", r"train\.amp must be one of"),
    ("train.epochs", "must look like section.key=value"),
    ("train.ks=[1", "cannot parse|unknown key"),
    ("model.colour=red", r"takes no option\(s\) colour"),
])
def test_bad_overrides_name_the_key_and_the_file(item, message):
    with pytest.raises(C.ConfigError, match=message) as err:
        C.load_config("configs/synthetic/agman.yaml", [item])
    assert "synthetic/agman" in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("train:\n  epocs: 3\n", r"bad\.yaml: unknown key train\.epocs"),
    ("train: {epochs: many}\n", r"bad\.yaml: train\.epochs must be an integer"),
    ("train: [1, 2]\n", "must be a mapping"),
    ("train: {epochs: 1\n", "not valid YAML"),
    ("base: bad.yaml\n", "loops"),
    ("base: missing.yaml\n", "base config not found"),
])
def test_bad_files(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(C.ConfigError, match=message):
        C.load_config(bad)


def test_plain_roundtrip_and_run_dir(tmp_path):
    cfg = C.load_config("configs/fashionai/agman.yaml")
    assert C.default_run_dir(cfg).as_posix() == "runs/fashionai-agman"
    again = C.from_dict(C.plain(cfg), ["train.epochs=2"])
    assert again["train"]["epochs"] == 2 and again["model"] == cfg["model"]
    path = C.save_config(C.plain(cfg), tmp_path / "c.yaml")
    assert C.load_config(path)["train"] == cfg["train"]
