"""Conditional Cross-Attention network (Song et al., ICCV 2023), a reconstruction: a ViT whose last block lets condition tokens cross-attend to the image tokens."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from agman.errors import InvalidValueError
from agman.models.backbone import load_pretrained
from agman.models.base import AttributeModel
from agman.models.extension import AttributeParts
from agman.models.output import ModelOutput

#: The ViTs ``cca`` builds: torchvision's ``vit_b_16`` (ImageNet weights from a local file or the
#: torch.hub cache, like the ResNets) and a small ViT for the synthetic set's 64-px images.
VIT_BACKBONES = {
    "vit_b_16": dict(image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072),
    "vit_tiny_8": dict(image_size=64, patch_size=8, num_layers=4, num_heads=4, hidden_dim=128, mlp_dim=256),
}


class ViTTrunk(nn.Module):
    """A torchvision VisionTransformer without its classifier, run at any input size (the position
    embedding is interpolated bicubically to the patch grid), exposing the tokens before its last block.

    Parameter names equal torchvision's (``conv_proj``, ``class_token``, ``encoder.layers.encoder_layer_11``
    ...), so torchvision's ImageNet state dict loads as it is.
    """

    def __init__(self, arch: str = "vit_b_16"):
        super().__init__()
        if arch not in VIT_BACKBONES:
            raise InvalidValueError(f"unknown ViT backbone {arch!r}; choose one of {', '.join(VIT_BACKBONES)}")
        net = torchvision.models.VisionTransformer(**VIT_BACKBONES[arch])
        self.arch = arch
        self.patch_size, self.hidden_dim = net.patch_size, net.hidden_dim
        self.conv_proj, self.class_token, self.encoder = net.conv_proj, net.class_token, net.encoder

    @property
    def last(self) -> nn.Module:
        """The last encoder block (its weights serve the conditional cross-attention)."""
        return self.encoder.layers[-1]

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """``[1, 1 + h*w, D]``: the class token's embedding and the patch embeddings resized to ``grid``."""
        pos = self.encoder.pos_embedding
        side = math.isqrt(pos.shape[1] - 1)
        if (side, side) == grid:
            return pos
        patches = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([pos[:, :1], patches.flatten(2).transpose(1, 2)], dim=1)

    def pooled(self, images: Tensor) -> Tensor:
        """``[B, D]``: the class token after every block and the final LN (the plain ViT's feature)."""
        tokens, _ = self(images)
        return self.encoder.ln(self.last(tokens))[:, 0]

    def forward(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``images [B, 3, H, W] -> (tokens [B, 1 + h*w, D] before the last block, (h, w))``."""
        if images.shape[-1] % self.patch_size or images.shape[-2] % self.patch_size:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the ViT's patch size "
                             f"{self.patch_size}")
        x = self.conv_proj(images)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.encoder.dropout(x + self.position_embedding(grid))
        for block in self.encoder.layers[:-1]:
            x = block(x)
        return x, grid


class CCA(AttributeModel):
    """Conditional Cross-Attention network, rebuilt from the paper (no code was released).

    The ViT's first L-1 blocks run on the image alone (shared by every condition).  Each condition
    ``a`` has a learned token ``c_a`` (``nn.Embedding``).  The last block becomes the conditional
    cross-attention: its query is ``q = x_cls + c_a`` (the class token after L-1 blocks plus the
    condition token), its keys and values the image tokens; the block's own weights (LN, multi-head
    attention, MLP, residuals) do the work: ``z = q + MHA(LN1(q), LN1(X), LN1(X))``,
    ``z = z + MLP(LN2(z))``, then the encoder's final LN, a linear layer to ``embedding_dim`` and L2
    normalisation.  Each condition's query attends on its own, so conditions do not mix.
    ``attention`` is the query's attention over the patch tokens (heads averaged, the class token
    left out, renormalised to sum 1) on the ``h x w`` patch grid.
    """

    name = "cca"
    description = "Conditional Cross-Attention (Song et al. 2023, reconstruction): ViT, condition tokens cross-attend"
    #: ``vit`` picks the ViT (:data:`VIT_BACKBONES`); the configs' ResNet ``backbone`` key does not apply.
    DEFAULTS = {"vit": "vit_b_16", "embedding_dim": 1024}
    ATTRIBUTE_PARTS = AttributeParts(tables=("condition.weight",), adapters=())

    def __init__(self, n_attributes: int, pretrained: str | None = "none", **options):
        super().__init__(n_attributes, pretrained, **options)
        self.trunk = ViTTrunk(self.config["vit"])
        width = self.trunk.hidden_dim
        self.condition = nn.Embedding(self.n_attributes, width)
        nn.init.normal_(self.condition.weight, std=0.02)  # as ViT's class token and position embedding
        self.projection = nn.Linear(width, self.embedding_dim)
        self.pretrained_report = load_pretrained(self.trunk, self.pretrained_spec, self.trunk.arch)

    def encode(self, images: Tensor, with_logits: bool = True):
        tokens, grid = self.trunk(images)
        block = self.trunk.last
        return (tokens[:, 0], block.ln_1(tokens), grid), None

    def head(self, state, attribute_ids: Tensor) -> ModelOutput:
        cls, keys, grid = state
        block = self.trunk.last
        b, k = attribute_ids.shape
        query = cls[:, None] + self.condition(attribute_ids)  # [B, K, D]
        mixed, weights = block.self_attention(block.ln_1(query), keys, keys, need_weights=True,
                                              average_attn_weights=True)
        z = query + block.dropout(mixed)
        z = self.trunk.encoder.ln(z + block.mlp(block.ln_2(z)))
        patches = weights[..., 1:]  # [B, K, h*w]: the class token is no place in the image
        attention = (patches / patches.sum(dim=-1, keepdim=True).clamp_min(1e-12)).reshape(b, k, *grid)
        return ModelOutput(embedding=F.normalize(self.projection(z), dim=-1), attention=attention)
