"""AG-MAN (Xiao & Yamasaki, Fig. 1): hierarchical features (§2.2), classification branch (Eq. 7), AGA (§2.3),
and the released-code preset."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agman.models.attention import ACA, ASA, CA, SA, AttributeMasks, weighted_sum_pool
from agman.models.backbone import HierarchicalFusion, ResNetTrunk
from agman.models.base import AttributeModel
from agman.models.extension import AttributeParts
from agman.models.output import ModelOutput

log = logging.getLogger(__name__)


AGA_OPTIONS = ("asa", "sa", "aca", "ca", "sa_kernel", "ca_reduction", "aca_combine", "input_scale",
               "attribute_masks", "mask_init", "shared_attribute_embedding")


class AGA(nn.Module):
    """Attribute-guided attention (§2.3, Fig. 3): 1x1 reduction -> ASA -> SA -> sum-pool -> ACA -> CA.

    Each part can be switched off (Tables 7–8).  ``input_scale`` (a learned scalar on the input),
    ``attribute_masks`` (CSN masks after ACA) and ``shared_attribute_embedding`` (one attribute
    table for ASA and ACA) reproduce the released code.
    """

    def __init__(self, in_channels: int, channels: int, n_attributes: int, *, asa: bool, sa: bool, aca: bool,
                 ca: bool, sa_kernel: int, ca_reduction: int, aca_combine: str, input_scale: bool,
                 attribute_masks: bool, mask_init: str, shared_attribute_embedding: bool):
        super().__init__()
        self.input_scale = nn.Parameter(torch.ones(1)) if input_scale else None
        self.reduce = nn.Conv2d(in_channels, channels, kernel_size=1)
        shared = nn.Embedding(n_attributes, channels) if shared_attribute_embedding else None
        self.asa = ASA(channels, n_attributes, embedding=shared) if asa else None
        self.sa = SA(sa_kernel) if sa else None
        self.aca = ACA(channels, n_attributes, combine=aca_combine, embedding=shared) if aca else None
        self.ca = CA(channels, ca_reduction) if ca else None
        self.masks = AttributeMasks(n_attributes, channels, mask_init) if attribute_masks else None

    def prepare(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        """The attribute-independent part, once per image: reduced feature ``f`` and ASA's key ``p(I)``."""
        if self.input_scale is not None:
            features = features * self.input_scale
        x = self.reduce(features)
        return x, (self.asa.image_key(x) if self.asa is not None else None)

    def forward(self, state: tuple[Tensor, Tensor | None], attribute_ids: Tensor) -> ModelOutput:
        """``(f [B,c',h,w], p(I)), attribute_ids [B,K] -> ModelOutput`` with the c'-vector as
        ``embedding [B,K,c']`` (not normalised)."""
        x, key = state
        k = attribute_ids.shape[1]
        attention = None
        if self.asa is not None:
            attention = self.asa(key, attribute_ids)  # [B, K, h, w], sums to 1
            weights = attention * self.asa.scale  # Eq. 3: f * W1 * s(.)
            if self.sa is not None:
                v = self.sa(x[:, None] * weights[:, :, None]).sum(dim=(-2, -1))
            else:
                v = weighted_sum_pool(x, weights)
        else:
            xs = self.sa(x) if self.sa is not None else x
            v = xs.sum(dim=(-2, -1))[:, None].expand(-1, k, -1)
        if self.aca is not None:
            v = self.aca(v, attribute_ids)
        if self.ca is not None:
            v = self.ca(v)
        masks = general = None
        if self.masks is not None:
            general, masks = v, self.masks(attribute_ids)
            v = v * masks
        return ModelOutput(embedding=v, attention=attention, masks=masks, general_embedding=general)


