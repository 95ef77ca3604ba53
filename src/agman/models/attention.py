"""The attention parts of AGA (§2.3, Fig. 3): ASA (Eq. 1–3), SA (Eq. 4), ACA (Eq. 5–6), CA (Fig. 3d), and CSN masks.

Every part takes attribute ids shaped ``[B, K]`` (K attributes for each of B images) so that one
image pass can serve all attributes at once; image tensors stay ``[B, ...]`` and are broadcast.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agman.errors import InvalidValueError

ATTRIBUTE_ACTIVATIONS = ("gate", "tanh", "relu")


class AttributeVector(nn.Module):
    """Attribute id -> embedding -> FC -> activation; ``gate`` is Eq. 2/5's ``σ(W a) * W a``."""

    def __init__(self, n_attributes: int, dim: int, activation: str = "gate", embedding: nn.Embedding | None = None):
        super().__init__()
        if activation not in ATTRIBUTE_ACTIVATIONS:
            raise InvalidValueError(f"attribute activation must be one of {ATTRIBUTE_ACTIVATIONS}, got {activation!r}")
        # A shared table (the released code shares one between ASA and ACA) is used, not owned.
        self.embedding = embedding if embedding is not None else nn.Embedding(n_attributes, dim)
        self.fc = nn.Linear(self.embedding.embedding_dim, dim)
        self.activation = activation

    def forward(self, attribute_ids: Tensor) -> Tensor:
        """``[...] long -> [..., dim]``."""
        a = self.fc(self.embedding(attribute_ids))
        if self.activation == "gate":
            return torch.sigmoid(a) * a
        return torch.tanh(a) if self.activation == "tanh" else F.relu(a)


class ASA(nn.Module):
    """Attribute-guided spatial attention, Eq. 1–3: ``s(<tanh(BN(Conv1x1 f)), p(a)> / √c')`` over space.

    ``image_key`` computes Eq. 1 once per image; ``forward`` returns the map ``[B, K, h, w]``: a softmax over all positions (sums to 1), or with
    ``normalization='sigmoid'`` an independent gate per position (AttnFashion).  ``in_channels``
    given adds the 1x1 conv of Eq. 1 (ASENet_V2); AG-MAN reduces its input outside ASA because
    the reduced feature is also the attended value.  ``scale`` is Eq. 3's learned weight W1,
    applied by the caller to the attended feature.  ``key_norm=False`` drops Eq. 1's BatchNorm (ASEN++).
    """

    def __init__(
        self,
        channels: int,
        n_attributes: int,
        in_channels: int | None = None,
        attribute_activation: str = "gate",
        normalization: str = "softmax",
        scaled: bool = True,
        embedding: nn.Embedding | None = None,
        key_norm: bool = True,
    ):
        super().__init__()
        if normalization not in ("softmax", "sigmoid"):
            raise InvalidValueError(f"ASA normalization must be 'softmax' or 'sigmoid', got {normalization!r}")
        self.project = nn.Conv2d(in_channels, channels, kernel_size=1) if in_channels else None
        # ASEN++'s AttnEmbedding has no BatchNorm between the 1x1 conv and tanh (key_norm=False)
        self.norm = nn.BatchNorm2d(channels) if key_norm else None
        self.attribute = AttributeVector(n_attributes, channels, attribute_activation, embedding)
        self.scale = nn.Parameter(torch.ones(1)) if scaled else None
        self.normalization = normalization

    def image_key(self, features: Tensor) -> Tensor:
        """Eq. 1's attribute-independent ``p(I)``: computed once per image."""
        x = self.project(features) if self.project is not None else features
        return torch.tanh(self.norm(x) if self.norm is not None else x)

    def forward(self, image_key: Tensor, attribute_ids: Tensor) -> Tensor:
        """``image_key [B,c',h,w]`` (from :meth:`image_key`), ``attribute_ids [B,K] -> map [B,K,h,w]``."""
        key = image_key
        query = self.attribute(attribute_ids)  # [B, K, c']
        logits = torch.einsum("bchw,bkc->bkhw", key, query) / math.sqrt(key.shape[1])
        if self.normalization == "sigmoid":
            return torch.sigmoid(logits)
        b, k, h, w = logits.shape
        return logits.flatten(2).softmax(dim=-1).view(b, k, h, w)


def weighted_sum_pool(features: Tensor, weights: Tensor) -> Tensor:
    """Sum-pool ``features [B,C,h,w]`` under per-attribute spatial ``weights [B,K,h,w]`` -> ``[B,K,C]``."""
    return torch.einsum("bchw,bkhw->bkc", features, weights)


