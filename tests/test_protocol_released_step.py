"""Acceptance (issue 9): agman's training step, as the FashionAI ``agman-official`` config sets it up,
is the released code's training step.

The released step is written out below from the authors' files (github.com/Dr-LingXiao/AG-MAN):
``mainFashionAI.py`` (``train``: ``sim_a, sim_b, loss_c = tnet(data1, data2, data3, c)``, target -1,
``MarginRankingLoss(margin=0.2)``, ``loss_sum = awl(loss_triplet, loss_c)``, Adam over
``filter(requires_grad, tnet.parameters())`` at lr 1e-4 — ``awl`` is not in it), ``model.py``
(``Tripletnet.forward``: anchor, far, close as three passes; dot-product similarities;
``(BCE(x1) + BCE(y1) + BCE(z1)) / 3`` against ``eye(n)[c]``) and ``resnet.py``
(``AutomaticWeightedLoss``: parameters ``ones(2)``, ``sum 0.5 * exp(p_i) * L_i + p_i``).

Both sides start from the same weights and see the same batches; the config is the packaged
FashionAI one with a small backbone and small inputs (the code path is the same).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from agman.engine import distributed as D
from agman.engine.config import load_config
from agman.engine.step import TrainStep
from agman.engine.train import build_state

N_ATTRIBUTES = 8  # FashionAI
SMALL = ["model.backbone=resnet18", "model.attention_dim=32", "model.pretrained=none"]


def released_step(tnet_embeddingnet: nn.Module, optimizer: torch.optim.Optimizer, data1, data2, data3, c):
    """One iteration of mainFashionAI.py's ``train`` loop: data1 anchor, data2 far, data3 close."""
    # Tripletnet.forward
    embedded_x, x1 = _released_outputs(tnet_embeddingnet, data1, c)
    embedded_y, y1 = _released_outputs(tnet_embeddingnet, data2, c)
    embedded_z, z1 = _released_outputs(tnet_embeddingnet, data3, c)
    sim_a = torch.sum(embedded_x * embedded_y, dim=1)
    sim_b = torch.sum(embedded_x * embedded_z, dim=1)
    cls = torch.eye(N_ATTRIBUTES)[c, :]
    criterion1 = nn.BCEWithLogitsLoss()
    loss_c = (criterion1(x1, cls) + criterion1(y1, cls) + criterion1(z1, cls)) / 3.0
    # train()
    target = torch.FloatTensor(sim_a.size()).fill_(-1)
    loss_triplet = nn.MarginRankingLoss(margin=0.2)(sim_a, sim_b, target)
    awl_params = torch.ones(2)  # AutomaticWeightedLoss(2): created, never given to the optimizer
    loss_sum = 0
    for i, loss in enumerate((loss_triplet, loss_c)):
        loss_sum = loss_sum + 0.5 * torch.exp(awl_params[i]) * loss + awl_params[i]
    optimizer.zero_grad()
    loss_sum.backward()
    optimizer.step()
    return {"total": loss_sum.item(), "triplet": loss_triplet.item(), "classification": loss_c.item()}


def _released_outputs(model, images, c):
    """``embedded, x1 = AG_MAN(images, c)``: the unit embedding and the classification logits."""
    out = model(images, c)
    return out.embedding, out.attribute_logits


@pytest.fixture(scope="module")
def config():
    return load_config("configs/fashionai/agman-official.yaml", SMALL)


def test_the_official_config_claims_the_released_settings(config):
    t, loss = config.train, config.loss
    assert config.model.name == "agman-official"
    assert (t.optimizer, t.lr, t.batch_size, t.weight_decay, t.grad_clip) == ("adam", 1e-4, 16, 0.0, 0.0)
    assert (t.lr_step, t.lr_gamma, t.epochs) == (3, 0.9, 50)
    assert t.amp == "none"  # the released code is fp32
    assert t.bn_passes == "separate" and t.sampling == "value"
    assert (loss.weighting, loss.weight_init) == ("released", 1.0)
    assert loss.margin == 0.2 and loss.classification is True
    assert config.data.crop_ratio == 1.0 and config.data.input_size == 224


def agman_step_setup(config):
    """What ``agman.engine.train`` builds for a fresh run of ``config`` on CPU: the state and the step."""
    state = build_state(config, N_ATTRIBUTES, torch.device("cpu"), None)
    step = TrainStep.for_run(state.model, state.criterion, state.optimizer, config.train,
                             D.DistributedContext(device=torch.device("cpu")))
    return state.model.train(), step, state.criterion, state.optimizer


def batches(n_steps=3, batch=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_steps):
        images = [torch.randn(batch, 3, size, size, generator=g) for _ in range(3)]
        yield (*images, torch.randint(0, N_ATTRIBUTES, (batch,), generator=g))


