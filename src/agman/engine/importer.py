"""Checkpoints of the authors' released code read into agman checkpoints (`agman import`).

The released training scripts save ``torch.save({'epoch', 'state_dict': tnet.state_dict(), 'prec'
or 'best_prec1'}, 'checkpoint.pth.tar')`` where ``tnet`` is their ``Tripletnet`` around the embedding
network.  Each supported format below is data: the layer names the released files define (read in
the authors' repositories), where each lands in the agman model, which released tensors the
released forward pass never reads, and the preset whose config the imported checkpoint carries.

Every tensor of the file is either placed (shape checked) or named as one the released forward
pass does not use; anything else stops the import naming the leftovers.  ``module.`` prefixes
(``nn.DataParallel``) are removed wherever they appear.
"""
from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from agman.data.spec import Attribute
from agman.engine.released_formats import BACKBONES, FORMATS, ReleasedFormat
from agman.errors import AgmanError, NotFoundError, UsageError


class ImportFormatError(UsageError, ValueError):
    """The file is not a supported released checkpoint, or does not fit the dataset (exit 2)."""


class ImportReadError(AgmanError):
    """The file cannot be read at all: truncated, empty, or not written by ``torch.save`` (exit 1)."""


#: Keys of the dict the released scripts save besides the weights (read for the record).
RECORD_KEYS = ("epoch", "prec", "best_prec1", "mAP")
#: BatchNorm's step counter: absent from files of PyTorch < 0.4.1, harmless to leave at 0.
_COUNTER = "num_batches_tracked"


@dataclass
class ImportReport:
    """What an import did: the format, every tensor's fate, the model it built."""

    source: Path
    format: ReleasedFormat
    model_name: str
    model_config: dict
    attributes: list[Attribute]
    placed: dict[str, list[str]] = field(default_factory=dict)  # released name -> agman names
    unused: list[str] = field(default_factory=list)  # released names the released forward never reads
    stripped_prefix: bool = False
    epoch: int = 0
    record: dict = field(default_factory=dict)
    identity: str = ""
    out: Path | None = None