class AGMAN(AttributeModel):
    """AG-MAN as the paper describes it; every ablation of Tables 5–8 is a switch.

    ``hierarchical``: AGA sees ``[F3, F3 + proj(F2)]`` (else ``F3``).  ``classification``: ``F23``
    (or ``F3``) -> layer4 -> average pool -> FC over attributes (Eq. 7 logits).  ``asa``, ``sa``,
    ``aca``, ``ca``: the AGA parts.  ``sa_kernel`` default 7 (released code and CBAM; the paper's
    text says 1).  ``aca_combine`` default ``'concat'`` (Eq. 6 and the released code; the prose
    says addition).  The c'-vector is projected to ``embedding_dim`` when they differ, then
    L2-normalised.
    """

    name = "agman"
    description = "AG-MAN (paper): F2+F3 fusion, attribute classifier, AGA = ASA>SA>ACA>CA, FC to D"
    DEFAULTS = {
        "backbone": "resnet50", "embedding_dim": 1024, "attention_dim": 512,
        "hierarchical": True, "classification": True,
        "asa": True, "sa": True, "aca": True, "ca": True,
        "sa_kernel": 7, "ca_reduction": 16, "aca_combine": "concat",
        "input_scale": False, "attribute_masks": False, "mask_init": "disjoint", "shared_attribute_embedding": False,
        "fusion_init": "default",
    }
    ATTRIBUTE_PARTS = AttributeParts(
        tables=("aga.asa.attribute.embedding.weight", "aga.aca.attribute.embedding.weight", "aga.masks.weight"),
        adapters=("aga.asa.attribute.fc.", "aga.asa.scale", "aga.aca."),
        not_embedding=("classifier.", "trunk.layer4."))

    def __init__(self, n_attributes: int, pretrained: str | None = "none", **options):
        super().__init__(n_attributes, pretrained, **options)
        cfg = self.config
        self.trunk = ResNetTrunk(cfg["backbone"], with_layer4=cfg["classification"])
        c2, c3, c4 = (self.trunk.channels[k] for k in ("layer2", "layer3", "layer4"))
        self.fusion = HierarchicalFusion(c2, c3, cfg["fusion_init"]) if cfg["hierarchical"] else None
        self.classifier = nn.Linear(c4, self.n_attributes) if cfg["classification"] else None
        aga_options = {k: cfg[k] for k in AGA_OPTIONS}
        in_channels = 2 * c3 if cfg["hierarchical"] else c3
        self.aga = AGA(in_channels, cfg["attention_dim"], self.n_attributes, **aga_options)
        c, d = cfg["attention_dim"], cfg["embedding_dim"]
        self.projection = nn.Linear(c, d) if d != c else None
        self._load_backbone(self.trunk)

    def encode(self, images: Tensor, with_logits: bool = True):
        f2, f3 = self.trunk(images)
        if self.fusion is not None:
            f23 = self.fusion(f2, f3)
            features, branch_input = torch.cat([f3, f23], dim=1), f23
        else:
            features, branch_input = f3, f3
        logits = None
        if with_logits and self.classifier is not None:
            logits = self.classifier(self.trunk.top(branch_input).mean(dim=(-2, -1)))
        return self.aga.prepare(features), logits

    def head(self, state, attribute_ids: Tensor) -> ModelOutput:
        out = self.aga(state, attribute_ids)
        v = self.projection(out.embedding) if self.projection is not None else out.embedding
        out.embedding = F.normalize(v, dim=-1)
        return out


class AGMANOfficial(AGMAN):
    """AG-MAN as the authors' released code builds it (github.com/Dr-LingXiao/AG-MAN, model.py).

    Differences from the paper: no CA (defined there, never called) but CSN masks after ACA
    (0.1 with a disjoint block of 1s, ReLU); a learned scalar on the 2c3-channel input; one
    attribute embedding shared by ASA and ACA; SA 7x7; the hierarchical 1x1 conv drawn He-normal
    like the released ResNet's convs; output size c' whatever ``embedding_dim`` asks.  Unlike the
    released code, any input size works (no 14x14 grid).
    """

    name = "agman-official"
    description = "AG-MAN as released: CSN masks instead of CA, input scalar, shared attr table, c'-sized output"
    DEFAULTS = {
        **AGMAN.DEFAULTS, "embedding_dim": 512, "ca": False,
        "input_scale": True, "attribute_masks": True, "shared_attribute_embedding": True, "fusion_init": "released",
    }

    def __init__(self, n_attributes: int, pretrained: str | None = "none", **options):
        width = options.get("attention_dim", self.DEFAULTS["attention_dim"])
        if options.get("embedding_dim", width) != width:
            log.warning("agman-official outputs c'=%d like the released code; embedding_dim=%s ignored",
                        width, options["embedding_dim"])
        options["embedding_dim"] = width
        super().__init__(n_attributes, pretrained, **options)


def released_code_layers(n_attributes: int = 8) -> dict[str, int]:
    """Parameter count of each layer of the released AG-MAN (Tripletnet(AG_MAN(resnet50(n)))),
    read from its model.py/resnet.py layer list — independent of this package's modules."""
    n, c = n_attributes, 512
    return {
        "ResNet-50 conv1..layer4 (torchvision 25,557,032 minus fc 2,049,000)": 23_508_032,
        "resnet.conv1_1: Conv2d(512, 1024, 1) + bias": 512 * 1024 + 1024,
        "resnet.fc_embed: Linear(2048, n)": 2048 * n + n,
        "w: input scalar": 1,
        "conv1: Conv2d(2048, 512, 1) + bias": 2048 * c + c,
        "img_bn1: BatchNorm2d(512)": 2 * c,
        "attr_embedding: Embedding(n, 512)": n * c,
        "attr_transform1: Linear(512, 512)": c * c + c,
        "w1": 1,
        "sa.conv1: Conv2d(2, 1, 7, bias=False)": 2 * 7 * 7,
        "attr_transform2: Linear(512, 512)": c * c + c,
        "fc1: Linear(1024, 512)": 2 * c * c + c,
        "fc2: Linear(512, 512)": c * c + c,
        "w2": 1,
        "masks: Embedding(n, 512)": n * c,
    }


def released_code_parameter_count(n_attributes: int = 8) -> int:
    """What the released mainFashionAI.py logs as 'Number of params' (8 attributes: 26,420,909)."""
    return sum(released_code_layers(n_attributes).values())
