"""Configs: every composition resolves, the spellings in use keep working, overrides, typed values,
and errors that name the key and the file or override."""
from __future__ import annotations

import pytest
import yaml

from agman.engine import compose
from agman.engine import config as C

DATASETS = ("fashionai", "deepfashion", "zappos50k")
MODELS = ("agman", "agman-official", "csn", "asenet-v2", "attnfashion")


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("model", MODELS)
def test_every_paper_config_has_the_paper_settings(dataset, model):
    cfg = C.load_config(f"configs/{dataset}/{model}.yaml")
    assert cfg.model.name == model
    assert cfg.model.options["backbone"] == "resnet50" and cfg.model.options["pretrained"] == "imagenet"
    t = cfg.train
    triplets = 200_000 if dataset == "zappos50k" else 100_000  # mainZappos50k.py's num_triplets
    assert (t.batch_size, t.lr, t.lr_step, t.lr_gamma, t.epochs, t.triplets_per_epoch) == (
        16, 1e-4, 3, 0.9, 50, triplets)
    assert cfg.loss.margin == 0.2 and cfg.data.input_size == 224
    assert (t.amp, t.bn_passes, t.sampling, cfg.data.crop_ratio) == ("none", "separate", "value", 1.0)
    assert cfg.data.cache is False and t.fused_optimizer == "auto"  # the synthetic preset's speed-ups stay out
    assert t.small_map_matmul is False
    if model == "agman":
        assert cfg.model.options["embedding_dim"] == 1024
        if dataset != "zappos50k":  # Eq. 9 held at the paper's start (docs/training.md, Eq. 9)
            assert (cfg.loss.weighting, cfg.loss.weight_init) == ("released", 0.0)
    if model == "agman-official" and dataset != "zappos50k":
        assert (cfg.loss.weighting, cfg.loss.weight_init) == ("released", 1.0)
    if model == "csn":  # ASEN's CSN: the triplet loss only
        assert (cfg.loss.mask_l1, cfg.loss.embed_l2) == (0.0, 0.0)
        assert cfg.loss.classification is False
    if dataset == "zappos50k":  # the released Zappos50k script trains the plain triplet loss
        assert cfg.loss.classification is False and cfg.loss.weighting == "fixed"
        if model in ("agman", "agman-official"):  # per_model: no classification branch is built
            assert cfg.model.options["classification"] is False


def test_synthetic_configs_and_listing():
    listed = compose.list_configs()
    for m in MODELS:
        assert f"configs/synthetic/{m}.yaml" in listed
        cfg = C.load_config(f"configs/synthetic/{m}.yaml")
        assert cfg.model.options["backbone"] == "resnet18" and cfg.model.options["pretrained"] == "none"
        assert cfg.data.synthetic is not None and cfg.data.synthetic.images == 4000
    assert "configs/synthetic/demo.yaml" in listed
    assert not any("/_" in c for c in listed)
    assert len(listed) == len(compose.datasets()) * len(compose.models()) + len(compose.presets())
    # a preset is never named like a model: it would hide that composition
    assert not {p.rsplit("/", 1)[1].removesuffix(".yaml") for p in compose.presets()} & set(compose.models())
    demo = C.load_config("configs/synthetic/demo.yaml")
    schedule = {"epochs": 10, "batch_size": 64, "lr_step": 3}  # chosen on validation (issue #25)
    assert {k: getattr(demo.train, k) for k in schedule} == schedule
    same = C.load_config("configs/synthetic/demo.yaml", [f"train.{k}={v}" for k, v in
                                                         (("epochs", 3), ("batch_size", 32), ("lr_step", 2))])
    assert same.to_dict() | {"config_path": None, "overrides": None} == (
        C.load_config("synthetic/agman").to_dict() | {"config_path": None, "overrides": None})
    assert "fashionai" in compose.describe() and "agman-official" in compose.describe()
    # the FashionAI-like demo: demo.yaml with the set's mode fashionai, in its own folder
    fa = C.load_config("synthetic/demo-fashionai").to_dict()  # keeps the dataset file's 3 epochs of 32
    assert fa["data"].pop("root") == "data/synthetic-fashionai" and fa["data"]["synthetic"].pop("mode") == "fashionai"
    plain = same.to_dict()
    assert plain["data"].pop("root") == "data/synthetic" and plain["data"]["synthetic"].pop("mode") == "all"
    assert fa | {"config_path": None} == plain | {"config_path": None, "overrides": []}


