"""ASEN++ (Dong, Ma et al., IEEE TIP 2021): ASEN's global branch plus a local branch on the region it attends to.

Read in the authors' code (Maryeon/asenpp ``modules/model/model.py``, ``modules/data/transforms/
transforms.py``, ``modules/engine/evaluation.py``): each branch is a ResNet up to layer3 followed by
``AttnEmbedding`` — ASA without BatchNorm (``tanh(Conv1x1 f)`` key, ``tanh(FC(e(a)))`` query, scaled
dot product, spatial softmax, weighted sum-pool), ACA (``σ(FC(ReLU(FC([v, ReLU(FC(e(a)))]))))``,
hidden c3 / ``REDUCTION_RATE``) and a final FC to ``EMBED_SIZE``.  One attribute table serves both
branches.  The local branch re-encodes a square crop around the global map's region above
``INPUT.THRESHOLD``; the retrieval vector is ``[√β·ĝ, √(1-β)·l̂]``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agman.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from agman.errors import InvalidValueError
from agman.models.attention import ACA, ASA, weighted_sum_pool
from agman.models.backbone import ResNetTrunk, load_pretrained
from agman.models.base import AttributeModel
from agman.models.output import ModelOutput


class ASENBranch(nn.Module):
    """One ASEN++ branch (``AttnEmbedding`` over a layer3 trunk): ``(images, ids [B,K]) -> ([B,K,D], map [B,K,h,w])``."""

    def __init__(self, backbone: str, n_attributes: int, attention_dim: int, embedding_dim: int,
                 channel_reduction: int, table: nn.Embedding):
        super().__init__()
        self.trunk = ResNetTrunk(backbone, with_layer4=False)
        c3 = self.trunk.channels["layer3"]
        if channel_reduction < 1 or c3 // channel_reduction < 1:
            raise InvalidValueError(f"channel_reduction {channel_reduction} is invalid for {c3} channels")
        self.asa = ASA(attention_dim, n_attributes, in_channels=c3, attribute_activation="tanh", scaled=False,
                       embedding=table, key_norm=False)
        self.aca = ACA(c3, n_attributes, attribute_dim=table.embedding_dim, hidden=c3 // channel_reduction,
                       attribute_activation="relu", scaled=False, embedding=table)
        self.fc = nn.Linear(c3, embedding_dim)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The attribute-independent part: layer3 features and ASA's image key."""
        _, f3 = self.trunk(images)
        return f3, self.asa.image_key(f3)

    def head(self, state: tuple[Tensor, Tensor], attribute_ids: Tensor) -> tuple[Tensor, Tensor]:
        f3, key = state
        attention = self.asa(key, attribute_ids)
        return self.fc(self.aca(weighted_sum_pool(f3, attention), attribute_ids)), attention


def attended_box(attention: Tensor, size: tuple[int, int], threshold: float) -> tuple[int, int, int] | None:
    """The square ``(x, y, d)`` (pixels of an input of ``size`` = (H, W)) that the released
    ``LocalTransform`` crops for one map ``[h, w]``: bilinear resize to the input, min-max
    normalisation, 8-bit truncation, binarisation above ``255·threshold``, bounding box, a square of
    the longer side around its centre pushed inside the image.  None when the map is flat (the
    released code divides by zero there)."""
    height, width = size
    side = min(height, width)  # the released map is resized to GLOBAL_SIZE x GLOBAL_SIZE (a square input)
    m = F.interpolate(attention[None, None].float(), size=(side, side), mode="bilinear", align_corners=False)[0, 0]
    low, high = m.min(), m.max()
    if not bool(high > low):
        return None
    levels = torch.floor((m - low) / (high - low) * 255)
    inside = levels > 255 * threshold
    rows, cols = torch.nonzero(inside.any(dim=1)).flatten(), torch.nonzero(inside.any(dim=0)).flatten()
    if rows.numel() == 0:
        return None
    x, y = int(cols[0]), int(rows[0])
    w, h = int(cols[-1]) - x + 1, int(rows[-1]) - y + 1
    d = max(w, h)
    xc, yc = x + w // 2, y + h // 2
    x = side - d if xc + d // 2 > side else max(0, xc - d // 2)
    y = side - d if yc + d // 2 > side else max(0, yc - d // 2)
    # the released code maps the box back to the image it crops from: x / S * short_edge (+ centring)
    x, y, d = int(x / side * side), int(y / side * side), int(d / side * side)
    return x + (width - side) // 2, y + (height - side) // 2, d


def crop_region(image: Tensor, box: tuple[int, int, int] | None, out_size: int) -> Tensor:
    """``image [3,H,W]`` (ImageNet-normalised) cropped to ``box`` and resized to ``out_size``² with the
    antialiased bilinear filter of PIL's resize; outside the image is black, as PIL's crop pads it."""
    _, height, width = image.shape
    x, y, d = box if box is not None else (0, 0, min(height, width))
    patch = image[:, max(y, 0):y + d, max(x, 0):x + d]
    pad = (max(-x, 0), max(x + d - width, 0), max(-y, 0), max(y + d - height, 0))
    if any(pad):
        black = image.new_tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(3, 1, 1)
        patch = F.pad(patch - black, pad) + black
    return F.interpolate(patch[None], size=(out_size, out_size), mode="bilinear", align_corners=False,
                         antialias=True)[0]


