"""Losses: Eq. 8 sign, Eq. 7 BCE, Eq. 9 released / as printed (and its drift) / uncertainty / fixed, CSN."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from agman.engine import losses
from agman.models.output import ModelOutput
from agman.models.registry import build_model


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_triplet_loss_penalises_a_negative_not_margin_less_similar():
    a = unit([1.0, 0.0])
    p_close, n_far = unit([1.0, 0.1]), unit([0.0, 1.0])
    assert losses.triplet_ranking_loss(a, p_close, n_far, 0.2).item() == 0.0
    # swapped: the negative is the similar one -> loss = m + s(a,n) - s(a,p)
    s_close = float((a * p_close).sum())
    want = 0.2 + s_close - 0.0
    assert losses.triplet_ranking_loss(a, n_far, p_close, 0.2).item() == pytest.approx(want, rel=1e-6)
    # inside the margin: penalised although the positive is closer
    p = unit([1.0, 0.3])
    n = unit([1.0, 0.4])
    assert losses.triplet_ranking_loss(a, p, n, 0.2).item() > 0


def test_classification_loss_is_bce_against_the_one_hot_attribute():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0], [-3.0, 1.0, 2.0]])
    ids = torch.tensor([0, 2, 1])
    target = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    p = torch.sigmoid(logits)
    manual = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    assert losses.attribute_classification_loss(logits, ids).item() == pytest.approx(manual.item(), rel=1e-6)


def test_classification_loss_of_a_triplet_is_the_mean_of_the_three_images_bce():
    torch.manual_seed(0)
    logits, ids = torch.randn(12, 5), torch.tensor([0, 4, 2, 2])
    bce = torch.nn.BCEWithLogitsLoss()
    target = torch.eye(5)[ids]
    a, p, n = logits.chunk(3)
    released = (bce(a, target) + bce(n, target) + bce(p, target)) / 3.0  # Tripletnet: anchor, far, close
    assert torch.equal(losses.triplet_classification_loss(logits, ids), released)
    assert losses.triplet_classification_loss(logits, ids).item() == pytest.approx(
        losses.attribute_classification_loss(logits, ids.repeat(3)).item(), rel=1e-6)


def test_triplet_loss_is_margin_ranking_on_dot_products():
    torch.manual_seed(1)
    a, p, n = (F.normalize(torch.randn(6, 8), dim=-1) for _ in range(3))
    sim_a, sim_b = (a * n).sum(1), (a * p).sum(1)  # released: sim_a with the far image, sim_b the close one
    released = torch.nn.MarginRankingLoss(margin=0.2)(sim_a, sim_b, torch.full((6,), -1.0))
    assert torch.equal(losses.triplet_ranking_loss(a, p, n, 0.2), released)


def test_learned_weighting_is_eq9_as_printed_and_its_weights_only_fall():
    w = losses.LossWeighting(("classification", "triplet"), "learned", init=0.0)
    lc, lt = torch.tensor(0.7), torch.tensor(0.3)
    total = w({"classification": lc, "triplet": lt})
    assert total.item() == pytest.approx(0.5 * 0.7 + 0 + 0.5 * 0.3 + 0)
    total.backward()
    # dL/dw_i = 0.5 e^{w_i} L_i + 1 > 0: gradient descent lowers every w_i whatever the losses
    assert torch.allclose(w.log_weights.grad, torch.tensor([0.5 * 0.7 + 1, 0.5 * 0.3 + 1]))
    opt = torch.optim.SGD(w.parameters(), lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        w({"classification": torch.tensor(0.0), "triplet": torch.tensor(0.0)}).backward()
        opt.step()
    assert torch.all(w.log_weights < -1.9)
    eff = w.effective_weights()
    assert eff["triplet"] == pytest.approx(0.5 * math.exp(float(w.log_weights.detach()[1])))
    one = losses.LossWeighting(("triplet",), "learned", init=1.0)
    assert one.effective_weights()["triplet"] == pytest.approx(0.5 * math.e)


def test_dynamic_is_read_as_learned():
    # configs and checkpoints written before the rename say "dynamic"
    old = losses.LossWeighting(("classification", "triplet"), "dynamic", init=0.3)
    assert old.mode == "learned" and [n for n, _ in old.named_parameters()] == ["log_weights"]
    new = losses.LossWeighting(("classification", "triplet"), "learned")
    new.load_state_dict(old.state_dict())
    assert torch.equal(new.log_weights, old.log_weights)
    assert losses.TripletCriterion(weighting="dynamic").weighting.mode == "learned"


def test_released_weighting_is_constant_half_e_plus_one_per_term():
    w = losses.LossWeighting(("classification", "triplet"), "released", init=1.0)
    assert list(w.parameters()) == []  # never optimised, as in mainFashionAI.py (Adam gets tnet's parameters)
    assert torch.equal(w.state_dict()["log_weights"], torch.ones(2))  # kept in checkpoints
    lc = torch.tensor(0.7, requires_grad=True)
    lt = torch.tensor(0.3, requires_grad=True)
    total = w({"classification": lc, "triplet": lt})
    assert total.item() == pytest.approx(0.5 * math.e * 0.7 + 1 + 0.5 * math.e * 0.3 + 1, rel=1e-6)
    total.backward()
    assert lc.grad.item() == pytest.approx(0.5 * math.e) and lt.grad.item() == pytest.approx(0.5 * math.e)
    assert w.effective_weights() == pytest.approx({"classification": 0.5 * math.e, "triplet": 0.5 * math.e})
    # the order of the terms does not matter (the released code calls awl(L_triplet, L_cls))
    swapped = losses.LossWeighting(("triplet", "classification"), "released", init=1.0)
    assert swapped({"classification": lc, "triplet": lt}).item() == pytest.approx(total.item(), rel=1e-7)
    # the criterion's default: the weights held
    crit = losses.TripletCriterion()
    assert crit.weighting.mode == "released" and list(crit.parameters()) == []
    # held at the paper's start (w = 0): 0.5 per loss, the paper preset's choice (docs/training.md)
    assert crit.weighting.effective_weights() == {"classification": 0.5, "triplet": 0.5}


def test_uncertainty_and_fixed_weighting():
    u = losses.LossWeighting(("classification", "triplet"), "uncertainty", init=0.5)
    total = u({"classification": torch.tensor(2.0), "triplet": torch.tensor(1.0)})
    want = 0.5 * math.exp(-0.5) * 2 + 0.25 + 0.5 * math.exp(-0.5) * 1 + 0.25
    assert total.item() == pytest.approx(want, rel=1e-6)
    f = losses.LossWeighting(("classification", "triplet"), "fixed", weights={"classification": 0.1})
    assert list(f.parameters()) == []
    assert f({"classification": torch.tensor(2.0), "triplet": torch.tensor(1.0)}).item() == pytest.approx(1.2)
    with pytest.raises(ValueError, match="unknown term"):
        losses.LossWeighting(("triplet",), "fixed", weights={"cls": 1.0})
    with pytest.raises(ValueError, match="weighting must be one of"):
        losses.LossWeighting(("triplet",), "softmax")


def test_csn_regularisers():
    masks = torch.tensor([[1.0, -2.0], [0.5, 0.5], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    # CSN (tripletnet.py + main.py): the L1 norm of each image set's masks, averaged over the three sets, / B
    per_set = [masks[0:2].abs().sum(), masks[2:4].abs().sum(), masks[4:6].abs().sum()]
    assert losses.mask_l1_penalty(masks, 2).item() == pytest.approx(sum(per_set).item() / 3 / 2)
    assert losses.mask_l1_penalty(masks, 2).item() == pytest.approx(9.0 / 3 / 2)
    general = torch.ones(6, 4)
    # three parts of 2 rows x 4 ones: Frobenius norm sqrt(8) each, averaged, / sqrt(B)
    assert losses.embedding_l2_penalty(general, 2).item() == pytest.approx(math.sqrt(8) / math.sqrt(2), rel=1e-6)


@pytest.mark.parametrize("name", ["agman", "csn", "agman-official"])
def test_criterion_on_real_model_outputs(name):
    torch.manual_seed(0)
    kw = dict(backbone="resnet18", embedding_dim=16)
    if name != "csn":
        kw["attention_dim"] = 16
    model = build_model(name, 3, **kw)
    images = torch.randn(6, 3, 32, 32)
    attrs = torch.tensor([0, 2])
    out = model(images, attrs.repeat(3))
    has_branch = bool(model.config.get("classification", False))
    crit = losses.TripletCriterion(classification=has_branch, weighting="learned" if has_branch else "fixed",
                                   mask_l1=5e-4 if name != "agman" else 0.0, embed_l2=5e-3 if name != "agman" else 0.0)
    res = crit(out, attrs)
    res.total.backward()
    assert set(res.parts) >= {"triplet", "total"}
    assert ("classification" in res.parts) == has_branch
    assert ("regularization" in res.parts) == (name != "agman")
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.grad is not None)
    if name == "agman":
        with pytest.raises(ValueError, match="masks"):
            losses.TripletCriterion(mask_l1=1.0)(model(images, attrs.repeat(3)), attrs)


def test_classification_needs_the_branch():
    out = ModelOutput(embedding=F.normalize(torch.randn(6, 4), dim=-1))
    with pytest.raises(ValueError, match="classification branch"):
        losses.TripletCriterion(classification=True)(out, torch.tensor([0, 1]))