class SA(nn.Module):
    """Spatial attention, Eq. 4: ``f * σ(Conv_k([mean_c f, max_c f]))`` (paper k=1, released code k=7)."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise InvalidValueError(f"SA kernel size must be odd and positive, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, features: Tensor) -> Tensor:
        """``[..., C, h, w] -> same shape`` (leading dims are flattened for the conv)."""
        lead, (c, h, w) = features.shape[:-3], features.shape[-3:]
        x = features.reshape(-1, c, h, w)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return (x * torch.sigmoid(self.conv(pooled))).view(*lead, c, h, w)


class ACA(nn.Module):
    """Attribute-guided channel attention, Eq. 5–6: ``f * W2 * σ(FC(ReLU(FC([f, q(a)]))))``.

    ``combine='concat'`` follows Eq. 6 and the released code; ``'add'`` the paper's prose
    (element-wise ``f + q(a)``, which needs ``attribute_dim == channels``).  ``scaled`` adds the
    learned weight W2 (Eq. 6b).  ASENet_V2 uses it with a ReLU attribute vector and no W2.
    """

    def __init__(
        self,
        channels: int,
        n_attributes: int,
        attribute_dim: int | None = None,
        hidden: int | None = None,
        combine: str = "concat",
        attribute_activation: str = "gate",
        scaled: bool = True,
        embedding: nn.Embedding | None = None,
    ):
        super().__init__()
        attribute_dim = attribute_dim or channels
        hidden = hidden or channels
        if combine not in ("concat", "add"):
            raise InvalidValueError(f"ACA combine must be 'concat' or 'add', got {combine!r}")
        if combine == "add" and attribute_dim != channels:
            raise InvalidValueError(f"ACA combine='add' needs attribute_dim == channels ({attribute_dim} != {channels})")
        self.attribute = AttributeVector(n_attributes, attribute_dim, attribute_activation, embedding)
        self.fc1 = nn.Linear(channels + attribute_dim if combine == "concat" else channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.scale = nn.Parameter(torch.ones(1)) if scaled else None
        self.combine = combine

    def forward(self, features: Tensor, attribute_ids: Tensor) -> Tensor:
        """``features [B,K,C], attribute_ids [B,K] -> [B,K,C]``."""
        q = self.attribute(attribute_ids)
        joint = torch.cat([features, q], dim=-1) if self.combine == "concat" else features + q
        mask = torch.sigmoid(self.fc2(F.relu(self.fc1(joint))))
        return features * mask if self.scale is None else features * self.scale * mask


class CA(nn.Module):
    """Channel attention (Fig. 3d): ``f * σ(W_up(LeakyReLU(W_down f)))``, bias-free, reduction r (released definition)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        if reduction < 1 or channels // reduction < 1:
            raise InvalidValueError(f"CA reduction {reduction} is invalid for {channels} channels")
        self.down = nn.Linear(channels, channels // reduction, bias=False)
        self.up = nn.Linear(channels // reduction, channels, bias=False)

    def forward(self, features: Tensor) -> Tensor:
        """``[..., C] -> [..., C]`` (the input is already pooled, so SE's squeeze is the identity)."""
        return features * torch.sigmoid(self.up(F.leaky_relu(self.down(features))))


MASK_INITS = ("normal", "disjoint", "fixed")


class AttributeMasks(nn.Module):
    """CSN's per-attribute masks (Veit et al. 2017), also the released AG-MAN code's stand-in for CA.

    ``init``: ``'normal'`` N(0.9, 0.7), learned; ``'disjoint'`` 0.1 with a block of 1s per
    attribute, learned; ``'fixed'`` disjoint binary blocks, not learned.  Learned masks pass
    through ReLU.
    """

    def __init__(self, n_attributes: int, dim: int, init: str = "normal"):
        super().__init__()
        if init not in MASK_INITS:
            raise InvalidValueError(f"mask init must be one of {MASK_INITS}, got {init!r}")
        block = dim // n_attributes
        if init == "normal":
            table = torch.empty(n_attributes, dim).normal_(0.9, 0.7)
        else:
            table = torch.full((n_attributes, dim), 0.1 if init == "disjoint" else 0.0)
            for i in range(n_attributes):
                table[i, i * block:(i + 1) * block] = 1.0
        self.learned = init != "fixed"
        if self.learned:
            self.weight = nn.Parameter(table)
        else:
            self.register_buffer("weight", table)

    def forward(self, attribute_ids: Tensor) -> Tensor:
        """``[...] long -> [..., dim]`` mask rows (ReLU'd when learned)."""
        rows = F.embedding(attribute_ids, self.weight)
        return F.relu(rows) if self.learned else rows