def run_both(config):
    ours, step, criterion, optimizer = agman_step_setup(config)
    theirs = copy.deepcopy(ours)
    assert list(criterion.parameters()) == []  # Adam holds the model's parameters only, as released
    assert len(optimizer.param_groups[0]["params"]) == len([p for p in ours.parameters() if p.requires_grad])
    released_opt = torch.optim.Adam(filter(lambda p: p.requires_grad, theirs.parameters()), lr=1e-4)
    losses = []
    for anchor, positive, negative, c in batches():
        got = step(anchor, positive, negative, c)
        want = released_step(theirs, released_opt, anchor, negative, positive, c)
        losses.append(({k: float(got.parts[k].detach()) for k in want}, want))
    return ours, theirs, losses


def test_three_steps_equal_the_released_training_step(config):
    ours, theirs, losses = run_both(config)
    for got, want in losses:
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-5), (k, got[k], want[k])
    assert losses[0][1]["triplet"] > 0 and losses[0][1]["classification"] > 0
    theirs_params, start = dict(theirs.named_parameters()), build_start(config)
    for name, p in ours.named_parameters():
        assert torch.allclose(p, theirs_params[name], rtol=1e-5, atol=1e-5), name
        assert not torch.equal(p, start[name]), name  # every parameter moved: nothing trivially equal
    theirs_buffers = dict(theirs.named_buffers())
    for name, b in ours.named_buffers():
        assert torch.allclose(b.float(), theirs_buffers[name].float(), rtol=1e-5, atol=1e-5), name
    assert int(dict(ours.named_buffers())["trunk.bn1.num_batches_tracked"]) == 9  # 3 steps x 3 passes


_START: dict = {}


def build_start(config):
    if not _START:
        model = build_state(config, N_ATTRIBUTES, torch.device("cpu"), None).model
        _START.update({k: v.detach().clone() for k, v in model.named_parameters()})
    return _START


def test_one_joint_pass_of_3b_is_not_the_released_step(config):
    # the check has teeth: BatchNorm over one batch of 3B gives other statistics and running buffers
    joint = load_config("configs/fashionai/agman-official.yaml", SMALL + ["train.bn_passes=joint"])
    ours, theirs, losses = run_both(joint)
    assert losses[0][0]["total"] != pytest.approx(losses[0][1]["total"], rel=1e-5)
    worst = max(float((b.float() - dict(theirs.named_buffers())[n].float()).abs().max())
                for n, b in ours.named_buffers() if "running_mean" in n)
    assert worst > 1e-3


def test_the_stacked_pass_and_small_map_matmul_compute_the_released_step():
    # the demo's speed switches (issue #25): one pass of 3B with BatchNorm per set, and layer4's 2x2 maps
    # as matrix products, against the released step run on a plain copy from the same weights
    config = load_config("configs/fashionai/agman-official.yaml",
                         SMALL + ["train.bn_passes=stacked", "train.small_map_matmul=true"])
    ours, step, _, _ = agman_step_setup(config)
    assert sum(type(m).__name__ == "SmallMapConv2d" for m in ours.modules()) > 0
    theirs = build_state(load_config("configs/fashionai/agman-official.yaml", SMALL), N_ATTRIBUTES,
                         torch.device("cpu"), None).model.train()
    assert not any(type(m).__name__ == "SmallMapConv2d" for m in theirs.modules())
    theirs.load_state_dict(ours.state_dict())
    released_opt = torch.optim.Adam(filter(lambda p: p.requires_grad, theirs.parameters()), lr=1e-4)
    for i, (anchor, positive, negative, c) in enumerate(batches()):
        got = step(anchor, positive, negative, c)
        want = released_step(theirs, released_opt, anchor, negative, positive, c)
        for k in want:
            assert float(got.parts[k].detach()) == pytest.approx(want[k], rel=1e-5), (i, k)
        if i == 0:  # same starting weights: the gradients agree within float rounding
            theirs_params = dict(theirs.named_parameters())
            for name, p in ours.named_parameters():
                expected = theirs_params[name].grad
                tolerance = 1e-6 + 1e-4 * float(expected.abs().max())
                assert float((p.grad - expected).abs().max()) <= tolerance, name
            assert _worst_buffer_difference(ours, theirs) <= 1e-5  # BatchNorm statistics per set, released order
    # after three Adam steps float rounding has moved a few weights by ~lr; still far below a joint pass's >1e-3
    assert _worst_buffer_difference(ours, theirs) <= 1e-4
    assert int(dict(ours.named_buffers())["trunk.bn1.num_batches_tracked"]) == 9  # 3 steps x 3 sets


def _worst_buffer_difference(ours: nn.Module, theirs: nn.Module) -> float:
    theirs_buffers = dict(theirs.named_buffers())
    return max(float((b.float() - theirs_buffers[name].float()).abs().max()) for name, b in ours.named_buffers())