class ASENPlusPlus(AttributeModel):
    """ASEN++ as the authors' code builds it.

    ``local=False`` is stage 1 (``s1.yaml``: the global branch alone; the embedding is ``ĝ``);
    ``local=True`` adds the local branch (``s2.yaml``, the released model) and the embedding is
    ``[√β·ĝ, √(1-β)·l̂]`` (``beta``, ``SOLVER.BETA`` = 0.6), of size 2·``embedding_dim``; ``branches``
    carries ``ĝ`` and ``l̂`` for the stage-2 losses.  The local input is the input image cropped to
    :func:`attended_box` (``threshold``: ``INPUT.THRESHOLD``, 0.1 in every s2.yaml) and resized to
    ``local_size`` (``INPUT.LOCAL_SIZE``); the crop is not differentiated through.
    """

    name = "asenpp"
    description = "ASEN++ (Dong et al. 2021): ASEN global branch + local branch on the attended region"
    DEFAULTS = {"backbone": "resnet50", "local_backbone": "resnet34", "embedding_dim": 1024, "attention_dim": 512,
                "local_attention_dim": 256, "attribute_dim": 512, "channel_reduction": 2, "local": True,
                "local_size": 112, "threshold": 0.1, "beta": 0.6}
    ATTRIBUTE_PARTS = None  # not extensible: the local crop of a new attribute depends on the global map

    def __init__(self, n_attributes: int, pretrained: str | None = "none", **options):
        super().__init__(n_attributes, pretrained, **options)
        cfg = self.config
        cfg["threshold"], cfg["beta"] = float(cfg["threshold"]), float(cfg["beta"])
        if not 0.0 <= cfg["threshold"] < 1.0:
            raise InvalidValueError(f"model 'asenpp': threshold must lie in [0, 1), got {cfg['threshold']}")
        if not 0.0 < cfg["beta"] < 1.0:
            raise InvalidValueError(f"model 'asenpp': beta must lie in (0, 1), got {cfg['beta']}")
        if cfg["local_size"] < 16:
            raise InvalidValueError(f"model 'asenpp': local_size must be at least 16, got {cfg['local_size']}")
        table = nn.Embedding(self.n_attributes, cfg["attribute_dim"])  # shared by both branches, as released
        d = cfg["embedding_dim"]
        self.global_branch = ASENBranch(cfg["backbone"], self.n_attributes, cfg["attention_dim"], d,
                                        cfg["channel_reduction"], table)
        self.local_branch = ASENBranch(cfg["local_backbone"], self.n_attributes, cfg["local_attention_dim"], d,
                                       cfg["channel_reduction"], table) if cfg["local"] else None
        self.embedding_dim = 2 * d if cfg["local"] else d
        self._load_backbone(self.global_branch.trunk)
        local_arch = cfg["local_backbone"]
        if self.local_branch is not None and (str(pretrained).lower() == "imagenet" or local_arch == cfg["backbone"]):
            # ImageNet weights of its own architecture (as released); a weight file only when it is the same one
            load_pretrained(self.local_branch.trunk, self.pretrained_spec, local_arch)

    @property
    def trunk(self) -> ResNetTrunk:
        """The global branch's backbone (the one every image passes once)."""
        return self.global_branch.trunk

    def slow_parameters(self) -> list[nn.Parameter]:
        """What the released stage 2 trains at ``BASE_LR_SLOW``: the global branch and the attribute table."""
        return list(self.global_branch.parameters()) if self.local_branch is not None else []

    def encode(self, images: Tensor, with_logits: bool = True):
        return (images, self.global_branch.encode(images)), None

    def head(self, state, attribute_ids: Tensor) -> ModelOutput:
        images, global_state = state
        g, attention = self.global_branch.head(global_state, attribute_ids)
        g = F.normalize(g, dim=-1)
        if self.local_branch is None:
            return ModelOutput(embedding=g, attention=attention)
        b, k = attribute_ids.shape
        crops = self.local_crops(images, attention)
        local_ids = attribute_ids.reshape(b * k, 1)
        l_vec, _ = self.local_branch.head(self.local_branch.encode(crops), local_ids)
        l_vec = F.normalize(l_vec.view(b, k, -1), dim=-1)
        beta = self.config["beta"]
        fused = torch.cat([math.sqrt(beta) * g, math.sqrt(1.0 - beta) * l_vec], dim=-1)
        return ModelOutput(embedding=fused, attention=attention, branches=torch.stack([g, l_vec], dim=2))

    @torch.no_grad()
    def local_crops(self, images: Tensor, attention: Tensor) -> Tensor:
        """``images [B,3,H,W]``, global maps ``[B,K,h,w]`` -> the local branch's inputs ``[B·K,3,L,L]``."""
        size, cfg = tuple(images.shape[-2:]), self.config
        maps = attention.detach().float().cpu()
        crops = [crop_region(images[i], attended_box(maps[i, j], size, cfg["threshold"]), cfg["local_size"])
                 for i in range(maps.shape[0]) for j in range(maps.shape[1])]
        return torch.stack(crops)
