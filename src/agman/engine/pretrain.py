"""Backbone warm-up where ImageNet weights cannot be had: supervised attribute-value classification.

The paper fine-tunes an ImageNet-pretrained ResNet (§2.2, §3.1).  Offline, agman can instead
pre-train the same torchvision ResNet on the *train split* of the dataset itself — one softmax head
per attribute over its values — and hand the trunk to any model as ``pretrained=<file>``, the same
path a local ImageNet ``.pth`` takes.  Only train labels are used; valid/test are never seen.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from agman.data.cache import image_dataset
from agman.data.spec import UNLABELED, DatasetError, DatasetSpec
from agman.engine.checkpoint import atomic_torch_save
from agman.models.backbone import ResNetTrunk
from agman.models.cca import VIT_BACKBONES, ViTTrunk
from agman.models.small_maps import matmul_on_small_maps

log = logging.getLogger(__name__)


class ValueClassifier(nn.Module):
    """A ResNet trunk (torchvision names) + one linear head per attribute over its values.

    As a retriever (a baseline): :meth:`embed_all` gives each image, per attribute, its value
    probabilities, zero-padded to the largest value count; the dot product of two images' vectors
    is the probability that they carry the same value if the two predictions are independent.
    """

    def __init__(self, backbone: str, value_counts: list[int]):
        super().__init__()
        vit = backbone in VIT_BACKBONES  # cca's ViT: the class token's feature
        self.trunk = ViTTrunk(backbone) if vit else ResNetTrunk(backbone, with_layer4=True)
        self.value_counts = list(value_counts)
        self.heads = nn.Linear(self.trunk.hidden_dim if vit else self.trunk.channels["layer4"], sum(value_counts))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C]``: the trunk's pooled feature (ResNet: layer4 averaged; ViT: its class token)."""
        if isinstance(self.trunk, ViTTrunk):
            return self.trunk.pooled(images)
        _, f3 = self.trunk(images)
        return self.trunk.top(f3).mean(dim=(-2, -1))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        logits = self.heads(self.features(images))
        return list(logits.split(self.value_counts, dim=1))

    @property
    def n_attributes(self) -> int:
        return len(self.value_counts)

    @property
    def embedding_dim(self) -> int:
        return max(self.value_counts)

    def embed_all(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, A, max values]``: every attribute's value probabilities (softmax), zero-padded."""
        probabilities = [F.pad(lg.float().softmax(dim=1), (0, self.embedding_dim - lg.shape[1])) for lg in self(images)]
        return torch.stack(probabilities, dim=1)


def heads_path(out_path: Path) -> Path:
    """Where the warm-up keeps its value heads beside the trunk file (the classifier is both)."""
    return out_path.with_name(out_path.stem + ".heads.pth")


def load_value_classifier(trunk_path: str | Path, backbone: str, value_counts: list[int]) -> ValueClassifier | None:
    """The warm-up's whole value classifier (trunk file + :func:`heads_path`), or None when the
    heads were not kept (a trunk written by an older agman)."""
    trunk_path = Path(trunk_path)
    if not heads_path(trunk_path).is_file():
        return None
    net = ValueClassifier(backbone, value_counts)
    net.trunk.load_state_dict(torch.load(trunk_path, map_location="cpu", weights_only=True))
    heads = torch.load(heads_path(trunk_path), map_location="cpu", weights_only=True)
    if list(heads["value_counts"]) != list(value_counts):
        raise DatasetError(f"{heads_path(trunk_path)} classifies {heads['value_counts']} values per attribute; "
                           f"the dataset has {list(value_counts)}")
    net.heads.load_state_dict(heads["state_dict"])
    return net.eval()


