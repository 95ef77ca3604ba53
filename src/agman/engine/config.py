"""Run configs: YAML files with ``base:`` inheritance, ``key=value`` overrides, validation.

A config has seven sections (see :data:`DEFAULTS` for every key and its default)::

    model:   name + the model's keyword arguments (build_model(name, n, **rest)); pretrained
    data:    where the dataset is and how images are prepared
    warmup:  optional backbone warm-up on the train split's values (offline stand-in for ImageNet)
    train:   optimisation, schedule, devices, speed switches
    loss:    margin, classification on/off, Eq. 9 weighting, CSN regularisers
    eval:    validation split, Recall/Precision cut-offs
    output:  run folder and logging

A file may name others with ``base: <path relative to the file>`` (or a list of paths, merged left to
right); their keys are merged under the file's own (nested dicts merge, other values replace).  Every key is checked against the schema;
an unknown key or a value of the wrong type raises :class:`ConfigError` naming the key and the file
(or the override).  ``model`` keys are checked against the named model's options.
"""
from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from agman.errors import UsageError

PACKAGED_PREFIX = "configs"

DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"name": "agman", "pretrained": "none"},
    "data": {
        "root": None,  # dataset folder, relative to the working directory
        "dataset": None,  # sub-folder / meta.json key (e.g. FashionAI)
        "layout": None,  # asen | csn | csv (auto-detected)
        "meta": None,
        "yaml": None,
        "image_root": None,
        "input_size": 224,
        "crop_ratio": 1.0,  # resize to input_size / crop_ratio, centre-crop input_size (1.0: released code)
        "synthetic": None,  # {images, size, seed, mode}: generate the synthetic set at root if absent
    },
    "warmup": {  # agman.engine.pretrain: used when epochs > 0 and model.pretrained is none
        "epochs": 0,
        "batch_size": 64,  # images per step
        "lr": 1e-3,  # Adam
        "dir": None,  # folder for the trunk file (default: the run folder); runs may share one
    },
    "train": {
        "epochs": 50,
        "triplets_per_epoch": 100_000,
        "sampling": "value",  # value (released/ASEN: value uniform, then its images) | image (anchor uniform)
        "bn_passes": "separate",  # separate (released: anchor, far, close as 3 passes of B) | joint (one of 3B)
        "batch_size": 16,  # triplets per step (per process under DDP)
        "optimizer": "adam",
        "lr": 1e-4,
        "weight_decay": 0.0,
        "lr_step": 3,  # StepLR step size in epochs
        "lr_gamma": 0.9,
        "grad_clip": 0.0,  # max gradient norm; 0 = off
        "seed": 0,
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "amp": "auto",  # auto (bf16 on GPU, off on CPU) | bf16 | none
        "channels_last": "auto",  # auto (on GPU) | true | false
        "compile": False,  # torch.compile the model
        "workers": 4,  # DataLoader worker processes
        "pin_memory": "auto",
        "persistent_workers": True,
        "prefetch_factor": 2,
        "checkpoint_every_steps": 0,  # also write last.pt every N steps (0: once per epoch)
        "max_steps_per_epoch": 0,  # cap on steps per epoch (0: all triplets)
        "threads": 0,  # torch CPU threads (0: torch's default)
        "ddp_backend": "auto",  # nccl on GPU, gloo on CPU
        "sync_bn": False,
        "find_unused_parameters": False,
    },
    "loss": {
        "margin": 0.2,
        "classification": True,  # Eq. 7 (only where the model has the branch)
        "weighting": "released",  # released (Eq. 9, w held) | learned (Eq. 9 as printed) | uncertainty | fixed
        "weight_init": 0.0,  # w0, w1 at start (paper 0; released code 1)
        "weights": {},  # fixed weights per term: {classification: 1.0, triplet: 1.0}
        "mask_l1": 0.0,  # CSN mask L1 coefficient (5e-4 in CSN)
        "embed_l2": 0.0,  # CSN embedding L2 coefficient (5e-3 in CSN)
    },
    "eval": {
        "split": "valid",  # model selection split
        "every": 1,  # validate every k epochs (and after the last)
        "batch_size": 64,
        "ks": [1, 5, 10, 50],
        "margin": None,  # TR average loss margin (default: loss.margin)
    },
    "output": {
        "dir": None,  # run folder (default runs/<config folder>-<config name>)
        "tensorboard": True,
        "log_every": 20,  # steps between TensorBoard points
        "progress": True,
    },
}

#: Top-level keys a resolved config carries for the record (where it came from), not settings.
RECORD_KEYS = ("config_path", "overrides")

#: Keys whose values are free-form dicts (not checked key by key).
FREE_DICTS = {("data", "synthetic"), ("loss", "weights")}