# --------------------------------------------------------------------------- reading
def _allowed_globals() -> list:
    """numpy scalars and dtypes: the released scripts store ``prec`` as a numpy float."""
    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    out: list = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    out += [getattr(np.dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType") if hasattr(np, "dtypes")]
    return out


def read_released(path: str | Path) -> dict:
    """The file's object (tensors, numbers and containers only: no code runs); a clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"released checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ImportReadError(f"{path} is empty")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_allowed_globals()):
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every way a file can fail to load becomes one sentence
        raise ImportReadError(f"{path} {_why_unreadable(path, exc)}") from None


def _why_unreadable(path: Path, exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, EOFError) or "central directory" in text or "PytorchStreamReader" in text:
        return "is truncated or damaged: it ends before the data torch.save wrote does"
    found = re.search(r"GLOBAL ([\w.]+)|Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        name = found.group(1) or found.group(2)
        return (f"holds Python objects ({name}) besides tensors; the released scripts save only tensors and "
                "numbers, and agman does not run code from a file")
    if zipfile.is_zipfile(path):
        return "is a zip archive, but not one torch.save wrote"
    if isinstance(exc, (pickle.UnpicklingError, UnicodeDecodeError, ValueError, KeyError, IndexError, RuntimeError)):
        return "is not a file torch.save wrote (text, an image, another format?)"
    return f"cannot be read ({type(exc).__name__}: {text.splitlines()[0][:200] if text else ''})"


def _tensors(obj, path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict inside the file (wrapped in ``state_dict`` or bare) and the record keys beside it."""
    weights = next((k for k in ("state_dict", "model") if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
    if weights is not None:  # ASEN++'s main.py saves the weights under 'model'
        state, record = obj[weights], {k: obj[k] for k in RECORD_KEYS if k in obj}
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, record = obj, {}
    else:
        raise ImportFormatError(f"{path} is not a released checkpoint: {_describe(obj)}; expected a dict with "
                                "'state_dict' or 'model' (as the released scripts save) or a bare state dict")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ImportFormatError(f"{path}: state_dict entries that are not tensors: {bad[:5]}")
    return dict(state), record


def _describe(obj) -> str:
    """What a loaded object holds: its top-level keys and a few tensor names."""
    if not isinstance(obj, dict):
        return f"it holds a {type(obj).__name__}"
    keys = ", ".join(repr(k) for k in list(obj)[:12]) + (", ..." if len(obj) > 12 else "")
    inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), obj)
    names = [k for k, v in inner.items() if isinstance(v, torch.Tensor)]
    tensors = f"; tensors such as {', '.join(names[:6])}" if names else "; no tensors"
    return f"top-level keys {keys}{tensors} ({len(names)} tensors)"


def strip_module(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """Remove ``module.`` path components (``nn.DataParallel``) wherever they appear."""
    out = OrderedDict((re.sub(r"(^|\.)module\.", r"\1", k), v) for k, v in state.items())
    if len(out) != len(state):
        raise ImportFormatError("removing the 'module.' prefixes makes two tensor names equal")
    return out, any(k.startswith("module.") or ".module." in k for k in state)


def detect_format(state: dict[str, torch.Tensor], path: Path, wanted: str | None = None,
                  whole: dict | None = None) -> ReleasedFormat:
    """The format whose signature the names carry (``wanted`` forces one and checks it); ``whole``: the
    file's object, described in the error."""
    described = _describe(whole if isinstance(whole, dict) else {"state_dict": state})
    def fits(f: ReleasedFormat) -> bool:
        return all(f.prefix + k in state for k in f.signature)

    if wanted is not None:
        if wanted not in FORMATS:
            raise ImportFormatError(f"unknown format {wanted!r}; choose one of {', '.join(FORMATS)}")
        if not fits(FORMATS[wanted]):
            missing = [FORMATS[wanted].prefix + k for k in FORMATS[wanted].signature
                       if FORMATS[wanted].prefix + k not in state]
            raise ImportFormatError(f"{path} is not in the {wanted} format: it lacks {', '.join(missing[:6])} "
                                    f"({described})")
        return FORMATS[wanted]
    found = [f for f in FORMATS.values() if fits(f)]
    if len(found) > 1:  # a richer signature wins (AG-MAN's names include ASEN's)
        found.sort(key=lambda f: -len(f.signature))
    if not found:
        raise ImportFormatError(
            f"{path} is not a checkpoint of a supported released network ({', '.join(FORMATS)}): {described}")
    return found[0]


# --------------------------------------------------------------------------- options from shapes
def _backbone(state: dict[str, torch.Tensor], prefix: str, path: Path) -> str:
    counts = []
    for stage in ("layer1", "layer2", "layer3"):
        blocks = {int(m.group(1)) for k in state for m in [re.match(rf"{re.escape(prefix)}{stage}\.(\d+)\.", k)] if m}
        counts.append(len(blocks))
    bottleneck = any(k.startswith(f"{prefix}layer1.0.conv3.") for k in state)
    name = BACKBONES.get((tuple(counts), bottleneck))
    if name is None:
        raise ImportFormatError(f"{path}: a ResNet with {counts} blocks in layer1..3 "
                                f"({'bottleneck' if bottleneck else 'basic'} blocks) is none of "
                                f"{', '.join(sorted(set(BACKBONES.values())))}")
    return name


def model_options(fmt: ReleasedFormat, state: dict[str, torch.Tensor], path: Path) -> tuple[dict, int]:
    """The agman model options that rebuild the released network, and its attribute count."""
    p = fmt.prefix
    backbone = _backbone(state, p + fmt.backbone_prefix, path)
    if fmt.name == "agman-released":
        width = state[p + "conv1.weight"].shape[0]
        opts = {"backbone": backbone, "attention_dim": int(width), "embedding_dim": int(width), "classification": True}
        return opts, state[p + "masks.weight"].shape[0]
    if fmt.name == "asen-v2":
        opts = {"backbone": backbone, "attention_dim": int(state[p + "conv1.weight"].shape[0])}
        if p + "feature_fc.weight" in state:  # later versions end with feature_fc = Linear(1024, dim_embed)
            opts.update(embedding_dim=int(state[p + "feature_fc.weight"].shape[0]), output_fc=True)
        return opts, state[p + "attr_embedding.weight"].shape[0]
    if fmt.name == "asenpp":
        return _asenpp_options(state, p, backbone, path)
    fc = p + ("embeddingnet.fc_embed.weight" if fmt.name == "csn" else "embed_fc.weight")
    opts = {"backbone": backbone, "feature_level": "layer3", "embedding_dim": int(state[fc].shape[0]),
            "mask_init": "normal"}
    return opts, state[p + "masks.weight"].shape[0]


def _asenpp_options(state: dict[str, torch.Tensor], p: str, backbone: str, path: Path) -> tuple[dict, int]:
    """ASEN++'s options from its shapes: widths, ACA's reduction, and whether the local branch is there."""
    g = p + "global.attnnet."
    c3 = int(state[g + "conv.weight"].shape[1])
    opts = {"backbone": backbone, "embedding_dim": int(state[g + "feature_fc.weight"].shape[0]),
            "attention_dim": int(state[g + "conv.weight"].shape[0]),
            "attribute_dim": int(state[p + "global.attrnet.attr_embedding.weight"].shape[1]),
            "channel_reduction": c3 // int(state[g + "fc1.weight"].shape[0]), "local": False}
    if p + "local.attnnet.conv.weight" in state:
        opts.update(local=True, local_backbone=_backbone(state, p + "local.basenet.", path),
                    local_attention_dim=int(state[p + "local.attnnet.conv.weight"].shape[0]))
    return opts, state[p + "global.attrnet.attr_embedding.weight"].shape[0]


# --------------------------------------------------------------------------- the name map
def map_state(fmt: ReleasedFormat, state: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
              path: Path) -> tuple[dict[str, torch.Tensor], dict[str, list[str]], list[str]]:
    """``(agman state dict, released -> agman names, unused released names)``; every released tensor
    placed or named unused, every agman tensor filled, shapes equal — else ImportFormatError."""
    out: dict[str, torch.Tensor] = {}
    placed: dict[str, list[str]] = {}
    unused, leftovers, mismatched = [], [], []
    for key, tensor in state.items():
        if not key.startswith(fmt.prefix):
            leftovers.append(key)
            continue
        name = key[len(fmt.prefix):]
        if any(name.startswith(u) for u in fmt.unused):
            unused.append(key)
            continue
        rule = next(((a, b) for a, b in fmt.rules if name == a or (a.endswith(".") and name.startswith(a))), None)
        if rule is None:
            leftovers.append(key)
            continue
        released, targets = rule
        names = [t + name[len(released):] if released.endswith(".") else t for t in targets]
        for agman_name in names:
            if agman_name not in target:
                leftovers.append(key)
                break
            if tuple(target[agman_name].shape) != tuple(tensor.shape):
                mismatched.append(f"{key} {list(tensor.shape)} -> {agman_name} {list(target[agman_name].shape)}")
                break
        else:
            placed[key] = names
            for agman_name in names:
                out[agman_name] = tensor.detach().clone().to(target[agman_name].dtype)
    if mismatched:
        raise ImportFormatError(f"{path}: tensor shapes do not fit the {fmt.model} model they map to: "
                                + "; ".join(mismatched[:6]) + (f" (and {len(mismatched) - 6} more)"
                                                               if len(mismatched) > 6 else ""))
    if leftovers:
        raise ImportFormatError(f"{path} ({fmt.name}): {len(leftovers)} tensor(s) the name map does not place: "
                                + ", ".join(leftovers[:8]) + (", ..." if len(leftovers) > 8 else "")
                                + "; nothing was written")
    empty = [k for k in target if k not in out and not k.endswith(_COUNTER)]
    if empty:
        raise ImportFormatError(f"{path} ({fmt.name}): the file has no tensor for {len(empty)} part(s) of the "
                                f"{fmt.model} model: {', '.join(empty[:8])}; nothing was written")
    for k in target:  # BatchNorm counters of files saved before PyTorch 0.4.1
        out.setdefault(k, target[k].clone())
    return out, placed, unused


# --------------------------------------------------------------------------- the import
def import_released(
    path: str | Path,
    attributes: list[Attribute],
    out: str | Path | None = None,
    *,
    format: str | None = None,  # noqa: A002 - the user's word
    dataset: str | None = None,
    data: dict | None = None,
    input_size: int | None = None,
) -> ImportReport:
    """Read a released checkpoint, map every tensor, build and check the agman model, and (with
    ``out``) write the agman checkpoint: identity, the config of ``configs/<dataset>/<preset>.yaml``
    (``dataset``: fashionai, deepfashion, zappos50k, synthetic ...), ``attributes``, input size."""
    from agman.engine.checkpoint import save_checkpoint, weights_identity
    from agman.models.registry import build_model

    path = Path(path)
    whole = read_released(path)
    state, record = _tensors(whole, path)
    state, stripped = strip_module(state)
    fmt = detect_format(state, path, format, whole)
    options, n = model_options(fmt, state, path)
    if n != len(attributes):
        names = ", ".join(a.name for a in attributes)
        raise ImportFormatError(f"{path} was trained for {n} attributes ({fmt.name}: its attribute table has {n} "
                                f"rows); the dataset names {len(attributes)}: {names}")
    config = _preset_config(fmt, options, dataset, data, input_size)
    model = build_model(fmt.model, n, **options)
    target = model.state_dict()
    mapped, placed, unused = map_state(fmt, state, target, path)
    model.load_state_dict(mapped, strict=True)
    model.eval()
    config["model"] = {"name": fmt.model, **model.config, "pretrained": "none"}  # the network in hand
    report = ImportReport(source=path, format=fmt, model_name=fmt.model, model_config=dict(model.config),
                          attributes=list(attributes), placed=placed, unused=unused, stripped_prefix=stripped,
                          epoch=_int(record.get("epoch")), record={k: _plain(v) for k, v in record.items()})
    report.identity = weights_identity({k: v for k, v in model.state_dict().items()})
    if out is not None:
        size = int(config["data"]["input_size"])
        report.out = save_checkpoint(
            out, model=model, model_name=fmt.model, attributes=attributes, input_size=size,
            crop_ratio=float(config["data"]["crop_ratio"]), epoch=report.epoch, config=config,
            metrics={"released": report.record}, imported_from={
                "file": str(path), "format": fmt.name, "source": fmt.source, "unused": unused,
                "record": report.record})
    return report


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _plain(value):
    """A record value as a plain Python number or string (numpy scalars, tensors of one element)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def _preset_config(fmt: ReleasedFormat, options: dict, dataset: str | None, data: dict | None,
                   input_size: int | None) -> dict:
    """The plain run config of ``configs/<dataset>/<preset>.yaml`` with the imported model's options."""
    from agman.engine.compose import datasets
    from agman.engine.config import load_config

    name = (dataset or ("zappos50k" if fmt.name == "csn" else "fashionai")).lower()
    if name not in datasets():
        raise ImportFormatError(f"unknown preset dataset {name!r}; choose one of {', '.join(datasets())}")
    overrides = [f"model.{k}={_override_value(v)}" for k, v in options.items()] + ["model.pretrained=none"]
    overrides.append("data.crop_ratio=1.0")  # the released scripts: Resize(S) (short side), CenterCrop(S)
    if input_size is not None:
        overrides.append(f"data.input_size={int(input_size)}")
    elif fmt.name == "csn":
        overrides.append("data.input_size=112")  # the original CSN trains and tests at 112 px
    config = load_config(f"{name}/{fmt.preset_model}", overrides).to_dict()
    if data:
        config["data"].update({k: v for k, v in data.items() if v is not None})
        config["data"]["synthetic"] = None
    return config


def _override_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
