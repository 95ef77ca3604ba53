"""Convolutions on small maps as one matrix product (issue #25): the convolution's result and gradients."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from agman.models.small_maps import SmallMapConv2d, matmul_on_small_maps

CASES = [  # out, in, kernel, stride, padding, map side, bias
    (16, 8, 3, 1, 1, 2, False),  # layer4's 3x3 on 2x2
    (16, 8, 3, 2, 1, 4, False),  # layer4's first conv: 4x4 -> 2x2 (16 positions)
    (16, 8, 1, 2, 0, 4, False),  # the downsample shortcut
    (6, 4, 7, 2, 3, 2, True),  # a kernel larger than the map, with bias
    (5, 3, 3, 1, 0, 3, True),  # no padding: 3x3 -> 1x1
]


@pytest.mark.parametrize("out_ch,in_ch,k,s,p,side,bias", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_matrix_product_is_the_convolution_forward_and_backward(out_ch, in_ch, k, s, p, side, bias, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(in_ch, out_ch, k, s, p, bias=bias)
    fast = SmallMapConv2d(in_ch, out_ch, k, s, p, bias=bias)
    fast.load_state_dict(conv.state_dict())
    fast.max_positions = side * side
    x = torch.randn(5, in_ch, side, side)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    assert fast._as_matrix_product(x)
    want, got = conv(x), fast(x)
    assert got.shape == want.shape
    if got.shape[-2:].numel() > 1:  # a 1x1 map is contiguous in both layouts
        assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, [x, *conv.parameters()], g)
    got_grads = torch.autograd.grad(got, [x, *fast.parameters()], g)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_larger_maps_take_the_ordinary_kernel_and_bf16_follows_autocast():
    conv = SmallMapConv2d(8, 8, 3, 1, 1)
    assert not conv._as_matrix_product(torch.randn(1, 8, 3, 3))  # 9 positions > 4
    x = torch.randn(4, 8, 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = conv(x)
        want = nn.Conv2d.forward(conv, x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_a_resnet_keeps_its_parameters_and_output():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = net(x)
    keys = list(net.state_dict())
    assert matmul_on_small_maps(net) == sum(isinstance(m, nn.Conv2d) for m in net.modules())
    used = []
    net.layer4.register_forward_hook(lambda m, i, o: used.append(tuple(o.shape)))
    with torch.no_grad():
        got = net(x)
    assert list(net.state_dict()) == keys and used == [(2, 512, 2, 2)]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
