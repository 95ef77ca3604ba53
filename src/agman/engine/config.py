"""Run configs: one typed dataclass per section; every key's type, default and bound is declared here.

A config has seven sections::

    model:   name + the model's own options (build_model(name, n, **options)), pretrained
    data:    where the dataset is and how images are prepared
    warmup:  optional backbone warm-up on the train split's values (offline stand-in for ImageNet)
    train:   optimisation, schedule, devices, speed switches
    loss:    margin, classification on/off, Eq. 9 weighting, CSN regularisers
    eval:    validation split, Recall/Precision cut-offs
    output:  run folder and logging

**How a key is validated** (all of it in this file): its section's dataclass field gives its type
(OmegaConf structured configs check it while merging: ``train.epochs=abc`` or an unknown
``train.lrr`` stop there) and, through :func:`setting`, its bound (``at_least``) or its
``choices``, checked by :func:`_check_bounds`.  The free-form ``model`` section is checked once,
against the named model's own option table (``AttributeModel.resolve_options``), by building the
model on the meta device.  Every error is a :class:`ConfigError` naming the key and the file or
override it came from.

Where the YAML comes from (a file and its ``base:`` chain, or a dataset and a model composed by
name, e.g. ``configs/fashionai/agman.yaml``) is :mod:`agman.engine.compose`; overrides are
``section.key=value`` items with YAML values (a bare ``key`` where only one section has it).
The engine reads typed attributes (``cfg.train.batch_size``) and never re-casts them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agman.data import synthetic as synthetic_set
from agman.data.layouts import LAYOUTS
from agman.data.triplets import SAMPLINGS
from agman.engine.compose import ConfigError, config_layers
from agman.engine.config_keys import Switch, field_type, hints, translate_error
from agman.fileio import atomic_write_text


def setting(default: Any, *, at_least: float | None = None, choices: tuple | None = None):
    """A config key: its default, and what it may hold beyond its type (checked by :func:`_check_bounds`)."""
    meta = {"at_least": at_least, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- the sections
@dataclass
class ModelConfig:
    """``model``: the model's ``name`` and its own options (``backbone``, ``pretrained``,
    ``embedding_dim``, ...), written flat in YAML (``model: {name: agman, backbone: resnet50}``)."""

    name: str = "agman"
    options: dict[str, Any] = field(default_factory=lambda: {"pretrained": "none"})

    def option(self, key: str) -> Any:
        """The value the model uses for option ``key`` (its default when the config leaves it out)."""
        from agman.models.registry import option

        return option(self.name, self.options, key)

    def build(self, n_attributes: int, **replace: Any):
        """The model this section describes; ``replace`` overrides options (the warm-up trunk as ``pretrained``)."""
        from agman.models.registry import build_model

        return build_model(self.name, n_attributes, **{**self.options, **replace})


@dataclass
class SyntheticConfig:
    """``data.synthetic``: render agman's synthetic set at ``data.root`` when that folder is absent
    or empty (:func:`agman.data.source.open_data`; an existing dataset is never overwritten)."""

    images: int = setting(synthetic_set.DEFAULT_IMAGES, at_least=1)
    size: int = synthetic_set.DEFAULT_SIZE  # pixels; the generator names its own minimum
    seed: int = 0
    mode: str = setting("all", choices=synthetic_set.MODES)
    workers: int = setting(2, at_least=1)  # rendering processes (the bytes do not depend on it)


@dataclass
class DataConfig:
    """``data``: where the dataset is and how images are prepared."""

    root: Optional[str] = None  # dataset folder, relative to the working directory
    dataset: Optional[str] = None  # sub-folder / meta.json key (e.g. FashionAI)
    layout: Optional[str] = setting(None, choices=(None, *LAYOUTS))  # None: auto-detected
    meta: Optional[str] = None
    yaml: Optional[str] = None
    image_root: Optional[str] = None
    input_size: int = setting(224, at_least=16)
    # resize to input_size / crop_ratio, centre-crop input_size (1.0: the released Resize(S) + CenterCrop(S))
    crop_ratio: float = 1.0
    synthetic: Optional[SyntheticConfig] = None
    # fill the decoded-image cache at input_size/crop_ratio before training (`agman data cache`;
    # the same pixels, no decoding per epoch)
    cache: bool = False

    def open(self, progress: bool = False):
        """The dataset this section describes (:func:`agman.data.source.open_data`)."""
        from dataclasses import asdict

        from agman.data.source import open_data

        return open_data(self.root, dataset=self.dataset, layout=self.layout, meta=self.meta, yaml_config=self.yaml,
                         image_root=self.image_root, progress=progress,
                         synthetic=asdict(self.synthetic) if self.synthetic is not None else None)


@dataclass
class WarmupConfig:
    """``warmup`` (:mod:`agman.engine.pretrain`): used when ``epochs`` > 0 and ``model.pretrained`` is none."""

    epochs: int = setting(0, at_least=0)
    batch_size: int = setting(64, at_least=1)  # images per step
    lr: float = setting(1e-3, at_least=0)  # Adam
    dir: Optional[str] = None  # folder for the trunk file (default: the run folder); runs may share one




def _on(value: Switch, device) -> bool:
    return device.type == "cuda" if value == "auto" else bool(value)


@dataclass
class Stage2Config:
    """``train.stage2``: ASEN++'s second stage (the authors' ``s2.yaml``), run after ``train.epochs`` of
    stage 1 from stage 1's last checkpoint, with the local branch (:mod:`agman.engine.stages`)."""

    epochs: int = setting(20, at_least=1)
    lr: float = setting(1e-4, at_least=0)  # BASE_LR: the local branch
    slow_lr: float = setting(1e-5, at_least=0)  # BASE_LR_SLOW: the global branch and the attribute table
    lr_step: int = setting(1, at_least=1)
    lr_gamma: float = setting(0.9, at_least=0)
    global_weight: float = setting(1.0, at_least=0)  # GLOBAL_WEIGHT: the global branch's triplet loss
    local_weight: float = setting(0.1, at_least=0)  # LOCAL_WEIGHT: the local branch's triplet loss
    align_weight: float = setting(0.1, at_least=0)  # ALIGN_WEIGHT: 1 - cos(global, local) per image


