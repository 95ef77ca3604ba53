"""Convolutions on small feature maps as one matrix product: the same result, several times faster on CPU.

At the synthetic set's 64 px, ResNet's layer4 sees 2x2 maps (4x4 in its first block).  oneDNN's
convolution spends most of its time there on the weights, not the pixels: measured on the
project's 2-core CPU, ResNet-18's layer4 was over half of a training step's convolution time.
A convolution whose input has ``P_in`` positions and output ``P_out`` is a linear map from
``C_in * P_in`` to ``C_out * P_out`` numbers; written as that matrix it is one GEMM, which the
CPU's matrix units run at full speed.  Every entry of the matrix is either one weight of the
kernel or zero, so the product computes exactly the convolution's sums (in another order: the
float rounding differs, as between two convolution algorithms), and autograd gives the kernel's
gradient through the same mapping.  Maps larger than ``max_positions`` take the ordinary kernel.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_POSITIONS = 4  # 2x2 maps: layer4 at 64 px (a 4x4 input to layer4's strided first conv is 16)


@lru_cache(maxsize=64)  # one per (map, kernel, stride, padding): built once, not in every forward
def _tap_map(h: int, w: int, k: int, s: int, p: int, device: torch.device) -> tuple[Tensor, int, int]:
    """``[k*k, P_out*P_in]`` 0/1 matrix: which tap of a ``k``x``k`` kernel (stride ``s``, padding ``p``)
    links each output position to each input position (none for padding), and the output size."""
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out_pos, in_pos = torch.arange(oh * ow, device=device)[:, None], torch.arange(h * w, device=device)[None, :]
    kh = in_pos // w - (out_pos // ow) * s + p
    kw = in_pos % w - (out_pos % ow) * s + p
    inside = (kh >= 0) & (kh < k) & (kw >= 0) & (kw < k)
    tap = torch.where(inside, kh * k + kw, torch.full_like(kh, k * k))  # k*k: no tap (padding)
    return F.one_hot(tap, k * k + 1)[..., : k * k].permute(2, 0, 1).reshape(k * k, -1), oh, ow


class SmallMapConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same state dict) that runs as one matrix product when its
    input has at most ``max_positions`` positions."""

    max_positions: int = MAX_POSITIONS

    def _as_matrix_product(self, x: Tensor) -> bool:
        square = self.kernel_size[0] == self.kernel_size[1] and self.stride[0] == self.stride[1]
        return (x.shape[-2] * x.shape[-1] <= self.max_positions and square and self.groups == 1
                and self.dilation == (1, 1) and self.padding_mode == "zeros" and isinstance(self.padding, tuple)
                and self.padding[0] == self.padding[1])

    def forward(self, x: Tensor) -> Tensor:
        if not self._as_matrix_product(x):
            return super().forward(x)
        n, (h, w) = x.shape[0], x.shape[-2:]
        out_ch, in_ch = self.weight.shape[:2]
        taps, oh, ow = _tap_map(h, w, self.kernel_size[0], self.stride[0], self.padding[0], x.device)
        weight = self.weight.reshape(out_ch * in_ch, -1) @ taps.to(self.weight.dtype)  # [O*I, P_out*P_in]
        weight = weight.reshape(out_ch, in_ch, oh * ow, h * w).transpose(1, 2).reshape(out_ch * oh * ow, -1)
        y = F.linear(x.reshape(n, in_ch * h * w), weight)  # autocast treats it as the conv: bf16 when on
        if self.bias is not None:
            y = y + self.bias.repeat_interleave(oh * ow).to(y.dtype)
        y = y.reshape(n, out_ch, oh, ow)
        return y.contiguous(memory_format=torch.channels_last) if _channels_last(x) else y


def _channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def matmul_on_small_maps(module: nn.Module, max_positions: int = MAX_POSITIONS) -> int:
    """Make every plain ``nn.Conv2d`` in ``module`` a :class:`SmallMapConv2d` (in place: the same
    parameter tensors); returns how many.  ``max_positions``: the largest input map (H*W) run as a
    matrix product."""
    count = 0
    for conv in module.modules():
        if type(conv) is nn.Conv2d:
            conv.__class__ = SmallMapConv2d
            count += 1
        if isinstance(conv, SmallMapConv2d):
            conv.max_positions = max_positions
    return count