CHOICES = {
    ("data", "layout"): (None, "asen", "csn", "csv"),
    ("train", "optimizer"): ("adam", "adamw", "sgd"),
    ("train", "amp"): ("auto", "bf16", "none"),
    ("train", "channels_last"): ("auto", True, False),
    ("train", "pin_memory"): ("auto", True, False),
    ("train", "ddp_backend"): ("auto", "nccl", "gloo"),
    ("train", "sampling"): ("value", "image"),
    ("train", "bn_passes"): ("separate", "joint"),
    ("loss", "weighting"): ("released", "learned", "uncertainty", "fixed", "dynamic"),  # dynamic: old name of learned
}
AT_LEAST_ONE = {
    ("train", "epochs"), ("train", "triplets_per_epoch"), ("train", "batch_size"), ("train", "lr_step"),
    ("eval", "every"), ("eval", "batch_size"), ("output", "log_every"), ("train", "prefetch_factor"),
    ("warmup", "batch_size"),
}
NON_NEGATIVE = {
    ("train", "workers"), ("train", "checkpoint_every_steps"), ("train", "max_steps_per_epoch"),
    ("train", "threads"), ("train", "lr"), ("train", "weight_decay"), ("train", "grad_clip"),
    ("loss", "margin"), ("loss", "mask_l1"), ("loss", "embed_l2"), ("train", "lr_gamma"),
    ("warmup", "epochs"), ("warmup", "lr"),
}


class ConfigError(UsageError, ValueError):
    """A config file or override is wrong; the message names the key and where it came from."""


# --------------------------------------------------------------------------- locating files
def packaged_config_dir() -> Path:
    return Path(str(resources.files("agman") / "configs"))


def resolve_config_path(path: str | Path) -> Path:
    """``path`` as given (relative to the working directory) if it exists, else the same path
    inside the installed package's configs (``configs/fashionai/agman.yaml`` and
    ``fashionai/agman.yaml`` both work; ``.yaml`` may be left out)."""
    p = Path(path)
    candidates = [p, p.with_suffix(".yaml")] if p.suffix != ".yaml" else [p]
    for c in candidates:
        if c.is_file():
            return c
    parts = p.parts[1:] if p.parts and p.parts[0] == PACKAGED_PREFIX else p.parts
    if parts and not p.is_absolute():
        base = packaged_config_dir().joinpath(*parts)
        for c in ([base, base.with_suffix(".yaml")] if base.suffix != ".yaml" else [base]):
            if c.is_file():
                return c
    raise ConfigError(f"config file not found: {path} (packaged configs: {', '.join(list_configs())})")


def list_configs() -> list[str]:
    """Packaged configs as ``configs/<dataset>/<name>.yaml`` (names starting with ``_`` are bases)."""
    root = packaged_config_dir()
    return sorted(
        f"{PACKAGED_PREFIX}/{p.relative_to(root).as_posix()}"
        for p in root.rglob("*.yaml")
        if not any(part.startswith("_") for part in p.relative_to(root).parts)
    )


# --------------------------------------------------------------------------- loading
def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def merge(base: dict, update: dict) -> dict:
    """Nested merge: dicts merge key by key, everything else in ``update`` replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_chain(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'base' inheritance loops through {', '.join(str(s) for s in seen)}")
    data = _read_yaml(path)
    bases = data.pop("base", None)
    for key in RECORD_KEYS:  # a run's saved config.yaml records these; they are not settings
        data.pop(key, None)
    _validate(data, str(path))
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: 'base' must be a file name or a list of file names, got {bases!r}")
    merged: dict = {}
    for name in bases:
        base_path = path.parent / name
        if not base_path.is_file():
            raise ConfigError(f"{path}: base config not found: {base_path}")
        merged = merge(merged, _load_chain(base_path, seen + (path,)))
    return merge(merged, data)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The resolved config: defaults <- base chain <- file <- overrides, validated.

    The result carries ``config_path`` (the file read) and ``overrides`` (as given) for the record.
    """
    file = resolve_config_path(path)
    config = merge(DEFAULTS, _load_chain(file))
    config = apply_overrides(config, overrides, source=str(path))
    config["config_path"] = str(file)
    config["overrides"] = list(overrides)
    validate_model(config, str(file))
    return config


def from_dict(data: dict, overrides: list[str] | tuple[str, ...] = (), source: str = "<dict>") -> dict:
    """A config from an in-memory dict (tests, ablation variants), merged over the defaults."""
    data = dict(data)
    data.pop("base", None)
    extra = {k: data.pop(k) for k in RECORD_KEYS if k in data}
    _validate(data, source)
    config = apply_overrides(merge(DEFAULTS, data), overrides, source=source)
    config.update({"config_path": extra.get("config_path", source), "overrides": list(extra.get("overrides", [])) + list(overrides)})
    validate_model(config, source)
    return config


# --------------------------------------------------------------------------- validation
def _type_name(default: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}[type(default)]


