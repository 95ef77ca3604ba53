"""Multi-level ResNet backbone and the hierarchical fusion of §2.2 (Fig. 1), plus pretrained-weight loading."""
from __future__ import annotations

import logging
import os
import urllib.error
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from agman.errors import AgmanError, InvalidValueError

log = logging.getLogger(__name__)

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
IMAGENET_VITS = ("vit_b_16",)  # the ViT with torchvision ImageNet weights (models/cca.py)
OFFLINE_ENV = "AGMAN_OFFLINE"


class PretrainedWeightsError(AgmanError, RuntimeError):
    """Pretrained weights could not be found or loaded; the message says where they were expected."""


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: the source, the key prefix it stripped, and the key mismatches."""

    source: str
    prefix: str = ""
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def _out_channels(layer: nn.Sequential) -> int:
    """Output width of a ResNet stage, read from its last block (BasicBlock: bn2, Bottleneck: bn3)."""
    block = layer[-1]
    last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
    return last_bn.num_features


class ResNetTrunk(nn.Module):
    """A torchvision ResNet's stem and stages exposing F2, F3 (and layer4), Fig. 1 blocks #1–#4.

    Parameter names equal torchvision's (``conv1``, ``layer3.0.conv1`` ...) so ImageNet state
    dicts load as they are.  ``layer4`` exists only when ``with_layer4``; the ImageNet classifier
    (``fc``) is dropped.  Nothing depends on the input size: the grids follow the image.
    """

    def __init__(self, arch: str = "resnet50", with_layer4: bool = True):
        super().__init__()
        if arch not in BACKBONES:
            raise InvalidValueError(f"unknown backbone {arch!r}; choose one of {', '.join(BACKBONES)}")
        net = getattr(torchvision.models, arch)(weights=None)
        self.arch = arch
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.layer4 = net.layer4 if with_layer4 else None
        self.channels = {
            "layer2": _out_channels(net.layer2),
            "layer3": _out_channels(net.layer3),
            "layer4": _out_channels(net.layer4),
        }

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images [B,3,H,W] -> (F2 [B,c2,H/8,W/8], F3 [B,c3,H/16,W/16])``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        f2 = self.layer2(self.layer1(x))
        return f2, self.layer3(f2)

    def top(self, features: Tensor) -> Tensor:
        """Run ResNet's layer4 (block #4) on a layer3-shaped feature map."""
        if self.layer4 is None:
            raise RuntimeError("this trunk was built without layer4")
        return self.layer4(features)


FUSION_INITS = ("default", "released")


class HierarchicalFusion(nn.Module):
    """§2.2: F23 = F3 + Conv1x1(MaxPool3x3/2(F2)), F2 brought to F3's grid and width (released code's layers).

    ``init``: ``'default'`` keeps PyTorch's Conv2d init; ``'released'`` draws the 1x1 conv's weight
    N(0, sqrt(2 / (k*k*out_channels))) like every conv of the released ``resnet.py`` (its ``conv1_1``
    is a ResNet member, so the ResNet's init loop draws it, and the ImageNet weights, which have no
    such key, leave it so).  The bias keeps PyTorch's default either way.
    """

    def __init__(self, in_channels: int, out_channels: int, init: str = "default"):
        super().__init__()
        if init not in FUSION_INITS:
            raise InvalidValueError(f"fusion init must be one of {', '.join(FUSION_INITS)}, got {init!r}")
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=True)
        if init == "released":
            nn.init.kaiming_normal_(self.proj.weight, mode="fan_out", nonlinearity="relu")  # std sqrt(2 / n)

    def forward(self, f2: Tensor, f3: Tensor) -> Tensor:
        f2 = self.pool(f2)
        if f2.shape[-2:] != f3.shape[-2:]:  # same arithmetic as layer3's stride; guard anyway
            f2 = F.adaptive_max_pool2d(f2, f3.shape[-2:])
        return f3 + self.proj(f2)


# ---------------------------------------------------------------------------------------------
# Pretrained weights


def _imagenet_url(arch: str) -> str:
    """The torchvision IMAGENET1K_V1 checkpoint URL (the weights the papers used)."""
    return torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url


