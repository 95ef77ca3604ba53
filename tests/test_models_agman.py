"""AG-MAN: ablation switches (Tables 5–8), gradients, the released-code preset, the 224-px ResNet-50 pass."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from agman.models import build_model, count_parameters
from agman.models.agman import AGMAN, AGMANOfficial, released_code_parameter_count

SMALL = dict(backbone="resnet18")
SWITCHES = ("hierarchical", "classification", "asa", "sa", "aca", "ca")


def loss_of(out, generator=None):
    """A loss touching every output a training loss uses (embedding, Eq. 7 logits)."""
    direction = torch.randn(out.embedding.shape, generator=generator)
    loss = (out.embedding * direction).sum()
    if out.attribute_logits is not None:
        target = F.one_hot(torch.arange(len(out.attribute_logits)) % out.attribute_logits.shape[1],
                           out.attribute_logits.shape[1]).float()
        loss = loss + F.binary_cross_entropy_with_logits(out.attribute_logits, target)
    return loss


def params_without_grad(model):
    return [n for n, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]


def names(module, prefix=""):
    return {prefix + n for n, _ in module.named_parameters()}


def part_of(model, switch):
    """The parameters an ablation switch should remove: (names, count)."""
    parts = {
        "asa": [("aga.asa.", model.aga.asa)], "sa": [("aga.sa.", model.aga.sa)],
        "aca": [("aga.aca.", model.aga.aca)], "ca": [("aga.ca.", model.aga.ca)],
        "classification": [("trunk.layer4.", model.trunk.layer4), ("classifier.", model.classifier)],
        "hierarchical": [("fusion.", model.fusion)],
    }[switch]
    removed = set().union(*(names(m, p) for p, m in parts))
    n = sum(count_parameters(m) for _, m in parts)
    if switch == "hierarchical":  # AGA's 1x1 reduction then sees c3 instead of 2*c3 channels
        n += model.trunk.channels["layer3"] * model.aga.reduce.out_channels
    return removed, n


@pytest.fixture(scope="module")
def full():
    torch.manual_seed(0)
    return build_model("agman", 4, **SMALL)


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_removes_exactly_its_part_and_still_trains(full, switch):
    torch.manual_seed(1)
    ablated = build_model("agman", 4, **SMALL, **{switch: False})
    removed, n_removed = part_of(full, switch)
    assert removed and n_removed > 0
    assert names(ablated) == names(full) - removed
    assert count_parameters(full) - count_parameters(ablated) == n_removed

    images, ids = torch.randn(2, 3, 64, 64), torch.tensor([0, 3])
    before = {n: p.detach().clone() for n, p in ablated.named_parameters()}
    optimizer = torch.optim.SGD(ablated.parameters(), lr=0.05)
    out = ablated(images, ids)
    assert (out.attribute_logits is None) == (switch == "classification")
    loss = loss_of(out)
    loss.backward()
    assert params_without_grad(ablated) == []  # gradients reach every enabled part
    optimizer.step()
    assert torch.isfinite(loss)
    changed = [n for n, p in ablated.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)


def test_gradients_reach_every_part_of_the_full_model(full):
    full.zero_grad()
    loss_of(full(torch.randn(2, 3, 96, 96), torch.tensor([1, 2]))).backward()
    assert params_without_grad(full) == []


def test_hierarchical_feeds_concat_of_f3_and_f23(full):
    assert full.aga.reduce.in_channels == 2 * full.trunk.channels["layer3"]
    flat = build_model("agman", 4, **SMALL, hierarchical=False)
    assert flat.aga.reduce.in_channels == flat.trunk.channels["layer3"] and flat.fusion is None


def test_attention_is_asa_softmax_and_embedding_unit(full):
    full.eval()
    with torch.no_grad():
        out = full(torch.randn(3, 3, 112, 112), torch.tensor([0, 1, 3]))
        maps = full.attention_map(torch.randn(3, 3, 112, 112), torch.tensor([0, 1, 3]))
    assert out.attention.shape == (3, 7, 7) and maps.shape == (3, 7, 7)
    assert torch.allclose(out.attention.sum(dim=(-2, -1)), torch.ones(3), atol=1e-5)
    assert torch.allclose(out.embedding.norm(dim=-1), torch.ones(3), atol=1e-5)
    full.train()


def test_options_sa_kernel_ca_reduction_and_add():
    model = build_model("agman", 3, **SMALL, sa_kernel=1, ca_reduction=8, aca_combine="add", embedding_dim=512)
    assert model.aga.sa.conv.kernel_size == (1, 1) and model.aga.ca.down.out_features == 64
    assert model.aga.aca.fc1.in_features == 512 and model.projection is None
    out = model(torch.randn(2, 3, 64, 64), torch.tensor([0, 2]))
    assert out.embedding.shape == (2, 512)


def test_config_is_plain_and_rebuilds_the_same_architecture():
    model = build_model("agman", 3, **SMALL, ca=False, sa_kernel=3, embedding_dim=256)
    text = json.dumps(model.config)  # plain values only
    rebuilt = build_model(model.name, model.n_attributes, **json.loads(text))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert rebuilt.config == model.config and "pretrained" not in model.config


@pytest.mark.parametrize("n", [8, 5, 4])
def test_official_preset_matches_released_parameter_count(n):
    with torch.device("meta"):
        model = build_model("agman-official", n)
    assert count_parameters(model) == released_code_parameter_count(n)


def test_official_count_for_fashionai_is_the_released_number():
    assert released_code_parameter_count(8) == 26_420_909
    print("agman-official, ResNet-50, 8 attributes:", released_code_parameter_count(8), "trainable parameters")


def test_official_preset_deviations():
    model = build_model("agman-official", 4, **SMALL, embedding_dim=1024)
    assert isinstance(model, AGMANOfficial) and model.name == "agman-official"
    assert model.aga.ca is None and model.aga.masks is not None and model.aga.input_scale is not None
    assert model.aga.sa.conv.kernel_size == (7, 7)
    assert model.aga.asa.attribute.embedding is model.aga.aca.attribute.embedding
    assert model.embedding_dim == 512 and model.projection is None  # c'-sized whatever D asks
    out = model(torch.randn(2, 3, 64, 64), torch.tensor([1, 3]))
    assert out.embedding.shape == (2, 512) and out.masks.shape == (2, 512)
    assert torch.allclose(F.normalize(out.general_embedding * out.masks, dim=-1), out.embedding, atol=1e-6)
    # the disjoint init: attribute 1's block of 1s
    assert torch.equal(out.masks[0, 128:256], torch.ones(128))
    assert torch.allclose(out.masks[0, :128], torch.full((128,), 0.1))
    rebuilt = build_model(model.name, model.n_attributes, **model.config)
    assert type(rebuilt) is AGMANOfficial and rebuilt.config == model.config


def test_paper_preset_reaches_d_1024_through_an_extra_fc_that_embedding_dim_512_removes():
    # §3.1: D = 1024 with c' = 512; the paper lists no layer from c' to D, agman adds Linear(c', D)
    paper = build_model("agman", 8, backbone="resnet50")
    assert (paper.projection.in_features, paper.projection.out_features) == (512, 1024)
    narrow = build_model("agman", 8, backbone="resnet50", embedding_dim=512)
    assert narrow.projection is None
    assert count_parameters(paper) - count_parameters(narrow) == 512 * 1024 + 1024


def test_in_the_released_network_w2_has_no_effect():
    # v * W2 * mask -> x CSN mask -> L2 norm: the output is invariant to the scalar W2 (> 0), so its
    # gradient is round-off only (the acceptance test had to match the released ops to agree on it)
    torch.manual_seed(0)
    model = build_model("agman-official", 4, **SMALL)
    images, ids = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    before = model(images, ids).embedding.detach()
    with torch.no_grad():
        model.aga.aca.scale.mul_(3.0)
    assert torch.allclose(model(images, ids).embedding, before, atol=1e-6)
    loss_of(model(images, ids), torch.Generator().manual_seed(0)).backward()
    assert model.aga.aca.scale.grad.abs().item() < 1e-5 * model.aga.asa.scale.grad.abs().item()


def test_paper_and_official_defaults_differ_only_where_documented():
    paper, official = AGMAN(8, backbone="resnet18").config, AGMANOfficial(8, backbone="resnet18").config
    differing = {k for k in paper if paper[k] != official[k]}
    assert differing == {"embedding_dim", "ca", "input_scale", "attribute_masks", "shared_attribute_embedding",
                         "fusion_init"}


def test_resnet50_224_forward_backward_on_cpu():
    torch.manual_seed(0)
    model = build_model("agman", 8)
    out = model(torch.randn(2, 3, 224, 224), torch.tensor([0, 7]))
    assert out.embedding.shape == (2, 1024) and out.attribute_logits.shape == (2, 8)
    assert out.attention.shape == (2, 14, 14)
    loss_of(out).backward()
    assert model.trunk.conv1.weight.grad is not None and model.trunk.conv1.weight.grad.abs().sum() > 0
    assert model.classifier.weight.grad.abs().sum() > 0