@dataclass
class TrainConfig:
    """``train``: optimisation, schedule, devices and speed switches."""

    epochs: int = setting(50, at_least=1)
    triplets_per_epoch: int = setting(100_000, at_least=1)
    # value (released/ASEN: value uniform among the attribute's, then its images) | image (anchor uniform)
    sampling: str = setting("value", choices=SAMPLINGS)
    # separate (released: anchor, far, close as three passes of B) | joint (one pass of 3B) | stacked (one
    # pass of 3B, each BatchNorm per set: separate's result at one pass's speed, engine.step.batchnorm_per_set)
    bn_passes: str = setting("separate", choices=("separate", "joint", "stacked"))
    batch_size: int = setting(16, at_least=1)  # triplets per step (per process under DDP)
    optimizer: str = setting("adam", choices=("adam", "adamw", "sgd"))
    lr: float = setting(1e-4, at_least=0)
    # lr of the parameters a model names slow (ASEN++ stage 2: its global branch); null: train.lr
    slow_lr: Optional[float] = setting(None, at_least=0)
    weight_decay: float = setting(0.0, at_least=0)
    lr_step: int = setting(3, at_least=1)  # StepLR step size in epochs
    lr_gamma: float = setting(0.9, at_least=0)
    grad_clip: float = setting(0.0, at_least=0)  # max gradient norm; 0 = off
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = setting("auto", choices=("auto", "bf16", "none"))  # auto: bf16 on GPU, off on CPU
    # true: also on CPU, where the fp32 step is 1.29x faster (bench/train_step.py); auto: GPU only
    channels_last: Switch = setting(True, choices=("auto", True, False))
    compile: bool = False  # torch.compile the model
    # Adam/AdamW's fused kernels (one launch for all parameters); auto: on GPU. Same update rule,
    # not bit-equal to the per-tensor loop, so the CPU default (the equivalence tests') stays off
    fused_optimizer: Switch = setting("auto", choices=("auto", True, False))
    # convolutions on maps of <= 4 positions (layer4 at 64 px) as one matrix product: the same sums,
    # several times faster on CPU (agman.models.small_maps); in training and the backbone warm-up
    small_map_matmul: bool = False
    workers: int = setting(4, at_least=0)  # DataLoader worker processes
    pin_memory: Switch = setting("auto", choices=("auto", True, False))
    persistent_workers: bool = True
    prefetch_factor: int = setting(2, at_least=1)
    checkpoint_every_steps: int = setting(0, at_least=0)  # also write last.pt every N steps (0: once per epoch)
    max_steps_per_epoch: int = setting(0, at_least=0)  # cap on steps per epoch (0: all triplets)
    threads: int = setting(0, at_least=0)  # torch CPU threads (0: torch's default)
    ddp_backend: str = setting("auto", choices=("auto", "nccl", "gloo"))  # auto: nccl on GPU, gloo on CPU
    sync_bn: bool = False
    find_unused_parameters: bool = False
    stage2: Optional[Stage2Config] = None  # ASEN++'s two-stage schedule (configs/models/asenpp.yaml)

    def uses_amp(self, device) -> bool:
        """bf16 autocast: when asked (``bf16``), or by default (``auto``) on GPU."""
        return self.amp == "bf16" or (self.amp == "auto" and device.type == "cuda")

    def uses_channels_last(self, device) -> bool:
        return _on(self.channels_last, device)

    def uses_fused_optimizer(self, device) -> bool:
        return self.optimizer in ("adam", "adamw") and _on(self.fused_optimizer, device)

    def uses_pin_memory(self, device) -> bool:
        return _on(self.pin_memory, device)


