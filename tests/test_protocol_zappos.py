"""The Zappos50k protocol of the released mainZappos50k.py, on a small dataset in CSN's layout: a fixed
subset of the triplet lists trained on every epoch (new order each epoch), the triplet loss only,
validation by triplet relation (TR) accuracy, the best epoch by that accuracy."""
from __future__ import annotations

import numpy as np
import pytest

from agman.engine import train as T
from agman.engine.checkpoint import load_checkpoint
from agman.engine.config import load_config


@pytest.mark.parametrize("model", ["agman-official", "agman"])
def test_zappos_configs_train_the_released_protocol(model, csn_root, tmp_path, monkeypatch):
    cfg = load_config(f"configs/zappos50k/{model}.yaml", [
        f"data.root={csn_root}", "model.backbone=resnet18", "model.attention_dim=16", "model.embedding_dim=16",
        "model.pretrained=none", "data.input_size=32", "train.epochs=3", "train.triplets_per_epoch=10",
        "train.batch_size=5", "train.workers=0", "train.threads=1", "eval.batch_size=16",
        f"output.dir={tmp_path / 'run'}", "output.progress=false", "output.tensorboard=false"])
    assert cfg.loss.classification is False and cfg.model.options["classification"] is False
    assert cfg.loss.weighting == "fixed" and cfg.train.triplets_per_epoch == 10  # 200k unless overridden
    drawn = []
    make = T.make_sampler

    def recording(*args, **kwargs):
        sampler = make(*args, **kwargs)
        epoch = sampler.epoch
        sampler.epoch = lambda e: drawn.append(epoch(e)) or drawn[-1]
        return sampler

    monkeypatch.setattr(T, "make_sampler", recording)
    result = T.train(cfg)

    # the same 10 triplets (of the 24 listed) every epoch, each epoch in its own order
    per_epoch = {}
    for rows in drawn:
        per_epoch.setdefault(rows.tobytes(), rows)
    epochs = list(per_epoch.values())
    assert len(epochs) == 3 and all(len(e) == 10 for e in epochs)
    assert all({tuple(r) for r in e.tolist()} == {tuple(r) for r in epochs[0].tolist()} for e in epochs)
    # rows are (attribute, anchor, close, far) taken from the lists' (anchor, far, close)
    from agman.data.csn import read_csn

    lists = read_csn(csn_root).split("train").triplets
    listed = {(a, r[0], r[2], r[1]) for a, t in lists.items() for r in t.tolist()}
    assert {tuple(r) for r in epochs[0].tolist()} <= listed

    # the triplet loss only, and model selection on validation TR accuracy
    assert result.criterion.classification is False and list(result.criterion.parameters()) == []
    assert all("train_classification" not in row and "train_triplet" in row for row in result.history)
    scores = [row["valid_score"] for row in result.history]
    assert all(0.0 <= s <= 1.0 for s in scores) and "valid_tr_loss" in result.history[0]
    assert result.best_score == max(scores)
    best = load_checkpoint(result.best_path)
    assert best["metrics"]["tr_accuracy"] == best["metrics"]["score"] == max(scores)
    assert best["epoch"] == 1 + int(np.argmax(scores))
