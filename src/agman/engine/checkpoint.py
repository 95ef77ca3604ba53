"""Checkpoints: everything eval/index/serve need, written atomically, loaded without unpickling code,
verified against the hash of their weights.

A checkpoint is a ``torch.save``d dict of plain types and tensors only, so it loads with
``torch.load(weights_only=True)``: opening a checkpoint from elsewhere cannot run code.  It records
``identity``, a hash of its weights (:func:`weights_identity`); :func:`load_checkpoint` recomputes it
and refuses a file whose tensors no longer match (changed or damaged after saving), so an index or
a ranking can trust the identity it compares.  Any file that is not an agman checkpoint (another
pickle, a bare state dict, text, a truncated file) is a :class:`CheckpointError` saying what it is.
"""
from __future__ import annotations

import hashlib
import pickle
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agman.data.spec import Attribute
from agman.errors import AgmanError, NotFoundError
from agman.fileio import atomic_write

#: A run folder's newest checkpoint and its best one (on the validation score).
LAST, BEST = "last.pt", "best.pt"

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_name", "model_config", "attributes", "input_size", "state_dict", "identity")
"""Every checkpoint agman has written carries these; one without ``identity`` cannot prove its weights
are the ones saved (a damaged key name would otherwise let damaged weights load unchecked)."""


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
    """A short hash of the weights: two checkpoints with equal identity embed images identically.

    SHA-256 over each tensor's name, dtype, shape and bytes, in name order (the bytes are hashed in
    place, not copied); the first 16 hex digits.  About 0.1 s for a ResNet-50 model (bench/checkpoint_load.py).
    """
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        if not isinstance(t, torch.Tensor):
            continue
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
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
    lineage: dict = field(default_factory=dict)  # an extended model's parent and attribute identities (engine/extend.py)

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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", verify: bool = True) -> dict:
    """Load and validate a checkpoint dict (``weights_only``: no code runs while loading).

    With ``verify`` (the default) the weights are hashed again and must equal the recorded
    ``identity``; ``ckpt["identity"]`` is then always the identity of the weights in hand.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file must name itself
        raise CheckpointError(f"{path} {_load_failure(path, exc)}") from None
    _validate(ckpt, path)
    if verify:
        verify_identity(ckpt, path)
    return ckpt


def verify_identity(ckpt: dict, path: str | Path) -> str:
    """Hash ``ckpt``'s weights; refuse them if they differ from the recorded ``identity`` (naming the
    file), else record and return it.  Safe to run in a thread: hashlib releases the GIL."""
    computed = weights_identity(ckpt["state_dict"])
    recorded = ckpt.get("identity")
    if recorded and recorded != computed:
        raise CheckpointError(
            f"{path}: its weights do not match the identity recorded when it was saved (recorded {recorded}, "
            f"the weights hash to {computed}): the file was changed or damaged after saving; refusing to use it"
        )
    ckpt["identity"] = computed
    return computed


_NOT_AGMAN = "is not an agman checkpoint (agman checkpoints are written by `agman train`)"


def _load_failure(path: Path, exc: Exception) -> str:
    """What ``torch.load`` failing on ``path`` means, in words (never torch's advice to unpickle code)."""
    text = str(exc)
    if isinstance(exc, EOFError):
        return "is empty" if path.stat().st_size == 0 else "is truncated (it ends before the data does)"
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if isinstance(exc, pickle.UnpicklingError) and found:
        return (f"{_NOT_AGMAN}: it holds Python objects (it needs {found.group(1)}) that only unpickling code "
                "could load, and agman loads only tensors and plain values")
    with path.open("rb") as f:
        head = f.read(2)
    if isinstance(exc, pickle.UnpicklingError) and head[:1] == b"\x80" and head[1:2] in (b"\x03", b"\x04", b"\x05"):
        return f"{_NOT_AGMAN}: it is a Python pickle that torch.save did not write"
    if isinstance(exc, RuntimeError) and ("central directory" in text or "PytorchStreamReader" in text):
        return "is truncated or damaged (its zip archive is incomplete)"
    if isinstance(exc, RuntimeError) and "inline_container" in text:
        return f"{_NOT_AGMAN}: it is a zip archive, but not one torch.save wrote"
    if isinstance(exc, (pickle.UnpicklingError, KeyError, ValueError, UnicodeDecodeError, IndexError)):
        return f"{_NOT_AGMAN}: it is not a file torch.save wrote (text, an image, another format?)"
    first = text.strip().splitlines()[0][:200] if text.strip() else ""
    return f"cannot be read as a checkpoint ({type(exc).__name__}{': ' + first if first else ''})"


def _validate(ckpt, path: Path) -> None:
    """Every key agman reads, with the type it reads it as."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} {_NOT_AGMAN}: it holds a {type(ckpt).__name__}, not a checkpoint dict")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(
            f"{path} {_NOT_AGMAN}: it is a bare state dict ({len(ckpt)} tensor{'s' * (len(ckpt) != 1)}) without the "
            "model name, attributes and input size agman needs; backbone weights are used with model.pretrained=<file>"
        )
    if missing == ["identity"]:
        raise CheckpointError(f"{path} is a damaged agman checkpoint: no weight identity recorded (every checkpoint "
                              "agman writes has one), so its weights cannot be checked; refusing to use it")
    if missing:
        raise CheckpointError(f"{path} {_NOT_AGMAN}: missing {', '.join(missing)}")
    version = ckpt["format_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version}; this agman reads up to {FORMAT_VERSION}: upgrade agman"
        )
    attributes = ckpt["attributes"]
    problems = [
        "model_name is not a string" * (not isinstance(ckpt["model_name"], str)),
        "model_config is not a dict" * (not isinstance(ckpt["model_config"], dict)),
        "input_size is not a positive integer"
        * (not (isinstance(ckpt["input_size"], int) and not isinstance(ckpt["input_size"], bool)
                and ckpt["input_size"] > 0)),
        "attributes is not a list of {name, values}"
        * (not (isinstance(attributes, list) and all(
            isinstance(a, dict) and isinstance(a.get("name"), str) and isinstance(a.get("values"), (list, tuple))
            for a in attributes))),
        "state_dict is not a dict of tensors"
        * (not (isinstance(ckpt["state_dict"], dict) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["state_dict"].items()))),
        "identity is not a string" * (not isinstance(ckpt.get("identity", ""), str)),
        "crop_ratio is not a number" * (not isinstance(ckpt.get("crop_ratio", 1.0), (int, float))),
        "epoch is not an integer" * (not isinstance(ckpt.get("epoch", 0), int)),
        "metrics or config is not a dict" * (not all(isinstance(ckpt.get(k, {}), dict) for k in ("metrics", "config"))),
        "extension is not a list of {design, rows, adapters}" * (not (isinstance(ckpt.get("extension", []), list) and all(
            isinstance(e, dict) and isinstance(e.get("design"), str) and isinstance(e.get("rows"), list)
            and isinstance(e.get("adapters"), list) for e in ckpt.get("extension", [])))),
        "lineage is not a dict" * (not isinstance(ckpt.get("lineage", {}), dict)),
    ]
    problems = [p for p in problems if p]
    if problems:
        raise CheckpointError(f"{path} is a damaged agman checkpoint: {'; '.join(problems)}")


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
        lineage=dict(ckpt.get("lineage") or {}),
    )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, CheckpointInfo]:
    """Rebuild the model a checkpoint describes, load its (verified) weights, put it in eval mode on
    ``device`` (``auto``, ``cpu``, ``cuda[:N]``, ``mps``: a device this machine lacks is refused first)."""
    from agman.engine.distributed import pick_device
    from agman.models.registry import build_model

    device = pick_device(device)
    ckpt = load_checkpoint(path, verify=False)
    with ThreadPoolExecutor(max_workers=1) as pool:
        identity = pool.submit(verify_identity, ckpt, path)  # hashes while the model is built
        info = info_from(ckpt, path)
        config = dict(info.model_config)
        config["pretrained"] = "none"  # the checkpoint carries the weights
        layout = ckpt.get("extension") or []
        model = build_model(info.model_name, len(info.attributes) - len(layout), **config)
        if layout:  # a model extended by `agman train --extend`: the parent plus one branch per added attribute
            from agman.models.extension import ExtendedModel

            model = ExtendedModel.from_layout(model, layout)
        result = model.load_state_dict(ckpt["state_dict"], strict=False)
        info.identity = identity.result()
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: weights do not match model {info.model_name!r} "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    return model.to(device).eval(), info
