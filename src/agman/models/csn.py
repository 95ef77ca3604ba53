"""CSN baseline (Veit et al., CVPR 2017), the architecture of ASEN's code: pooled backbone feature -> FC ->
per-attribute mask -> L2 norm."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from agman.errors import InvalidValueError
from agman.models.attention import AttributeMasks
from agman.models.backbone import ResNetTrunk
from agman.models.base import AttributeModel
from agman.models.extension import AttributeParts
from agman.models.output import ModelOutput

FEATURE_LEVELS = ("layer3", "layer4")

#: The original CSN setting on Zappos50k (Veit et al.): ResNet-18 to layer4, 112-px inputs, D=64,
#: learned masks from N(0.9, 0.7).  Train with batch 256, lr 5e-5, L1 mask penalty 5e-4 and L2
#: embedding penalty 5e-3 (those are the engine's settings, not the model's).
ZAPPOS_ORIGINAL = {"backbone": "resnet18", "feature_level": "layer4", "embedding_dim": 64, "mask_init": "normal"}


class CSN(AttributeModel):
    """Conditional Similarity Network.

    ``feature_level='layer3'`` (default) pools layer3 like ASEN's re-implementation (1024 channels
    on ResNet-50); ``'layer4'`` pools the last stage like the original.  ``mask_init``:
    ``'normal'`` (learned, N(0.9, 0.7); default, as both codes), ``'disjoint'`` (learned, 0.1 with
    blocks of 1) or ``'fixed'`` (disjoint binary, not learned).  The output is L2-normalised (ASEN's
    version; the original used unnormalised distances).  ``masks`` and ``general_embedding`` in
    the output feed CSN's L1 mask and L2 embedding penalties.
    """

    name = "csn"
    description = "CSN (Veit et al. 2017): pooled ResNet feature -> FC -> learned attribute mask"
    DEFAULTS = {"backbone": "resnet50", "embedding_dim": 1024, "feature_level": "layer3", "mask_init": "normal"}
    ATTRIBUTE_PARTS = AttributeParts(tables=("masks.weight",), adapters=("embed.",))

    def __init__(self, n_attributes: int, pretrained: str | None = "none", **options):
        super().__init__(n_attributes, pretrained, **options)
        cfg = self.config
        if cfg["feature_level"] not in FEATURE_LEVELS:
            raise InvalidValueError(f"feature_level must be one of {FEATURE_LEVELS}, got {cfg['feature_level']!r}")
        self.trunk = ResNetTrunk(cfg["backbone"], with_layer4=cfg["feature_level"] == "layer4")
        self.embed = nn.Linear(self.trunk.channels[cfg["feature_level"]], self.embedding_dim)
        self.masks = AttributeMasks(self.n_attributes, self.embedding_dim, cfg["mask_init"])
        self._load_backbone(self.trunk)

    def encode(self, images: Tensor, with_logits: bool = True):
        _, features = self.trunk(images)
        if self.trunk.layer4 is not None:
            features = self.trunk.top(features)
        return features.mean(dim=(-2, -1)), None

    def head(self, pooled: Tensor, attribute_ids: Tensor) -> ModelOutput:
        # the FC sits in the head (run once per call, as before in encode) so that an added attribute
        # may own a private copy of it (agman.models.extension, design 'adapter')
        masks = self.masks(attribute_ids)  # [B, K, D]
        general = self.embed(pooled)[:, None].expand_as(masks)
        return ModelOutput(embedding=F.normalize(general * masks, dim=-1), masks=masks, general_embedding=general)