def test_the_spellings_in_use_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spelling in ("configs/fashionai/agman.yaml", "fashionai/agman.yaml", "configs/fashionai/agman",
                     "fashionai/agman", str(compose.packaged_config_dir() / "fashionai" / "agman.yaml")):
        assert compose.resolve(spelling) == compose.Cell("fashionai", "agman"), spelling
        assert C.load_config(spelling).run_dir.as_posix() == "runs/fashionai-agman"
    for spelling in ("configs/synthetic/demo.yaml", "synthetic/demo"):
        assert compose.resolve(spelling).is_file()
    local = tmp_path / "configs" / "mine.yaml"
    local.parent.mkdir()
    packaged = compose.packaged_config_dir() / "synthetic" / "agman.yaml"  # no such file: a composition
    local.write_text(f"base: {packaged}\ntrain: {{epochs: 2}}\n")
    cfg = C.load_config("configs/mine.yaml")
    assert cfg.train.epochs == 2 and cfg.model.name == "agman" and cfg.data.synthetic is not None
    (tmp_path / "other.yaml").write_text("base: zappos50k/csn\n")
    assert C.load_config("other.yaml").data.root == "data/zappos50k"
    with pytest.raises(C.ConfigError, match="config file not found: nope.yaml.*datasets: darn, deepfashion, fashionai"):
        C.load_config("nope.yaml")
    with pytest.raises(C.ConfigError, match="not found: fashionai/resnet"):
        C.load_config("fashionai/resnet")


def test_composition_order_and_per_model_cells(tmp_path, monkeypatch):
    """models/<m>.yaml, then the dataset file (its base first), then its per_model entry for <m>."""
    root = tmp_path / "configs"
    (root / "models").mkdir(parents=True)
    (root / "datasets").mkdir()
    (root / "models" / "csn.yaml").write_text("model: {name: csn, embedding_dim: 32}\nloss: {margin: 0.3}\n")
    (root / "models" / "agman.yaml").write_text("model: {name: agman}\nloss: {margin: 0.3}\n")
    (root / "datasets" / "_shared.yaml").write_text("train: {epochs: 7, lr: 0.01}\n")
    (root / "datasets" / "shop.yaml").write_text(
        "base: _shared.yaml\ndata: {root: /shop}\nloss: {margin: 0.4}\ntrain: {lr: 0.02}\n"
        "per_model:\n  csn: {loss: {classification: false, margin: 0.5}}\n")
    monkeypatch.setattr(compose, "packaged_config_dir", lambda: root)
    csn = C.load_config("configs/shop/csn.yaml")
    assert (csn.train.epochs, csn.train.lr, csn.data.root) == (7, 0.02, "/shop")
    assert csn.loss.margin == 0.5 and csn.loss.classification is False and csn.model.options["embedding_dim"] == 32
    agman = C.load_config("shop/agman", ["loss.margin=0.6"])
    assert agman.loss.margin == 0.6 and agman.loss.classification is True
    assert compose.sibling("shop/agman", "csn") == "configs/shop/csn.yaml"
    (root / "datasets" / "shop.yaml").write_text("per_model: [csn]\n")
    with pytest.raises(C.ConfigError, match="per_model must map model names"):
        C.load_config("shop/csn")


def test_overrides_and_typed_values():
    cfg = C.load_config("configs/synthetic/agman.yaml",
                        ["train.epochs=3", "lr=3e-4", "model.ca=false", "eval.ks=[1, 2]", "data.root=/x",
                         "loss.weights={triplet: 2}", "data.synthetic.images=300", "train.channels_last=auto"])
    assert cfg.train.epochs == 3 and cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.model.options["ca"] is False and cfg.eval.ks == [1, 2] and cfg.data.root == "/x"
    assert cfg.loss.weights == {"triplet": 2.0} and isinstance(cfg.loss.weights["triplet"], float)
    assert (cfg.data.synthetic.images, cfg.data.synthetic.size) == (300, 96)
    assert cfg.overrides[0] == "train.epochs=3"
    cfg = C.load_config("configs/synthetic/agman.yaml", ["epochs=4", "warmup.epochs=0", "warmup.lr=0.01",
                                                         "data.synthetic=null", "ca=false"])
    assert cfg.train.epochs == 4 and cfg.warmup.epochs == 0 and cfg.warmup.lr == 0.01
    assert cfg.data.synthetic is None and cfg.model.options["ca"] is False  # a bare model option
    with pytest.raises(C.ConfigError, match="warmup.epochs must not be negative"):
        C.load_config("configs/synthetic/agman.yaml", ["warmup.epochs=-1"])


