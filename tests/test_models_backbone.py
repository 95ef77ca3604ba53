"""ResNet trunk levels, hierarchical fusion (§2.2) and pretrained-weight loading (never downloads)."""
from __future__ import annotations

import urllib.error

import pytest
import torch
from safetensors.torch import save_file

from agman.models import backbone as bb
from agman.models import build_model
from agman.models.backbone import (
    HierarchicalFusion,
    PretrainedWeightsError,
    ResNetTrunk,
    imagenet_cache_path,
    load_pretrained,
)


@pytest.mark.parametrize(
    "arch, widths",
    [("resnet18", (128, 256, 512)), ("resnet34", (128, 256, 512)), ("resnet50", (512, 1024, 2048)),
     ("resnet101", (512, 1024, 2048))],
)
def test_channels_come_from_the_backbone(arch, widths):
    with torch.device("meta"):
        trunk = ResNetTrunk(arch)
    assert tuple(trunk.channels[k] for k in ("layer2", "layer3", "layer4")) == widths


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="resnet152"):
        ResNetTrunk("resnet152")


@pytest.mark.parametrize("size", [64, 96, 100, 112, 130])
def test_levels_and_fusion_follow_any_input_size(size):
    trunk = ResNetTrunk("resnet18").eval()
    fusion = HierarchicalFusion(trunk.channels["layer2"], trunk.channels["layer3"])
    with torch.no_grad():
        f2, f3 = trunk(torch.randn(1, 3, size, size))
        f23 = fusion(f2, f3)
        f4 = trunk.top(f3)
    assert f2.shape[1:] == (128, -(-size // 8), -(-size // 8))
    assert f23.shape == f3.shape and f3.shape[1] == 256
    assert f4.shape[1] == 512


def test_fusion_adds_projected_f2_to_f3():
    fusion = HierarchicalFusion(4, 6)
    f2, f3 = torch.randn(1, 4, 8, 8), torch.randn(1, 6, 4, 4)
    expected = f3 + fusion.proj(torch.nn.functional.max_pool2d(f2, 3, 2, 1))
    assert torch.allclose(fusion(f2, f3), expected)


@pytest.mark.parametrize("name, options", [("agman-official", {}), ("agman", {"fusion_init": "released"})])
def test_fusion_conv_can_start_as_the_released_resnet_inits_its_convs(name, options):
    # resnet.py: every Conv2d the ResNet owns, conv1_1 included, gets N(0, sqrt(2 / (k*k*out))); the
    # ImageNet file has no conv1_1, so it stays so; its bias keeps PyTorch's U(+-1/sqrt(fan_in))
    torch.manual_seed(0)
    proj = build_model(name, 8, backbone="resnet50", **options).fusion.proj
    w, b = proj.weight.detach().flatten(), proj.bias.detach()
    assert proj.weight.shape == (1024, 512, 1, 1)
    assert float(w.std()) == pytest.approx((2 / 1024) ** 0.5, rel=0.01)
    assert abs(float(w.mean())) < 1e-3
    kurtosis = float((((w - w.mean()) / w.std()) ** 4).mean())
    assert kurtosis == pytest.approx(3.0, abs=0.05)  # normal, not uniform (1.8)
    bound = 1 / 512 ** 0.5
    assert float(b.abs().max()) <= bound and float(b.abs().max()) > 0.9 * bound


def test_paper_preset_keeps_pytorchs_default_fusion_init():
    torch.manual_seed(0)
    w = build_model("agman", 8, backbone="resnet50").fusion.proj.weight.detach().flatten()
    bound = 1 / 512 ** 0.5  # kaiming_uniform(a=sqrt(5)) on fan_in 512
    assert float(w.abs().max()) <= bound and float(w.std()) == pytest.approx(bound / 3 ** 0.5, rel=0.01)
    with pytest.raises(ValueError, match="fusion init must be one of default, released"):
        HierarchicalFusion(4, 6, init="he")


def test_trunk_without_layer4_refuses_top():
    trunk = ResNetTrunk("resnet18", with_layer4=False)
    assert not any(k.startswith("layer4") for k in trunk.state_dict())
    with pytest.raises(RuntimeError, match="layer4"):
        trunk.top(torch.randn(1, 256, 2, 2))


def _randomised_trunk(seed=0):
    torch.manual_seed(seed)
    trunk = ResNetTrunk("resnet18")
    with torch.no_grad():
        for t in trunk.state_dict().values():
            if t.is_floating_point():
                t.normal_()
    return trunk


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weight_file_round_trips(tmp_path, suffix):
    source = _randomised_trunk()
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    target = ResNetTrunk("resnet18")
    report = load_pretrained(target, path)
    assert report.missing == [] and report.unexpected == [] and report.prefix == ""
    _assert_same_weights(source, target)


def test_checkpoint_prefix_is_stripped_and_extras_reported(tmp_path):
    source = _randomised_trunk(1)
    state = {"module.trunk." + k: v for k, v in source.state_dict().items()}
    state["module.trunk.fc.weight"] = torch.zeros(3, 3)
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": state}, path)
    target = ResNetTrunk("resnet18")
    report = load_pretrained(target, path)
    assert report.prefix == "module.trunk."
    assert report.unexpected == ["fc.weight"] and report.missing == []
    _assert_same_weights(source, target)


def test_missing_keys_are_reported(tmp_path):
    source = ResNetTrunk("resnet18", with_layer4=False)
    path = tmp_path / "no_layer4.pth"
    torch.save(source.state_dict(), path)
    report = load_pretrained(ResNetTrunk("resnet18"), path)
    assert report.missing and all(k.startswith("layer4.") for k in report.missing)


def test_wrong_shapes_and_missing_files_are_clear_errors(tmp_path):
    path = tmp_path / "r50.pth"
    with torch.device("meta"):
        r50 = ResNetTrunk("resnet50")
    layer = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in r50.state_dict().items() if k.startswith("layer1.0.")}
    torch.save(layer, path)
    with pytest.raises(PretrainedWeightsError, match="do not fit"):
        load_pretrained(ResNetTrunk("resnet18"), path)
    with pytest.raises(PretrainedWeightsError, match="not found"):
        load_pretrained(ResNetTrunk("resnet18"), tmp_path / "absent.pth")


def test_none_loads_nothing():
    assert load_pretrained(ResNetTrunk("resnet18"), "none") is None
    assert build_model("csn", 2, backbone="resnet18").pretrained_report is None


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def test_offline_imagenet_error_names_cache_path_and_file_option(empty_torch_home, monkeypatch):
    monkeypatch.setenv("AGMAN_OFFLINE", "1")

    def no_network(url):  # pragma: no cover - reaching it is the failure
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(bb, "_download_state_dict", no_network)
    with pytest.raises(PretrainedWeightsError) as err:
        build_model("csn", 3, backbone="resnet18", pretrained="imagenet")
    message = str(err.value)
    expected = empty_torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_cache_path("resnet18") == expected
    assert str(expected) in message and "pretrained=/path/to/" in message and "AGMAN_OFFLINE" in message


def test_failed_download_becomes_the_same_clear_error(empty_torch_home, monkeypatch):
    monkeypatch.delenv("AGMAN_OFFLINE", raising=False)
    calls = []

    def unreachable(url):
        calls.append(url)
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(bb, "_download_state_dict", unreachable)
    with pytest.raises(PretrainedWeightsError, match="download failed") as err:
        load_pretrained(ResNetTrunk("resnet18"), "imagenet")
    assert calls == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]
    assert str(imagenet_cache_path("resnet18")) in str(err.value)


def test_cached_imagenet_file_is_used_offline(empty_torch_home, monkeypatch):
    monkeypatch.setenv("AGMAN_OFFLINE", "1")
    source = _randomised_trunk(2)
    cached = imagenet_cache_path("resnet18")
    cached.parent.mkdir(parents=True)
    torch.save({**source.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, cached)
    model = build_model("csn", 3, backbone="resnet18", feature_level="layer4", pretrained="imagenet")
    assert sorted(model.pretrained_report.unexpected) == ["fc.bias", "fc.weight"]
    _assert_same_weights(source, model.trunk)