def imagenet_cache_path(arch: str) -> Path:
    """Where torch.hub caches (and looks for) the ImageNet checkpoint of ``arch``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_imagenet_url(arch))


def _download_state_dict(url: str) -> dict:
    """Fetch a checkpoint through torch.hub's cache (a seam the tests replace)."""
    return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, check_hash=True)


def _offline_message(arch: str, reason: str) -> str:
    return (
        f"ImageNet weights for {arch} are not available ({reason}). Expected the cached file "
        f"{imagenet_cache_path(arch)} (torch.hub cache; set TORCH_HOME to move it). Copy the file "
        f"there, or pass a local file: pretrained=/path/to/{arch}.pth (or .safetensors), "
        f"or pretrained=none to start from random weights."
    )


def _imagenet_state_dict(arch: str) -> dict:
    cached = imagenet_cache_path(arch)
    if cached.is_file():
        return read_state_dict(cached)
    if os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes"):
        raise PretrainedWeightsError(_offline_message(arch, f"{OFFLINE_ENV} is set and no cached copy"))
    try:
        return _download_state_dict(_imagenet_url(arch))
    except (urllib.error.URLError, OSError, ConnectionError) as exc:
        raise PretrainedWeightsError(_offline_message(arch, f"download failed: {exc}")) from exc


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read tensors from a ``.safetensors`` file or a ``torch.save``d file (a bare state dict, or
    a checkpoint dict holding one under ``state_dict``/``model``)."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"pretrained weight file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: say which
        raise PretrainedWeightsError(f"cannot read weights from {path}: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise PretrainedWeightsError(f"{path} holds no state dict of tensors")
    return obj


def _common_prefix(source_keys, target_keys: set[str]) -> str:
    """The key prefix (e.g. ``module.`` or ``embeddingnet.backbonenet.``) that maps most file keys
    onto the module's own keys; '' when they already match."""
    votes: Counter[str] = Counter()
    for key in source_keys:
        cut = -1
        while True:
            if key[cut + 1:] in target_keys:
                votes[key[: cut + 1]] += 1
                break
            cut = key.find(".", cut + 1)
            if cut < 0:
                break
    if not votes:
        return ""
    return min(votes, key=lambda p: (-votes[p], len(p)))


def load_pretrained(module: nn.Module, spec: str | os.PathLike | None, arch: str | None = None) -> LoadReport | None:
    """Load weights into ``module`` (usually a :class:`ResNetTrunk`).

    ``spec``: ``'none'``/``None`` (nothing), ``'imagenet'`` (torchvision IMAGENET1K_V1 through the
    torch.hub cache; downloads only when not cached and ``AGMAN_OFFLINE`` is unset), or a path to a
    ``.pth``/``.pt``/``.safetensors`` file.  Keys are matched after stripping the prefix that fits
    best; missing and unexpected keys are logged and returned.  Raises
    :class:`PretrainedWeightsError` when the weights cannot be had or do not fit.
    """
    if spec is None or str(spec).lower() == "none":
        return None
    if str(spec).lower() == "imagenet":
        arch = arch or getattr(module, "arch", None)
        if arch not in (*BACKBONES, *IMAGENET_VITS):
            raise PretrainedWeightsError(f"cannot pick ImageNet weights: unknown architecture {arch!r}")
        state, source = _imagenet_state_dict(arch), f"imagenet ({arch})"
    else:
        state, source = read_state_dict(spec), str(spec)

    own = module.state_dict()
    prefix = _common_prefix(state.keys(), set(own))
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    mismatched = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        details = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:5])
        raise PretrainedWeightsError(f"weights in {source} do not fit the model: {details}")
    result = module.load_state_dict(state, strict=False)
    report = LoadReport(source, prefix, list(result.missing_keys), list(result.unexpected_keys))
    if report.missing:
        log.warning("pretrained %s: %d missing keys (left at init): %s", source, len(report.missing),
                    ", ".join(report.missing[:10]))
    if report.unexpected:
        log.info("pretrained %s: %d unexpected keys ignored: %s", source, len(report.unexpected),
                 ", ".join(report.unexpected[:10]))
    if len(report.missing) == len(own):
        raise PretrainedWeightsError(f"no key of {source} matches the model (prefix tried: {prefix!r})")
    return report