@dataclass
class LossConfig:
    """``loss`` (:mod:`agman.engine.losses`)."""

    margin: float = setting(0.2, at_least=0)
    classification: bool = True  # Eq. 7 (only where the model has the branch)
    # released (Eq. 9, w held) | learned (Eq. 9 as printed) | uncertainty | fixed; dynamic: old name of learned
    weighting: str = setting("released", choices=("released", "learned", "uncertainty", "fixed", "dynamic"))
    weight_init: float = 0.0  # w0, w1 at start (paper 0; released code 1)
    weights: dict[str, float] = setting({})  # fixed weights per term: {classification: 1.0, triplet: 1.0}
    mask_l1: float = setting(0.0, at_least=0)  # CSN mask L1 coefficient (5e-4 in CSN)
    embed_l2: float = setting(0.0, at_least=0)  # CSN embedding L2 coefficient (5e-3 in CSN)
    # a two-branch model's (ASEN++) local triplet loss and global-local alignment, added to the weighted terms
    local_weight: float = setting(1.0, at_least=0)
    align_weight: float = setting(1.0, at_least=0)


@dataclass
class EvalConfig:
    """``eval``: model selection during training."""

    split: str = "valid"  # model selection split
    every: int = setting(1, at_least=1)  # validate every k epochs (and after the last)
    batch_size: int = setting(64, at_least=1)
    ks: list[int] = setting([1, 5, 10, 50])
    margin: Optional[float] = None  # TR average loss margin (default: loss.margin)


@dataclass
class OutputConfig:
    """``output``: the run folder and logging."""

    dir: Optional[str] = None  # run folder (default runs/<config folder>-<config name>)
    tensorboard: bool = True
    log_every: int = setting(20, at_least=1)  # steps between TensorBoard points
    progress: bool = True


