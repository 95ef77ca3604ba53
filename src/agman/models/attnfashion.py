"""AttnFashion baseline (Wan et al., JETAI 2022), a reconstruction: fused layer3+layer4 -> sigmoid attribute spatial gate -> attribute SE channel gate."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agman.models.attention import ACA, ASA, weighted_sum_pool
from agman.models.backbone import ResNetTrunk
from agman.models.base import AttributeModel
from agman.models.extension import AttributeParts
from agman.models.output import ModelOutput


class AttnFashion(AttributeModel):
    """AttnFashion, rebuilt from its description (no code was released).

    Multi-level features: layer4 is upsampled (bilinear) to layer3's grid, concatenated with
    layer3 and fused by conv1x1 -> BN -> ReLU to c' channels.  Attribute-guided spatial
    attention: ``σ(<tanh(BN(F)), tanh(FC(e(a)))> / √c')`` per position (sigmoid gating, not a
    softmax), then gated average pooling.  Attribute-guided channel attention: an SE-style gate
    ``σ(FC(ReLU(FC([v, ReLU(FC(e(a)))]))))`` with hidden width c'/``channel_reduction``.  FC to
    ``embedding_dim``, L2 norm.  ``attention`` in the output is the sigmoid gate normalised to sum 1.
    """

    name = "attnfashion"
    description = "AttnFashion (Wan et al. 2022, reconstruction): fused layer3+4, sigmoid spatial + SE gates"
    DEFAULTS = {"backbone": "resnet50", "embedding_dim": 1024, "attention_dim": 512, "channel_reduction": 16}
    ATTRIBUTE_PARTS = AttributeParts(
        tables=("spatial.attribute.embedding.weight", "channel.attribute.embedding.weight"),
        adapters=("spatial.attribute.fc.", "channel."))

    def __init__(self, n_attributes: int, pretrained: str | None = "none", **options):
        super().__init__(n_attributes, pretrained, **options)
        self.trunk = ResNetTrunk(self.config["backbone"], with_layer4=True)
        c3, c4 = self.trunk.channels["layer3"], self.trunk.channels["layer4"]
        width, reduction = self.config["attention_dim"], self.config["channel_reduction"]
        self.fuse = nn.Sequential(
            nn.Conv2d(c3 + c4, width, kernel_size=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.spatial = ASA(width, self.n_attributes, attribute_activation="tanh",
                           normalization="sigmoid", scaled=False)
        self.channel = ACA(width, self.n_attributes, hidden=max(1, width // reduction),
                           attribute_activation="relu", scaled=False)
        self.projection = nn.Linear(width, self.embedding_dim)
        self._load_backbone(self.trunk)

    def encode(self, images: Tensor, with_logits: bool = True):
        _, f3 = self.trunk(images)
        f4 = F.interpolate(self.trunk.top(f3), size=f3.shape[-2:], mode="bilinear", align_corners=False)
        fused = self.fuse(torch.cat([f3, f4], dim=1))
        return (fused, self.spatial.image_key(fused)), None

    def head(self, state, attribute_ids: Tensor) -> ModelOutput:
        fused, key = state
        gate = self.spatial(key, attribute_ids)  # [B, K, h, w] in (0, 1)
        area = gate.shape[-2] * gate.shape[-1]
        v = self.channel(weighted_sum_pool(fused, gate) / area, attribute_ids)
        attention = gate / gate.sum(dim=(-2, -1), keepdim=True)
        return ModelOutput(embedding=F.normalize(self.projection(v), dim=-1), attention=attention)
