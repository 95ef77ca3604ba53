"""Baselines: CSN (masks, original Zappos setting), ASENet_V2 (layer list of its code), AttnFashion (reconstruction)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from agman.models import build_model, count_parameters
from agman.models.csn import ZAPPOS_ORIGINAL


def test_csn_masks_feed_the_regularisers_and_learn():
    torch.manual_seed(0)
    model = build_model("csn", 4, backbone="resnet18", embedding_dim=32, mask_init="disjoint")
    out = model(torch.randn(2, 3, 64, 64), torch.tensor([0, 3]))
    assert out.masks.shape == (2, 32) and torch.equal(out.masks[1, 24:], torch.ones(8))
    assert torch.allclose(F.normalize(out.general_embedding * out.masks, dim=-1), out.embedding, atol=1e-6)
    # CSN's penalties: L1 on masks, L2 on the general embedding
    (out.masks.norm(p=1) + out.general_embedding.norm(p=2)).backward()
    assert model.masks.weight.grad[[0, 3]].abs().sum() > 0 and model.masks.weight.grad[[1, 2]].abs().sum() == 0


def test_csn_fixed_masks_are_not_trained():
    model = build_model("csn", 4, backbone="resnet18", embedding_dim=16, mask_init="fixed")
    learned = build_model("csn", 4, backbone="resnet18", embedding_dim=16, mask_init="normal")
    assert count_parameters(learned) - count_parameters(model) == 4 * 16
    assert "masks.weight" in model.state_dict()


def test_csn_original_zappos_setting():
    model = build_model("csn", 4, **ZAPPOS_ORIGINAL)
    assert model.trunk.layer4 is not None and model.embed.in_features == 512
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 112, 112), torch.tensor([0, 1]))
    assert out.embedding.shape == (2, 64)


def test_csn_asen_setting_pools_layer3():
    with torch.device("meta"):
        model = build_model("csn", 8)
    assert model.trunk.layer4 is None and model.embed.in_features == 1024 and model.embedding_dim == 1024


def test_asenet_v2_follows_its_layer_list():
    with torch.device("meta"):
        model = build_model("asenet-v2", 8)
    assert model.embedding_dim == 1024 and model.trunk.layer4 is None and model.projection is None
    head = count_parameters(model) - count_parameters(model.trunk)
    expected = (
        8 * 512  # attr_embedding, shared by ASA and ACA
        + 512 * 512 + 512  # attr_transform1
        + 1024 * 512 + 512  # conv1 1x1
        + 2 * 512  # img_bn1
        + 512 * 512 + 512  # attr_transform2
        + 1536 * 512 + 512  # fc1
        + 512 * 1024 + 1024  # fc2
    )
    assert head == expected


def test_asenet_v2_other_embedding_size_adds_a_projection():
    model = build_model("asenet-v2", 3, backbone="resnet18", embedding_dim=64)
    assert model.embedding_dim == 64 and model.projection.in_features == 256
    assert model(torch.randn(2, 3, 64, 64), torch.tensor([0, 2])).embedding.shape == (2, 64)


def test_attnfashion_gate_is_sigmoid_normalised_and_uses_both_levels():
    torch.manual_seed(0)
    model = build_model("attnfashion", 3, backbone="resnet18", embedding_dim=128).eval()
    assert model.fuse[0].in_channels == 256 + 512
    images, ids = torch.randn(2, 3, 96, 96), torch.tensor([0, 2])
    with torch.no_grad():
        (fused, key), _ = model.encode(images)
        gate = model.spatial(key, ids[:, None])[:, 0]
        out = model(images, ids)
    assert bool(((gate > 0) & (gate < 1)).all())
    assert torch.allclose(out.attention, gate / gate.sum(dim=(-2, -1), keepdim=True), atol=1e-6)
    model.train()
    out = model(images, ids)
    (out.embedding * torch.randn_like(out.embedding)).sum().backward()
    assert model.trunk.layer4[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())