@dataclass
class RunConfig:
    """A resolved, validated config.  ``config_path`` and ``overrides`` record where it came from."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    config_path: Optional[str] = None
    overrides: list[str] = field(default_factory=list)

    @property
    def eval_margin(self) -> float:
        """The margin of the TR average loss: ``eval.margin``, else ``loss.margin``."""
        return self.eval.margin if self.eval.margin is not None else self.loss.margin

    @property
    def run_dir(self) -> Path:
        """``output.dir``, else ``runs/<config folder>-<config name>``."""
        if self.output.dir:
            return Path(self.output.dir)
        p = Path(self.config_path or "run.yaml")
        return Path("runs") / f"{p.parent.name}-{p.stem}" if p.parent.name else Path("runs") / p.stem

    def to_dict(self) -> dict:
        """Plain types, ``model`` written flat: what ``config.yaml`` and checkpoints hold (:func:`from_dict` input)."""
        out = {s: OmegaConf.to_container(OmegaConf.structured(getattr(self, s))) for s in SECTIONS}
        out["model"] = {"name": self.model.name, **copy.deepcopy(self.model.options)}
        return {**out, "config_path": self.config_path, "overrides": list(self.overrides)}


SECTIONS = ("model", "data", "warmup", "train", "loss", "eval", "output")
#: Top-level keys a saved config carries for the record (where it came from), not settings.
RECORD_KEYS = ("config_path", "overrides")


# --------------------------------------------------------------------------- checking
def _check_bounds(obj: Any, prefix: str, where: str) -> None:
    for f in fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}.{f.name}"
        if is_dataclass(value):
            _check_bounds(value, key, where)
            continue
        choices, at_least = f.metadata.get("choices"), f.metadata.get("at_least")
        if choices is not None and value not in choices:
            raise ConfigError(f"{where}: {key} must be one of {', '.join(map(str, choices))}, got {value!r}")
        if at_least is not None and value is not None and value < at_least:
            bound = "must not be negative" if at_least == 0 else f"must be at least {at_least}"
            raise ConfigError(f"{where}: {key} {bound}, got {value!r}")


# --------------------------------------------------------------------------- layers -> RunConfig
def _as_layer(data: Any, where: str) -> dict:
    """A file's or override's mapping of sections, ``model`` nested as ``{name, options}``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a config must be a mapping of sections, got {type(data).__name__}")
    layer = {}
    for section, body in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown section {section!r} (sections: {', '.join(SECTIONS)})")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: section {section!r} must be a mapping, got {body!r}")
        if section == "model":
            body = dict(body)
            body = {**({"name": body.pop("name")} if "name" in body else {}), "options": body}
        layer[section] = body
    return layer


def _merge(merged, data: dict, where: str):
    """``data`` merged over ``merged`` (both OmegaConf), checked: types and keys, then bounds."""
    try:
        merged = OmegaConf.merge(merged, _as_layer(data, where))
        run = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise translate_error(exc, where, RunConfig) from None
    for section in SECTIONS:
        _check_bounds(getattr(run, section), section, where)
    return merged


def _locate(merged, key: str, where: str) -> list[str]:
    """The path an override key names: ``section.key[.sub]``, or a bare key only one section has
    (a bare ``epochs`` / ``lr`` is the training's: ``warmup`` keys always need their section)."""
    if "." in key:
        path = key.split(".")
        if path[0] not in SECTIONS:
            raise ConfigError(f"{where}: unknown section {path[0]!r} (sections: {', '.join(SECTIONS)})")
        return path
    owners = [s for s in SECTIONS if s != "model" and key in hints(field_type(RunConfig, [s]))]
    if key == "name" or key in merged.model.options:
        owners.append("model")
    if len(owners) > 1 and "warmup" in owners:
        owners.remove("warmup")
    if len(owners) == 1:
        return [owners[0], key]
    if not owners:
        raise ConfigError(f"{where}: unknown key {key!r}; write section.key "
                          f"(sections: {', '.join(SECTIONS)}; model options go under model.)")
    raise ConfigError(f"{where}: {key!r} is ambiguous; write one of " + ", ".join(f"{s}.{key}" for s in owners))


