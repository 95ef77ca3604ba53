"""ASENet_V2 baseline (Ma et al., AAAI 2020, "advanced version" of their code): layer3 -> ASA -> sum-pool -> ACA -> L2 norm."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from agman.models.attention import ACA, ASA, weighted_sum_pool
from agman.models.backbone import ResNetTrunk
from agman.models.base import AttributeModel
from agman.models.extension import AttributeParts
from agman.models.output import ModelOutput


class ASENetV2(AttributeModel):
    """ASENet_V2 as in ASEN's released code.

    ASA: ``tanh(BN(conv1x1 c3->c'))`` image key, attribute embedding -> FC -> tanh query, scaled dot
    product, spatial softmax; the c3-channel layer3 features are weighted and sum-pooled.  ACA:
    embedding -> FC -> ReLU, concatenated with the pooled vector -> FC(c3+c'->c') -> ReLU ->
    FC(c'->c3) -> sigmoid mask.  One attribute table is shared by ASA and ACA.  The output size is
    c3 (1024 on ResNet-50, the published setting); another ``embedding_dim`` adds a final FC, and so does
    ``output_fc`` at any size (later versions of the released code end with ``feature_fc``, 1024 -> 1024).
    """

    name = "asenet-v2"
    description = "ASENet_V2 (Ma et al. 2020): layer3, attribute-aware spatial + channel attention"
    DEFAULTS = {"backbone": "resnet50", "embedding_dim": None, "attention_dim": 512, "output_fc": False}
    ATTRIBUTE_PARTS = AttributeParts(tables=("asa.attribute.embedding.weight", "aca.attribute.embedding.weight"),
                                     adapters=("asa.attribute.fc.", "aca."))

    def __init__(self, n_attributes: int, pretrained: str | None = "none", **options):
        super().__init__(n_attributes, pretrained, **options)
        self.trunk = ResNetTrunk(self.config["backbone"], with_layer4=False)
        c3, width = self.trunk.channels["layer3"], self.config["attention_dim"]
        self.embedding_dim = self.config["embedding_dim"] = int(self.embedding_dim or c3)
        shared = nn.Embedding(self.n_attributes, width)
        self.asa = ASA(width, self.n_attributes, in_channels=c3, attribute_activation="tanh",
                       scaled=False, embedding=shared)
        self.aca = ACA(c3, self.n_attributes, attribute_dim=width, hidden=width,
                       attribute_activation="relu", scaled=False, embedding=shared)
        final_fc = self.embedding_dim != c3 or self.config["output_fc"]
        self.projection = nn.Linear(c3, self.embedding_dim) if final_fc else None
        self._load_backbone(self.trunk)

    def encode(self, images: Tensor, with_logits: bool = True):
        _, f3 = self.trunk(images)
        return (f3, self.asa.image_key(f3)), None

    def head(self, state, attribute_ids: Tensor) -> ModelOutput:
        f3, key = state
        attention = self.asa(key, attribute_ids)
        v = self.aca(weighted_sum_pool(f3, attention), attribute_ids)
        if self.projection is not None:
            v = self.projection(v)
        return ModelOutput(embedding=F.normalize(v, dim=-1), attention=attention)