def value_classification_loss(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Mean over attributes of the cross-entropy over values; unlabelled entries are ignored."""
    losses = [
        F.cross_entropy(lg, labels[:, a], ignore_index=UNLABELED)
        for a, lg in enumerate(logits)
        if bool((labels[:, a] != UNLABELED).any())
    ]
    return torch.stack(losses).mean()


class _LabelledImages(Dataset):
    def __init__(self, images: Dataset, labels: np.ndarray):
        self.images, self.labels = images, torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index][0], self.labels[index]


@dataclass
class PretrainResult:
    path: Path
    epochs: int  # epochs run by this call (0: an existing trunk file was reused)
    final_loss: float
    seconds: float
    interrupted: bool = False


def partial_path(out_path: Path) -> Path:
    """Where the warm-up keeps its state between epochs (removed when the trunk is written)."""
    return out_path.with_name(out_path.name + ".partial")


def pretrain_backbone(
    spec: DatasetSpec,
    out_path: str | Path,
    *,
    backbone: str = "resnet18",
    input_size: int = 64,
    crop_ratio: float = 1.0,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    workers: int = 0,
    device: str | torch.device = "cpu",
    amp: bool = False,
    channels_last: bool = False,
    small_map_matmul: bool = False,
    progress: bool = True,
    stop: Callable[[int], bool] | None = None,
) -> PretrainResult:
    """Train a value classifier on ``spec``'s train split and save its trunk to ``out_path``
    (atomically; torchvision key names, loadable with ``pretrained=out_path``).

    An existing ``out_path`` is reused.  After every epoch the classifier, optimizer and RNG states
    go (atomically) to :func:`partial_path`; a later call continues from there and ends with the
    same trunk as an uninterrupted run.  ``stop(epoch)`` returning True after an epoch ends the call
    early (``interrupted``; tests use it).  ``amp``: bf16 autocast; ``channels_last``: NHWC layout;
    ``small_map_matmul``: convolutions on small maps as matrix products (:mod:`agman.models.small_maps`).
    """
    out_path, device = Path(out_path), torch.device(device)
    if out_path.is_file():
        log.info("backbone warm-up: reusing %s", out_path)
        return PretrainResult(out_path, 0, float("nan"), 0.0)
    train = spec.split("train")
    if not (train.labels != UNLABELED).any():
        raise DatasetError(f"dataset {spec.name!r} has no value labels in its train split: nothing to pre-train on")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images = image_dataset(train.paths, spec.root, input_size=input_size, crop_ratio=crop_ratio, train=True)
    loader = DataLoader(
        _LabelledImages(images, train.labels), batch_size=batch_size, shuffle=True, drop_last=True,
        num_workers=workers, generator=generator, persistent_workers=workers > 0,
    )
    net = ValueClassifier(backbone, spec.value_counts)
    if small_map_matmul:
        matmul_on_small_maps(net)
    net.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    first, partial = 0, partial_path(out_path)
    if partial.is_file():
        state = torch.load(partial, map_location="cpu", weights_only=True)
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        first = int(state["epoch"])
        log.info("backbone warm-up: continuing %s after epoch %d", partial, first)
    start, loss_value = time.perf_counter(), float("nan")
    net.train()
    for epoch in range(first, epochs):
        total, steps = 0.0, 0
        bar = tqdm(loader, desc=f"warm-up {epoch + 1}/{epochs}", unit="batch", disable=not progress, leave=False)
        for x, y in bar:
            x = x.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16) if amp else nullcontext():
                logits = net(x)
            loss = value_classification_loss([lg.float() for lg in logits], y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
            bar.set_postfix(loss=f"{total / steps:.3f}")
        loss_value = total / max(steps, 1)
        log.info("backbone warm-up epoch %d/%d: value cross-entropy %.4f", epoch + 1, epochs, loss_value)
        atomic_torch_save({"net": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                           "generator": generator.get_state(), "torch_rng": torch.get_rng_state()}, partial)
        if stop is not None and epoch + 1 < epochs and stop(epoch + 1):
            return PretrainResult(out_path, epoch + 1 - first, loss_value, time.perf_counter() - start, True)
    atomic_torch_save({"state_dict": {k: v.detach().cpu() for k, v in net.heads.state_dict().items()},
                       "value_counts": list(net.value_counts)}, heads_path(out_path))
    atomic_torch_save({k: v.detach().cpu() for k, v in net.trunk.state_dict().items()}, out_path)
    partial.unlink(missing_ok=True)
    return PretrainResult(out_path, epochs - first, loss_value, time.perf_counter() - start)
