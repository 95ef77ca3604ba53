"""Models layer: backbones, attention modules (ASA, SA, ACA, CA), AG-MAN and baselines, registry."""
from agman.models.backbone import PretrainedWeightsError, load_pretrained
from agman.models.base import AttributeModel
from agman.models.output import ModelOutput
from agman.models.registry import (
    MODEL_NAMES,
    build_model,
    count_parameters,
    describe_models,
)

__all__ = [
    "MODEL_NAMES",
    "AttributeModel",
    "ModelOutput",
    "PretrainedWeightsError",
    "build_model",
    "count_parameters",
    "describe_models",
    "load_pretrained",
]