@pytest.mark.parametrize("item, message", [
    ("train.lrr=1", r"configs/synthetic/agman\.yaml: override 'train\.lrr=1': unknown key train\.lrr \(known keys in "
                    r"train: epochs, "),
    ("bogus.x=1", "unknown section 'bogus'"),
    ("epochz=1", "unknown key 'epochz'"),
    ("batch_size=2", "ambiguous; write one of train.batch_size, eval.batch_size"),
    ("train.epochs=abc", r"train\.epochs must be an integer, got 'abc'"),
    ("train.epochs=null", r"train\.epochs must be an integer, got None"),
    ("train.epochs=0", r"train\.epochs must be at least 1"),
    ("train.lr=fast", r"train\.lr must be a number"),
    ("train.amp=fp8", r"train\.amp must be one of auto, bf16, none, got 'fp8'"),
    ("train.channels_last=maybe", r"train\.channels_last must be one of auto, True, False"),
    ("data.synthetic.mode=odd", r"data\.synthetic\.mode must be one of all, single"),
    ("data.synthetic.colour=red", r"unknown key data\.synthetic\.colour \(known keys in data\.synthetic: images"),
    ("data.input_size=8", r"data\.input_size must be at least 16"),
    ("loss.weights={triplet: heavy}", r"loss\.weights\.triplet"),
    ("train.epochs", "must look like section.key=value"),
    ("train.ks=[1", "cannot parse|unknown key"),
    ("model.colour=red", r"takes no option\(s\) colour"),
    ("model.name=resnet", "unknown model 'resnet'"),
])
def test_bad_overrides_name_the_key_and_the_file(item, message):
    with pytest.raises(C.ConfigError, match=message) as err:
        C.load_config("configs/synthetic/agman.yaml", [item])
    assert "configs/synthetic/agman.yaml" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("train:\n  epocs: 3\n", r"bad\.yaml: unknown key train\.epocs"),
    ("train: {epochs: many}\n", r"bad\.yaml: train\.epochs must be an integer, got 'many'"),
    ("train: {batch_size: 0}\n", r"bad\.yaml: train\.batch_size must be at least 1"),
    ("train: [1, 2]\n", "section 'train' must be a mapping"),
    ("trian: {epochs: 1}\n", "unknown section 'trian'"),
    ("- 1\n", "must be a mapping of sections"),
    ("train: {epochs: 1\n", "not valid YAML"),
    ("base: bad.yaml\n", "loops"),
    ("base: missing.yaml\n", "base config not found: missing.yaml"),
    ("base: 3\n", "'base' must be a file name"),
    ("model: {name: csn, hierarchical: true}\n", r"takes no option\(s\) hierarchical"),
])
def test_bad_files(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(C.ConfigError, match=message):
        C.load_config(bad)


def test_a_bad_value_names_the_layer_that_brought_it(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {epochs: -3}\n")
    (tmp_path / "top.yaml").write_text("base: base.yaml\ntrain: {lr: 0.1}\n")
    with pytest.raises(C.ConfigError, match=r"base\.yaml: train\.epochs must be at least 1, got -3"):
        C.load_config(tmp_path / "top.yaml")


def test_saved_config_reloads_and_run_dir(tmp_path):
    cfg = C.load_config("configs/fashionai/agman.yaml", ["train.epochs=3"])
    assert cfg.run_dir.as_posix() == "runs/fashionai-agman" and cfg.config_path == "configs/fashionai/agman.yaml"
    again = C.from_dict(cfg.to_dict(), ["train.epochs=2"])
    assert again.train.epochs == 2 and again.model == cfg.model and again.run_dir == cfg.run_dir
    assert again.overrides == ["train.epochs=3", "train.epochs=2"]
    path = C.save_config(cfg, tmp_path / "run" / "config.yaml")
    saved = yaml.safe_load(path.read_text())
    assert saved["model"]["name"] == "agman" and saved["model"]["backbone"] == "resnet50"  # model written flat
    reloaded = C.load_config(path)
    assert reloaded.train == cfg.train and reloaded.model == cfg.model and reloaded.data == cfg.data
    assert C.with_overrides(cfg, ["eval.margin=0.3"]).eval_margin == 0.3 and cfg.eval_margin == 0.2


def test_configs_stored_by_earlier_runs_still_evaluate():
    """A checkpoint's config is a plain dict written by an earlier agman: eval reads its data
    section and margin, whatever else it holds."""
    stored = {"data": {"root": "data/synthetic", "synthetic": {"images": 4000, "size": 96, "seed": 0, "mode": "all"},
                       "input_size": 64, "crop_ratio": 1.0, "layout": None},
              "loss": {"margin": 0.3, "weighting": "a-mode-of-another-version"}, "eval": {"margin": None},
              "model": {"name": "agman"}, "config_path": "configs/synthetic/agman.yaml", "overrides": []}
    data, margin = C.stored_for_eval(stored, {"root": "/elsewhere", "synthetic": None}, source="best.pt")
    assert data.root == "/elsewhere" and data.synthetic is None and data.input_size == 64 and margin == 0.3
    assert C.stored_for_eval({}, source="old.pt")[1] == 0.2
    with pytest.raises(C.ConfigError, match=r"config stored in x\.pt: data\.input_size must be an integer"):
        C.stored_for_eval({"data": {"input_size": "big"}}, source="x.pt")


def test_the_synthetic_preset_turns_the_demo_speed_ups_on():
    for ref in ("synthetic/demo", "synthetic/agman", "synthetic/csn"):
        cfg = C.load_config(ref)
        assert cfg.data.cache is True and cfg.train.fused_optimizer is True, ref
        assert cfg.train.bn_passes == "stacked" and cfg.train.small_map_matmul is True, ref
