"""The one interface of every model: shapes, unit norm, attention, embed_all equivalence, registry, config."""
from __future__ import annotations

import json

import pytest
import torch

from agman.models import MODEL_NAMES, ModelOutput, build_model, describe_models
from agman.models.agman import released_code_parameter_count

N_ATTRIBUTES = 5


@pytest.fixture(scope="module", params=MODEL_NAMES)
def model(request):
    torch.manual_seed(0)
    return build_model(request.param, N_ATTRIBUTES, backbone="resnet18").eval()


def test_registry_names():
    assert MODEL_NAMES == ("agman", "agman-official", "csn", "asenet-v2", "attnfashion", "asenpp", "cca")


@pytest.mark.parametrize("size", [64, 96, 112])
def test_output_shapes_norm_and_attention(model, size):
    ids = torch.tensor([0, 4, 2])
    with torch.no_grad():
        out = model(torch.randn(3, 3, size, size), ids)
    assert isinstance(out, ModelOutput)
    assert out.embedding.shape == (3, model.embedding_dim)
    assert torch.allclose(out.embedding.norm(dim=-1), torch.ones(3), atol=1e-5)
    grid = -(-size // 16)
    has_attention = model.name != "csn"
    assert (out.attention is not None) == has_attention
    if has_attention:
        assert out.attention.shape == (3, grid, grid)
        assert bool((out.attention >= 0).all())
        assert torch.allclose(out.attention.sum(dim=(-2, -1)), torch.ones(3), atol=1e-5)
    has_logits = model.name.startswith("agman")
    assert (out.attribute_logits is not None) == has_logits
    if has_logits:
        assert out.attribute_logits.shape == (3, N_ATTRIBUTES)
    has_masks = model.name in ("csn", "agman-official")
    assert (out.masks is not None) == has_masks == (out.general_embedding is not None)


def test_embed_all_equals_separate_calls(model):
    images = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        together = model.embed_all(images)
        chunked = model.embed_all(images, attribute_chunk=2)
        separate = torch.stack([model(images, torch.full((3,), a)).embedding for a in range(N_ATTRIBUTES)], dim=1)
    assert together.shape == (3, N_ATTRIBUTES, model.embedding_dim)
    assert torch.allclose(together, separate, atol=1e-5)
    assert torch.allclose(chunked, separate, atol=1e-5)
    assert not torch.allclose(together[:, 0], together[:, 1], atol=1e-3)  # attributes do differ


def test_embed_all_runs_the_backbone_once(model, monkeypatch):
    calls = []
    original = type(model.trunk).forward
    monkeypatch.setattr(type(model.trunk), "forward", lambda self, x: calls.append(len(x)) or original(self, x))
    with torch.no_grad():
        model.embed_all(torch.randn(2, 3, 64, 64))
    # ASEN++'s local branch re-encodes one crop per (image, attribute): its own trunk, after the global one
    assert calls == ([2, 2 * N_ATTRIBUTES] if model.name == "asenpp" else [2])


def test_attention_map_matches_forward(model):
    images, ids = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    with torch.no_grad():
        expected = model(images, ids).attention
    got = model.attention_map(images, ids)
    assert (got is None) == (expected is None)
    if got is not None:
        assert torch.allclose(got, expected, atol=1e-6)


def test_config_rebuilds_identical_architecture(model):
    config = json.loads(json.dumps(model.config))
    rebuilt = build_model(model.name, model.n_attributes, **config)
    assert type(rebuilt) is type(model) and rebuilt.config == model.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    rebuilt.load_state_dict(model.state_dict())


def test_bad_inputs_are_named(model):
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        model(torch.randn(1, 3, 64, 64), torch.tensor([5]))
    with pytest.raises(ValueError, match="attribute_ids"):
        model(torch.randn(2, 3, 64, 64), torch.tensor([1]))
    with pytest.raises(ValueError, match="images"):
        model(torch.randn(2, 64, 64), torch.tensor([1, 1]))


def test_unknown_name_and_option():
    with pytest.raises(ValueError, match="agman-official"):
        build_model("resnet", 3)
    with pytest.raises(ValueError, match="hierarchical"):
        build_model("csn", 3, backbone="resnet18", hierarchical=False)


def test_option_types_are_checked():
    with pytest.raises(ValueError, match="option asa must be bool"):
        build_model("agman", 3, backbone="resnet18", asa="no")
    with pytest.raises(ValueError, match="option embedding_dim must be int"):
        build_model("csn", 3, backbone="resnet18", embedding_dim=64.5)


def test_common_options_are_ignored_where_meaningless():
    model = build_model("csn", 3, backbone="resnet18", attention_dim=256, pretrained="none")
    assert "attention_dim" not in model.config


def test_describe_models():
    rows = {name: (count, text) for name, count, text in describe_models(8)}
    assert tuple(rows) == MODEL_NAMES
    assert rows["agman-official"][0] == released_code_parameter_count(8) == 26_420_909
    assert all(count > 1_000_000 and text for count, text in rows.values())
    small = dict((name, count) for name, count, _ in describe_models(4, backbone="resnet18"))
    assert all(small[name] < rows[name][0] for name in MODEL_NAMES)