def _override_layer(item: str, merged, where: str) -> dict:
    if "=" not in item:
        raise ConfigError(f"{where}: must look like section.key=value")
    key, _, text = item.partition("=")
    path = _locate(merged, key.strip(), where)
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"{where}: cannot parse the value {text!r}") from None
    for name in reversed(path[1:]):
        value = {name: value}
    return {path[0]: value}


def resolve(layers: list[tuple[str, dict]], overrides=(), *, source: str, record: dict | None = None) -> RunConfig:
    """Defaults <- each ``(where, mapping)`` layer in order <- each override, checked layer by layer
    (so an error names the layer that brought the value); then the model options, once."""
    merged = OmegaConf.structured(RunConfig)
    for where, data in layers:
        merged = _merge(merged, {k: v for k, v in data.items() if k not in RECORD_KEYS}, where)
    for item in overrides:
        where = f"config {source}: override {item!r}"
        merged = _merge(merged, _override_layer(item, merged, where), where)
    run: RunConfig = OmegaConf.to_object(merged)
    record = record or {}
    run.config_path = record.get("config_path") or source
    run.overrides = [*record.get("overrides", []), *overrides]
    _check_model(run.model, f"config {source}")
    return run


def _check_model(model: ModelConfig, where: str) -> None:
    """Build the configured model on the meta device (no memory, no weights) to check its options."""
    import torch

    try:
        with torch.device("meta"):
            model.build(2, pretrained="none")
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: model section: {exc}") from None


# --------------------------------------------------------------------------- public API
def load_config(reference: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The config a file or a composition names (see :mod:`agman.engine.compose`), plus overrides."""
    record, layers = config_layers(reference)
    return resolve(layers, list(overrides), source=str(reference), record={"config_path": record})


def from_dict(data: dict, overrides: list[str] | tuple[str, ...] = (), source: str = "<dict>") -> RunConfig:
    """A config from a plain mapping (tests, a checkpoint's or run folder's saved config), merged
    over the defaults; its recorded ``config_path`` / ``overrides`` are kept."""
    data = {k: v for k, v in data.items() if k != "base"}
    record = {k: data[k] for k in RECORD_KEYS if data.get(k) is not None}
    return resolve([(source, data)], list(overrides), source=source, record=record)


def with_overrides(config: RunConfig, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    """``config`` with more ``section.key=value`` items applied (and checked)."""
    return from_dict(config.to_dict(), overrides, source=config.config_path or "<config>")


def stored_for_eval(saved: dict, data: dict | None = None, *, source: str) -> tuple[DataConfig, float]:
    """What evaluating a checkpoint needs from the config stored in it (a plain dict): its ``data``
    section (``data`` entries replacing the stored ones) and the TR margin (:attr:`RunConfig.eval_margin`).
    Only these keys are read, so settings of other sections an agman version no longer has do not matter."""
    stored_data, stored_eval, stored_loss = (saved.get(name) or {} for name in ("data", "eval", "loss"))
    layer = {"data": {**stored_data, **(data or {})}, "eval": {"margin": stored_eval.get("margin")},
             "loss": {"margin": stored_loss.get("margin", LossConfig.margin)}}
    run: RunConfig = OmegaConf.to_object(_merge(OmegaConf.structured(RunConfig), layer, f"config stored in {source}"))
    return run.data, run.eval_margin


def save_config(config: RunConfig, path: str | Path) -> Path:
    """``config.yaml`` of a run folder (atomic; ``agman train --config RUN/config.yaml`` reruns it)."""
    return atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
