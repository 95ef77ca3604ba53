"""Model registry: ``build_model(name, n_attributes, **config)`` and the table behind ``agman models``."""
from __future__ import annotations

import logging

import torch

from agman.errors import InvalidValueError
from agman.models.agman import AGMAN, AGMANOfficial
from agman.models.asen import ASENetV2
from agman.models.asenpp import ASENPlusPlus
from agman.models.attnfashion import AttnFashion
from agman.models.base import AttributeModel
from agman.models.cca import CCA
from agman.models.csn import CSN

log = logging.getLogger(__name__)

_MODELS: dict[str, type[AttributeModel]] = {cls.name: cls for cls in (AGMAN, AGMANOfficial, CSN, ASENetV2, AttnFashion,
                                                              ASENPlusPlus, CCA)}
MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)

#: Keys any training config may set for any model; a model without the concept ignores them.
COMMON_KEYS = ("backbone", "pretrained", "embedding_dim", "attention_dim")


def build_model(name: str, n_attributes: int, **config) -> AttributeModel:
    """Build model ``name`` for ``n_attributes`` attributes.

    ``config`` holds the model's keyword arguments (see each class); ``pretrained`` is
    ``'none'`` (default: nothing is downloaded by accident), ``'imagenet'`` or a weight-file path
    and is not part of ``model.config`` (weights are an initialisation, not the architecture, so
    ``build_model(model.name, model.n_attributes, **model.config)`` never downloads).
    """
    if name not in _MODELS:
        raise InvalidValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    cls = _MODELS[name]
    for key in set(COMMON_KEYS) - set(cls.DEFAULTS) - {"pretrained"}:
        if key in config:  # e.g. attention_dim for CSN: the model has no such part
            log.debug("model %s has no %s; ignoring %s=%r", name, key, key, config.pop(key))
    return cls(int(n_attributes), **config)


def option(name: str, config: dict, key: str):
    """The value model ``name`` uses for option ``key`` given ``config`` (the model's default if unset)."""
    if name not in _MODELS:
        raise InvalidValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return config.get(key, _MODELS[name].DEFAULTS.get(key))


def trunk_arch(name: str, config: dict) -> str:
    """The backbone model ``name`` builds from ``config``: its ``vit`` option where it has one (``cca``),
    else its ResNet ``backbone`` (what the warm-up pre-trains)."""
    key = "vit" if "vit" in _MODELS.get(name, AttributeModel).DEFAULTS else "backbone"
    return option(name, config, key)


def count_parameters(model: torch.nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters, each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def describe_models(n_attributes: int = 8, backbone: str = "resnet50") -> list[tuple[str, int, str]]:
    """``(name, trainable parameters, one-line description)`` of every registered model with
    default options (built on the meta device: no memory, no weights)."""
    rows = []
    with torch.device("meta"):
        for name, cls in _MODELS.items():
            model = build_model(name, n_attributes, backbone=backbone)
            rows.append((name, count_parameters(model), cls.description))
    return rows
