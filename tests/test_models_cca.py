"""The CCA reconstruction: shapes, its cross-attention map, conditions that do not mix, a training
step that learns, torchvision's ViT weights and the warm-up's trunk loading into it."""
from __future__ import annotations

import pytest
import torch
import torchvision

from agman.engine.losses import triplet_ranking_loss
from agman.models.cca import VIT_BACKBONES, ViTTrunk
from agman.models.registry import build_model

N_ATTRIBUTES = 4


def _small(**options):
    torch.manual_seed(0)
    return build_model("cca", N_ATTRIBUTES, vit="vit_tiny_8", embedding_dim=32, **options)


@pytest.mark.parametrize("size", [64, 96])
def test_shapes_norm_and_attention_map(size):
    model = _small().eval()
    images, ids = torch.randn(3, 3, size, size), torch.tensor([0, 3, 1])
    with torch.no_grad():
        out = model(images, ids)
    grid = size // 8
    assert out.embedding.shape == (3, 32) and out.attribute_logits is None
    assert torch.allclose(out.embedding.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert out.attention.shape == (3, grid, grid) and bool((out.attention >= 0).all())
    assert torch.allclose(out.attention.sum(dim=(-2, -1)), torch.ones(3), atol=1e-5)
    assert torch.allclose(model.attention_map(images, ids), out.attention, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of the ViT's patch size 8"):
        model(torch.randn(1, 3, 60, 60), torch.tensor([0]))


def test_the_map_is_the_condition_querys_cross_attention():
    """Recomputed by hand from the last block's attention weights: softmax(q k^T / sqrt(d)) per head,
    averaged, the class token dropped, renormalised."""
    model = _small().eval()
    images, ids = torch.randn(2, 3, 64, 64), torch.tensor([2, 1])
    with torch.no_grad():
        tokens, _ = model.trunk(images)
        block = model.trunk.last
        attn = block.self_attention
        d, heads = attn.embed_dim, attn.num_heads
        w, b = attn.in_proj_weight, attn.in_proj_bias
        q = block.ln_1(tokens[:, 0] + model.condition(ids)) @ w[:d].T + b[:d]
        k = block.ln_1(tokens) @ w[d:2 * d].T + b[d:2 * d]
        q, k = q.view(2, heads, 1, d // heads), k.view(2, -1, heads, d // heads).transpose(1, 2)
        probs = ((q @ k.transpose(-1, -2)) / (d // heads) ** 0.5).softmax(-1).mean(1)[:, 0, 1:]
        expected = (probs / probs.sum(-1, keepdim=True)).view(2, 8, 8)
        assert torch.allclose(model(images, ids).attention, expected, atol=1e-5)


def test_conditions_are_independent():
    """Changing one condition's token changes that condition's embedding and no other's."""
    model = _small().eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        before = model.embed_all(images)
        model.condition.weight[2] += torch.randn_like(model.condition.weight[2])
        after = model.embed_all(images)
    assert not torch.allclose(before[:, 2], after[:, 2], atol=1e-3)
    for a in (0, 1, 3):
        assert torch.equal(before[:, a], after[:, a])


def test_a_training_step_reduces_the_triplet_loss_and_every_part_gets_a_gradient():
    model = _small().train()
    torch.manual_seed(1)
    anchor, positive, negative = (torch.randn(8, 3, 64, 64) for _ in range(3))
    ids = torch.randint(0, N_ATTRIBUTES, (8,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss_now():
        a, p, n = (model(x, ids).embedding for x in (anchor, positive, negative))
        return triplet_ranking_loss(a, p, n, margin=0.2)

    first = loss_now()
    first.backward()
    names = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "condition.weight" in names and "projection.weight" in names
    assert "trunk.conv_proj.weight" in names and "trunk.encoder.layers.encoder_layer_0.mlp.0.weight" in names
    assert "trunk.encoder.layers.encoder_layer_3.self_attention.in_proj_weight" in names
    rows = model.condition.weight.grad.abs().sum(dim=1)
    assert set(torch.nonzero(rows).flatten().tolist()) == set(ids.tolist())  # only the conditions used
    optimizer.step()
    for _ in range(4):
        optimizer.zero_grad()
        loss_now().backward()
        optimizer.step()
    assert loss_now().item() < first.item()


def test_torchvision_vit_weights_load_into_the_trunk(tmp_path):
    """A torchvision VisionTransformer's state dict (here the small one's, saved to a file; the same
    key names as vit_b_16's ImageNet checkpoint) loads with nothing missing but the unused head."""
    torch.manual_seed(3)
    source = torchvision.models.VisionTransformer(**VIT_BACKBONES["vit_tiny_8"])
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    model = build_model("cca", N_ATTRIBUTES, vit="vit_tiny_8", pretrained=str(tmp_path / "vit.pth"))
    report = model.pretrained_report
    assert report.missing == [] and report.unexpected == ["heads.head.weight", "heads.head.bias"]
    assert torch.equal(model.trunk.encoder.pos_embedding, source.encoder.pos_embedding)
    # at the ViT's own size the trunk's tokens are torchvision's encoder before its last block
    images = torch.randn(2, 3, 64, 64)
    source.eval(), model.eval()
    with torch.no_grad():
        tokens, grid = model.trunk(images)
        x = source._process_input(images)
        x = torch.cat([source.class_token.expand(2, -1, -1), x], dim=1) + source.encoder.pos_embedding
        for block in source.encoder.layers[:-1]:
            x = block(x)
    assert grid == (8, 8) and torch.allclose(tokens, x, atol=1e-6)


def test_vit_b_16_builds_and_the_position_embedding_follows_the_input_size():
    with torch.device("meta"):
        model = build_model("cca", 8)
    assert model.trunk.hidden_dim == 768 and len(model.trunk.encoder.layers) == 12
    trunk = ViTTrunk("vit_tiny_8")
    assert trunk.position_embedding((8, 8)) is trunk.encoder.pos_embedding
    assert trunk.position_embedding((12, 6)).shape == (1, 1 + 72, 128)
    with pytest.raises(ValueError, match="unknown ViT backbone 'vit_l_32'"):
        ViTTrunk("vit_l_32")


def test_the_warm_up_trains_the_vit_trunk_cca_then_loads(tmp_path):
    """The synthetic configs' warm-up (value classification) pre-trains cca's own ViT: trunk_arch
    names it, the classifier uses its class token, and the saved trunk loads with nothing missing."""
    from agman.engine.pretrain import ValueClassifier
    from agman.models.registry import trunk_arch

    assert trunk_arch("cca", {"vit": "vit_tiny_8", "backbone": "resnet18"}) == "vit_tiny_8"
    assert trunk_arch("cca", {}) == "vit_b_16" and trunk_arch("agman", {"backbone": "resnet34"}) == "resnet34"
    torch.manual_seed(0)
    net = ValueClassifier("vit_tiny_8", [4, 3])
    assert [tuple(x.shape) for x in net(torch.randn(2, 3, 64, 64))] == [(2, 4), (2, 3)]
    torch.save(net.trunk.state_dict(), tmp_path / "warm.pth")
    model = build_model("cca", N_ATTRIBUTES, vit="vit_tiny_8", pretrained=str(tmp_path / "warm.pth"))
    assert model.pretrained_report.missing == [] and model.pretrained_report.unexpected == []
    assert torch.equal(model.trunk.conv_proj.weight, net.trunk.conv_proj.weight)