def check_value(section: str, key: str, value: Any, where: str) -> Any:
    """``value`` converted to the type of the default of ``section.key`` or ConfigError."""
    default = DEFAULTS[section][key]
    choices = CHOICES.get((section, key))
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: {section}.{key} must be one of {', '.join(map(str, choices))}, got {value!r}")
    if default is None:
        return value
    kind = type(default)
    if kind is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-4 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    ok = (
        (kind is bool and isinstance(value, bool))
        or (kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (kind is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (kind is str and isinstance(value, (str, bool)))  # 'auto' | true | false switches
        or (kind in (list, dict) and isinstance(value, kind))
    )
    if not ok:
        raise ConfigError(f"{where}: {section}.{key} must be {_type_name(default)}, got {value!r}")
    if (section, key) in AT_LEAST_ONE and value < 1:
        raise ConfigError(f"{where}: {section}.{key} must be at least 1, got {value!r}")
    if (section, key) in NON_NEGATIVE and value < 0:
        raise ConfigError(f"{where}: {section}.{key} must not be negative, got {value!r}")
    if (section, key) == ("data", "input_size") and value < 16:
        raise ConfigError(f"{where}: data.input_size must be at least 16, got {value!r}")
    return float(value) if kind is float else value


def _validate(data: dict, where: str) -> None:
    for section, body in data.items():
        if section not in DEFAULTS:
            raise ConfigError(f"{where}: unknown section {section!r} (sections: {', '.join(DEFAULTS)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: section {section!r} must be a mapping, got {body!r}")
        if section == "model":
            continue  # checked against the model's own options by validate_model
        for key, value in body.items():
            if key not in DEFAULTS[section]:
                raise ConfigError(
                    f"{where}: unknown key {section}.{key} (known keys in {section}: {', '.join(DEFAULTS[section])})"
                )
            body[key] = check_value(section, key, value, where)
            if (section, key) in FREE_DICTS and value is not None and not isinstance(value, dict):
                raise ConfigError(f"{where}: {section}.{key} must be a mapping, got {value!r}")


def model_options(config: dict) -> tuple[str, dict]:
    """``(model name, build_model keyword arguments)`` of a config's model section."""
    model = dict(config["model"])
    name = model.pop("name")
    return name, model


def validate_model(config: dict, where: str) -> None:
    """Build the configured model on the meta device (no memory, no weights) to check its options."""
    import torch

    from agman.models.registry import build_model

    name, options = model_options(config)
    options["pretrained"] = "none"
    try:
        with torch.device("meta"):
            build_model(name, 2, **options)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: model section: {exc}") from None


# --------------------------------------------------------------------------- overrides
def _parse_value(text: str, item: str, where: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"{where}: override {item!r}: cannot parse the value {text!r}") from None


def _locate(config: dict, key: str, item: str, where: str) -> tuple[str, str]:
    if "." in key:
        section, _, name = key.partition(".")
        if section not in DEFAULTS:
            raise ConfigError(f"{where}: override {item!r}: unknown section {section!r} (sections: {', '.join(DEFAULTS)})")
        if section != "model" and name not in DEFAULTS[section]:
            raise ConfigError(
                f"{where}: override {item!r}: unknown key {key} (known keys in {section}: {', '.join(DEFAULTS[section])})"
            )
        return section, name
    owners = [s for s in DEFAULTS if key in DEFAULTS[s] or (s == "model" and key in config["model"])]
    if len(owners) > 1 and "warmup" in owners:  # a bare epochs / lr means the training's
        owners.remove("warmup")
    if len(owners) == 1:
        return owners[0], key
    if not owners:
        raise ConfigError(f"{where}: override {item!r}: unknown key {key!r}; write section.key "
                          f"(sections: {', '.join(DEFAULTS)}; model options go under model.)")
    raise ConfigError(f"{where}: override {item!r}: {key!r} is ambiguous; write one of "
                      + ", ".join(f"{s}.{key}" for s in owners))


def apply_overrides(config: dict, overrides, source: str = "<overrides>") -> dict:
    """Apply ``section.key=value`` items (YAML values; a bare ``key`` is allowed when unambiguous,
    ``warmup`` keys always need their section: a bare ``epochs`` or ``lr`` is the training's)."""
    config = copy.deepcopy(config)
    where = f"config {source}"
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{where}: override {item!r} must look like section.key=value")
        key, _, text = item.partition("=")
        key = key.strip()
        section, name = _locate(config, key, item, where)
        value = _parse_value(text, item, where)
        if section != "model":
            value = check_value(section, name, value, f"{where}: override {item!r}")
        config[section][name] = value
    return config


# --------------------------------------------------------------------------- saving
def plain(config: dict) -> dict:
    """A copy holding only plain types (for checkpoints and YAML)."""
    return yaml.safe_load(yaml.safe_dump(config))


def save_config(config: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def default_run_dir(config: dict) -> Path:
    """``output.dir``, else ``runs/<config folder>-<config name>``."""
    if config["output"].get("dir"):
        return Path(config["output"]["dir"])
    p = Path(config.get("config_path") or "run.yaml")
    return Path("runs") / f"{p.parent.name}-{p.stem}" if p.parent.name else Path("runs") / p.stem
