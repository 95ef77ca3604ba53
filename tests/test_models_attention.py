"""ASA (Eq. 1–3), SA (Eq. 4), ACA (Eq. 5–6), CA and CSN masks, on their own."""
from __future__ import annotations

import math

import pytest
import torch

from agman.models.attention import (
    ACA,
    ASA,
    CA,
    SA,
    AttributeMasks,
    AttributeVector,
    weighted_sum_pool,
)


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_attribute_vector_gate_is_sigmoid_times_itself():
    vec = AttributeVector(3, 8, "gate")
    ids = torch.tensor([[0, 2]])
    a = vec.fc(vec.embedding(ids))
    assert torch.allclose(vec(ids), torch.sigmoid(a) * a)
    assert torch.allclose(AttributeVector(3, 8, "tanh", vec.embedding)(ids).abs().max() <= 1, torch.tensor(True))
    with pytest.raises(ValueError, match="activation"):
        AttributeVector(3, 8, "softplus")


def test_shared_embedding_is_used_not_copied():
    table = torch.nn.Embedding(4, 8)
    a, b = AttributeVector(4, 8, embedding=table), AttributeVector(4, 8, embedding=table)
    assert a.embedding is b.embedding is table


def test_asa_map_is_a_softmax_over_space_of_the_scaled_dot_product():
    torch.manual_seed(0)
    asa = ASA(16, 5).eval()
    x = torch.randn(2, 16, 3, 4)
    ids = torch.tensor([[0, 4, 1], [2, 2, 3]])
    key = asa.image_key(x)
    att = asa(key, ids)
    assert att.shape == (2, 3, 3, 4)
    assert torch.allclose(att.sum(dim=(-2, -1)), torch.ones(2, 3), atol=1e-6)
    # slot (1, 2): attribute 3 for image 1, computed by hand
    q = asa.attribute(torch.tensor(3))
    logits = (key[1] * q[:, None, None]).sum(0) / math.sqrt(16)
    assert torch.allclose(att[1, 2], logits.flatten().softmax(0).view(3, 4), atol=1e-6)


def test_asa_sigmoid_gate_and_own_projection():
    asa = ASA(8, 3, in_channels=12, normalization="sigmoid", scaled=False)
    assert asa.scale is None and asa.project.in_channels == 12
    gate = asa(asa.image_key(torch.randn(2, 12, 5, 5)), torch.tensor([[0], [2]]))
    assert gate.shape == (2, 1, 5, 5) and bool(((gate > 0) & (gate < 1)).all())
    assert not torch.allclose(gate.sum(dim=(-2, -1)), torch.ones(2, 1))


def test_weighted_sum_pool():
    f, w = torch.randn(2, 4, 3, 3), torch.rand(2, 5, 3, 3)
    expected = (f[:, None] * w[:, :, None]).sum(dim=(-2, -1))
    assert torch.allclose(weighted_sum_pool(f, w), expected, atol=1e-6)


@pytest.mark.parametrize("kernel", [1, 3, 7])
def test_sa_reweights_positions_and_keeps_shape(kernel):
    sa = SA(kernel)
    assert count(sa) == 2 * kernel * kernel
    x = torch.randn(2, 3, 6, 8, 5)  # leading dims are flattened
    y = sa(x)
    assert y.shape == x.shape
    ratio = y / x
    assert torch.allclose(ratio, ratio[:, :, :1].expand_as(ratio), atol=1e-5)  # one weight per position
    assert bool(((ratio > 0) & (ratio < 1)).all())


def test_sa_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        SA(4)


def test_aca_concat_and_add():
    concat, add = ACA(16, 4, combine="concat"), ACA(16, 4, combine="add")
    assert concat.fc1.in_features == 32 and add.fc1.in_features == 16
    assert count(concat) - count(add) == 16 * 16
    v, ids = torch.randn(2, 3, 16), torch.tensor([[0, 1, 2], [3, 3, 0]])
    out = concat(v, ids)
    ratio = out / v
    assert out.shape == v.shape and bool(((ratio > 0) & (ratio < 1)).all())  # W2 = 1 at init
    with pytest.raises(ValueError, match="attribute_dim"):
        ACA(16, 4, attribute_dim=8, combine="add")


def test_aca_scale_is_w2():
    aca = ACA(8, 2)
    v, ids = torch.randn(1, 1, 8), torch.tensor([[1]])
    base = aca(v, ids)
    with torch.no_grad():
        aca.scale.fill_(3.0)
    assert torch.allclose(aca(v, ids), 3 * base)


def test_ca_is_bias_free_se_gate():
    ca = CA(64, reduction=16)
    assert count(ca) == 2 * 64 * 4
    v = torch.randn(3, 2, 64)
    assert ca(v).shape == v.shape
    with pytest.raises(ValueError, match="reduction"):
        CA(8, reduction=16)


def test_attribute_masks_inits():
    disjoint = AttributeMasks(4, 8, "disjoint")
    assert torch.equal(disjoint.weight[1], torch.tensor([0.1, 0.1, 1, 1, 0.1, 0.1, 0.1, 0.1]))
    fixed = AttributeMasks(4, 8, "fixed")
    assert not any(True for _ in fixed.parameters()) and fixed.weight.sum() == 8
    torch.manual_seed(0)
    normal = AttributeMasks(50, 200, "normal")
    assert abs(normal.weight.mean().item() - 0.9) < 0.05 and abs(normal.weight.std().item() - 0.7) < 0.05
    rows = normal(torch.tensor([[3, 7]]))
    assert rows.shape == (1, 2, 200) and bool((rows >= 0).all())  # learned masks pass ReLU
    with pytest.raises(ValueError, match="mask init"):
        AttributeMasks(2, 4, "uniform")
