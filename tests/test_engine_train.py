"""Training: exact resume (epoch boundary and mid-epoch), checkpoints, logs, determinism, learning."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from agman.engine.batches import EpochBatches, item_seed
from agman.engine.checkpoint import load_checkpoint, load_model
from agman.engine.config import from_dict, with_overrides
from agman.engine.rng import rng_state, set_rng_state
from agman.engine.train import find_resume, train


def tiny_config(root, out, **train):
    return from_dict({
        "model": {"name": "agman", "backbone": "resnet18", "embedding_dim": 16, "attention_dim": 16},
        "data": {"root": str(root), "input_size": 32, "crop_ratio": 1.0},
        "train": {"epochs": 3, "triplets_per_epoch": 12, "batch_size": 4, "lr": 1e-3, "workers": 0,
                  "lr_step": 1, "lr_gamma": 0.5, "threads": 1, **train},
        "eval": {"batch_size": 16},
        "output": {"dir": str(out), "progress": False, "tensorboard": False},
    })


def weights(path):
    return load_checkpoint(path)["state_dict"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_after_an_interruption_ends_with_identical_weights(asen_root, tmp_path):
    full = train(tiny_config(asen_root, tmp_path / "full"))
    assert not full.interrupted and len(full.history) == 3

    # stopped mid-epoch (epoch 2, after step 1 of 3), then resumed
    cfg = tiny_config(asen_root, tmp_path / "cut")
    cut = train(cfg, stop=lambda epoch, step: (epoch, step) == (1, 1))
    assert cut.interrupted
    ck = load_checkpoint(cut.last_path)
    assert (ck["epoch"], ck["step"]) == (1, 1) and len(ck["history"]) == 1
    resumed = train(cfg, resume=True)
    assert not resumed.interrupted
    assert_same_weights(weights(full.last_path), weights(resumed.last_path))
    a, b = load_checkpoint(full.last_path), load_checkpoint(resumed.last_path)
    assert a["identity"] == b["identity"]
    assert a["best_score"] == b["best_score"]
    for key in ("optimizer", "loss_state"):
        assert str(a[key]) == str(b[key])
    assert [r["valid_score"] for r in a["history"]] == [r["valid_score"] for r in b["history"]]

    # stopped at an epoch boundary (after the last step of epoch 1), then resumed
    cfg = tiny_config(asen_root, tmp_path / "cut2")
    train(cfg, stop=lambda epoch, step: (epoch, step) == (0, 3))
    resumed = train(cfg, resume=tmp_path / "cut2")
    assert_same_weights(weights(full.last_path), weights(resumed.last_path))


def test_run_folder_contents_and_checkpoint(asen_root, tmp_path):
    cfg = with_overrides(tiny_config(asen_root, tmp_path / "run", epochs=2, checkpoint_every_steps=1),
                         ["output.tensorboard=true"])
    result = train(cfg)
    run = result.run_dir
    for name in ("config.yaml", "best.pt", "last.pt", "log.csv", "curves.png"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    assert not list(run.glob(".*.tmp"))  # atomic writes leave no temp files
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_triplet", "train_classification", "weight_triplet", "valid_score", "triplets_per_s"} <= set(rows[0])
    ck = load_checkpoint(result.last_path)  # weights_only load
    assert {"optimizer", "scheduler", "loss_state", "rng", "epoch", "step", "best_score", "metrics",
            "config"} <= set(ck)
    assert ck["config"]["train"]["epochs"] == 2
    assert ck["attributes"][0]["values"] == ["attr0_v0", "attr0_v1", "attr0_v2"]
    best = load_checkpoint(result.best_path)
    assert "optimizer" not in best and best["metrics"]["map"] == pytest.approx(result.best_score)
    model, info = load_model(result.best_path)
    assert info.model_name == "agman" and info.input_size == 32 and info.config["data"]["root"] == str(asen_root)
    # a second fresh run into the same folder must be asked for
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg)
    with pytest.raises(ValueError, match="no training state"):
        train(cfg, resume=result.best_path)


def test_workers_do_not_change_the_result(asen_root, tmp_path):
    a = train(tiny_config(asen_root, tmp_path / "w0", epochs=1))
    b = train(tiny_config(asen_root, tmp_path / "w2", epochs=1, workers=2))
    assert_same_weights(weights(a.last_path), weights(b.last_path))


def test_rng_state_roundtrip_and_seeds():
    import random

    state = rng_state()
    x = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    y = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(x[0], y[0]) and np.array_equal(x[1], y[1]) and x[2] == y[2]
    assert item_seed(0, 1, 2) == item_seed(0, 1, 2) != item_seed(0, 2, 1)
    b = EpochBatches(10, 4, max_steps=0)
    b.set_epoch(3, 1)
    assert list(b) == [[(3, 4), (3, 5), (3, 6), (3, 7)], [(3, 8), (3, 9)]] and len(b) == 2
    assert EpochBatches(100, 4, max_steps=5).steps == 5


def test_missing_data_and_bad_switches(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(tiny_config(tmp_path / "nowhere", tmp_path / "r"))


def test_find_resume_names_one_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert find_resume(False, run) is None
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        find_resume(True, run)
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    assert find_resume(True, run) == find_resume(run, tmp_path / "other") == find_resume(run / "last.pt", run) \
        == run / "last.pt"


@pytest.mark.slow
def test_training_on_the_synthetic_set_learns(tmp_path):
    """A short run on a small synthetic set (backbone warm-up, then the paper's training): validation
    MAP clearly above the untrained network and above the warm-up trunk with untrained heads."""
    from agman.data.synthetic import generate
    from agman.engine.evaluate import evaluate_model
    from agman.engine.rng import seed_everything

    root = generate(tmp_path / "synth", 1200, 32, seed=0, progress=False)
    cfg = from_dict({
        "model": {"name": "agman", "backbone": "resnet18", "embedding_dim": 32, "attention_dim": 64},
        "data": {"root": str(root), "input_size": 32, "crop_ratio": 1.0},
        "warmup": {"epochs": 10, "batch_size": 32},
        "train": {"epochs": 3, "triplets_per_epoch": 960, "batch_size": 32, "lr": 3e-4, "workers": 0},
        "eval": {"batch_size": 100},
        "output": {"dir": str(tmp_path / "run"), "progress": False, "tensorboard": False},
    })
    result = train(cfg)
    assert result.warmup_trunk is not None and result.warmup_trunk.is_file()
    spec = cfg.data.open()
    view = dict(input_size=32, crop_ratio=1.0, batch_size=100)
    scores = {}
    for name, extra in (("random init", {}), ("warm-up only", {"pretrained": str(result.warmup_trunk)})):
        seed_everything(0)
        scores[name] = evaluate_model(cfg.model.build(spec.n_attributes, **extra).eval(), spec, "valid", **view).score
    print("valid MAP", result.best_score, scores)
    # measured with the released protocol (value sampling, three passes, Eq. 9 held): 0.357 vs random
    # init 0.279 and warm-up only 0.297; over seeds and the sampling / BatchNorm / Eq. 9 options of
    # docs/training.md this setting gives 0.34-0.40, hence the margins
    assert result.best_score > scores["random init"] + 0.06, (result.best_score, scores)
    assert result.best_score > scores["warm-up only"] + 0.04, (result.best_score, scores)
    assert math.isfinite(result.history[-1]["train_total"])


def test_fused_adam_follows_the_switch_and_matches_the_loop():
    """train.fused_optimizer: off on CPU under auto, on when asked; the fused update equals the
    per-tensor loop's within float rounding over a few steps."""
    import torch

    from agman.engine.config import TrainConfig
    from agman.engine.step import build_optimizer

    cpu = torch.device("cpu")
    auto, forced = TrainConfig(), TrainConfig(fused_optimizer=True)
    assert not auto.uses_fused_optimizer(cpu) and auto.uses_fused_optimizer(torch.device("cuda"))
    assert not TrainConfig(optimizer="sgd", fused_optimizer=True).uses_fused_optimizer(cpu)
    torch.manual_seed(0)
    start = [torch.randn(7, 5), torch.randn(5)]
    weights = {}
    for name, cfg in (("loop", auto), ("fused", forced)):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = build_optimizer(cfg, params, cpu)
        assert bool(opt.defaults.get("fused")) == (name == "fused")
        for step in range(5):
            opt.zero_grad()
            x = torch.linspace(-1, 1, 7) * (step + 1)
            ((x @ params[0] + params[1]) ** 2).sum().backward()
            opt.step()
        weights[name] = [p.detach() for p in params]
    for a, b in zip(weights["loop"], weights["fused"]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
        assert not torch.equal(a, start[0] if a.shape == start[0].shape else start[1])  # it did train


def test_busy_cores_advice_only_when_the_load_fills_the_cores():
    from agman.engine.train import busy_cores_advice

    assert busy_cores_advice(1, load=50.0, cores=2) == ""
    assert busy_cores_advice(2, load=1.5, cores=2) == ""
    text = busy_cores_advice(2, load=9.4, cores=2)
    assert "load average (9.4)" in text and "2 cores" in text and "train.threads=1" in text
