"""Backbone warm-up (stand-in for ImageNet weights offline): value classification on the train split."""
from __future__ import annotations

import logging

import pytest
import torch

from agman.data.layouts import open_dataset
from agman.data.synthetic import generate
from agman.engine.pretrain import (
    ValueClassifier,
    pretrain_backbone,
    value_classification_loss,
)
from agman.models import build_model


def test_loss_ignores_unlabelled_entries():
    logits = [torch.tensor([[5.0, 0.0], [0.0, 5.0]]), torch.tensor([[0.0, 0.0, 9.0], [1.0, 0.0, 0.0]])]
    labels = torch.tensor([[0, -1], [1, -1]])
    only_first = torch.nn.functional.cross_entropy(logits[0], labels[:, 0])
    assert torch.allclose(value_classification_loss(logits, labels), only_first)
    labels = torch.tensor([[0, 2], [1, -1]])
    both = (only_first + torch.nn.functional.cross_entropy(logits[1][:1], labels[:1, 1])) / 2
    assert torch.allclose(value_classification_loss(logits, labels), both)


def test_heads_split_by_value_counts():
    net = ValueClassifier("resnet18", [3, 5]).eval()
    out = net(torch.randn(2, 3, 64, 64))
    assert [o.shape for o in out] == [(2, 3), (2, 5)]


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    return open_dataset(generate(tmp_path_factory.mktemp("synth") / "s", 120, 48, seed=1, progress=False))


def test_warm_up_learns_and_loads_into_every_model(tiny_synth, tmp_path, caplog):
    path = tmp_path / "trunk.pth"
    with caplog.at_level(logging.INFO, logger="agman.engine.pretrain"):
        result = pretrain_backbone(tiny_synth, path, input_size=48, epochs=4, batch_size=16, lr=1e-3, progress=False)
    losses = [float(r.message.split()[-1]) for r in caplog.records if "value cross-entropy" in r.message]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert result.path == path and path.is_file()
    state = torch.load(path, weights_only=True)
    assert "layer4.1.bn2.weight" in state and not any(k.startswith("heads") for k in state)
    model = build_model("agman", tiny_synth.n_attributes, backbone="resnet18", embedding_dim=32,
                        attention_dim=32, pretrained=str(path))
    assert torch.equal(model.trunk.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    again = pretrain_backbone(tiny_synth, path, epochs=4)  # reused, not retrained
    assert again.epochs == 0 and torch.equal(torch.load(path, weights_only=True)["conv1.weight"], state["conv1.weight"])


def test_interrupted_warm_up_continues_to_the_same_trunk(tiny_synth, tmp_path):
    options = dict(input_size=32, epochs=3, batch_size=16, progress=False)
    whole = pretrain_backbone(tiny_synth, tmp_path / "whole.pth", **options)
    assert whole.epochs == 3 and not whole.interrupted
    path = tmp_path / "split.pth"
    first = pretrain_backbone(tiny_synth, path, **options, stop=lambda epoch: epoch == 1)
    assert first.interrupted and first.epochs == 1 and not path.exists()
    assert (tmp_path / "split.pth.partial").is_file()
    rest = pretrain_backbone(tiny_synth, path, **options)
    assert rest.epochs == 2 and not rest.interrupted and not (tmp_path / "split.pth.partial").exists()
    a, b = torch.load(tmp_path / "whole.pth", weights_only=True), torch.load(path, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_config_warm_up(tiny_synth, tmp_path):
    from agman.engine.config import from_dict
    from agman.engine.train import train

    def config(out, **model):
        return from_dict({
            "model": {"name": "csn", "backbone": "resnet18", "embedding_dim": 8, **model},
            "data": {"root": str(tiny_synth.root), "input_size": 32, "crop_ratio": 1.0},
            "warmup": {"epochs": 1, "batch_size": 16},
            "train": {"epochs": 1, "triplets_per_epoch": 8, "batch_size": 4, "workers": 0},
            "eval": {"batch_size": 32},
            "output": {"dir": str(out), "progress": False, "tensorboard": False},
        })

    result = train(config(tmp_path / "run"))
    trunk = result.warmup_trunk
    assert trunk is not None and trunk.parent == tmp_path / "run" and trunk.name.startswith("warmup-resnet18-")
    state = torch.load(trunk, weights_only=True)
    model = build_model("csn", tiny_synth.n_attributes, backbone="resnet18", embedding_dim=8, pretrained=str(trunk))
    assert torch.equal(model.trunk.conv1.weight, state["conv1.weight"])
    again = train(config(tmp_path / "run"), overwrite=True)  # same settings: the trunk file is reused
    assert again.warmup_trunk == trunk and torch.equal(torch.load(trunk, weights_only=True)["conv1.weight"],
                                                       state["conv1.weight"])
    resumed = train(config(tmp_path / "run"), resume=True)  # resume: weights from last.pt, no warm-up
    assert resumed.warmup_trunk is None
    with pytest.raises(ValueError, match="set one of them"):
        train(config(tmp_path / "other", pretrained=str(trunk)))


def test_the_warm_up_classifier_is_kept_and_retrieves_by_value_probabilities(tiny_synth, tmp_path):
    """The demo's strongest simple baseline: the warm-up's classifier as a retriever."""
    import numpy as np

    from agman.engine.evaluate import embed_split, evaluate_embeddings
    from agman.engine.pretrain import heads_path, load_value_classifier

    path = tmp_path / "trunk.pth"
    pretrain_backbone(tiny_synth, path, input_size=32, epochs=2, batch_size=16, progress=False)
    assert heads_path(path).is_file()
    net = load_value_classifier(path, "resnet18", tiny_synth.value_counts)
    x = torch.randn(3, 3, 32, 32)
    emb = net.embed_all(x)
    assert emb.shape == (3, tiny_synth.n_attributes, max(tiny_synth.value_counts))
    with torch.no_grad():
        logits = net(x)
    for a, lg in enumerate(logits):  # each attribute: its softmax, zeros past its value count
        n = tiny_synth.value_counts[a]
        assert torch.allclose(emb[:, a, :n], lg.softmax(dim=1), atol=1e-6) and not emb[:, a, n:].any()
    # the trunk file is the classifier's trunk; ranking by the dot product = by P(same value)
    assert torch.equal(net.trunk.conv1.weight, torch.load(path, weights_only=True)["conv1.weight"])
    test = embed_split(net, tiny_synth, "test", input_size=32, crop_ratio=1.0)
    result = evaluate_embeddings(test, tiny_synth, "test")
    assert 0 < result.asfr.overall_map <= 1 and np.isfinite(test).all()
    heads_path(path).unlink()  # a trunk from an older agman has no heads: no classifier
    assert load_value_classifier(path, "resnet18", tiny_synth.value_counts) is None
    with pytest.raises(ValueError, match="values per attribute"):
        pretrain_backbone(tiny_synth, tmp_path / "t2.pth", input_size=32, epochs=1, batch_size=16, progress=False)
        load_value_classifier(tmp_path / "t2.pth", "resnet18", [2] * tiny_synth.n_attributes)
