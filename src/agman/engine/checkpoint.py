"""Checkpoints: everything eval/index/serve need, written atomically, loaded without unpickling code.

A checkpoint is a ``torch.save``d dict of plain types and tensors only, so it loads with
``torch.load(weights_only=True)``: opening a checkpoint from elsewhere cannot run code.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agman.data.spec import Attribute
from agman.errors import AgmanError, NotFoundError
from agman.fileio import atomic_write

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_name", "model_config", "attributes", "input_size", "state_dict")


class CheckpointError(AgmanError, ValueError):
    """A checkpoint file is missing, unreadable or lacks what agman needs; the message names the file."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def weights_identity(state_dict: dict[str, torch.Tensor]) -> str:
    """A short hash of the weights: two checkpoints with equal identity embed images identically."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        if not isinstance(t, torch.Tensor):
            continue
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class CheckpointInfo:
    """What a checkpoint says about its model, without the optimizer and RNG baggage."""

    path: Path
    model_name: str
    model_config: dict
    attributes: list[Attribute]
    input_size: int
    crop_ratio: float
    identity: str
    epoch: int = 0
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    @property
    def attribute_names(self) -> list[str]:
        return [a.name for a in self.attributes]


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    model_name: str,
    attributes: list[Attribute],
    input_size: int,
    crop_ratio: float = 224 / 256,
    epoch: int = 0,
    metrics: dict | None = None,
    config: dict | None = None,
    **training_state: Any,
) -> Path:
    """Write a checkpoint atomically.  ``training_state`` holds resumable extras (optimizer,
    scheduler, loss_state, rng, best_score, ...) and must be plain types/tensors."""
    plain = unwrap(model)
    state_dict = {k: v.detach().cpu() for k, v in plain.state_dict().items()}
    payload = {
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "model_config": dict(getattr(plain, "config", {})),
        "attributes": [{"name": a.name, "values": list(a.values)} for a in attributes],
        "input_size": int(input_size),
        "crop_ratio": float(crop_ratio),
        "state_dict": state_dict,
        "identity": weights_identity(state_dict),
        "epoch": int(epoch),
        "metrics": metrics or {},
        "config": config or {},
        **training_state,
    }
    return atomic_torch_save(payload, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a checkpoint dict (``weights_only``: no code runs while loading)."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file must name itself
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not an agman checkpoint (expected a dict, got {type(ckpt).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not an agman checkpoint: missing {', '.join(missing)}")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {ckpt['format_version']}; this agman reads up to {FORMAT_VERSION}: upgrade agman"
        )
    return ckpt


def info_from(ckpt: dict, path: str | Path) -> CheckpointInfo:
    return CheckpointInfo(
        path=Path(path),
        model_name=ckpt["model_name"],
        model_config=dict(ckpt["model_config"]),
        attributes=[Attribute(a["name"], tuple(a["values"])) for a in ckpt["attributes"]],
        input_size=int(ckpt["input_size"]),
        crop_ratio=float(ckpt.get("crop_ratio", 224 / 256)),
        identity=ckpt.get("identity") or weights_identity(ckpt["state_dict"]),
        epoch=int(ckpt.get("epoch", 0)),
        metrics=dict(ckpt.get("metrics", {})),
        config=dict(ckpt.get("config", {})),
    )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, CheckpointInfo]:
    """Rebuild the model a checkpoint describes, load its weights, put it in eval mode on ``device``."""
    from agman.models.registry import build_model

    ckpt = load_checkpoint(path)
    info = info_from(ckpt, path)
    config = dict(info.model_config)
    config["pretrained"] = "none"  # the checkpoint carries the weights
    model = build_model(info.model_name, len(info.attributes), **config)
    result = model.load_state_dict(ckpt["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: weights do not match model {info.model_name!r} "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    return model.to(device).eval(), info
