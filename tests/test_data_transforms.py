"""The crop of §3.1 as the released code does it: Resize(224) (short side) + CenterCrop(224), flip for training."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from agman.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform

SHAPES = {"portrait": (300, 533), "landscape": (640, 361), "square": (250, 250), "small portrait": (150, 190)}


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """Noise over gradients, so any one-pixel shift or different interpolation changes the tensor."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1).astype(np.int32)
    arr = np.clip(arr + rng.integers(-40, 40, arr.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def released(train: bool) -> T.Compose:
    """mainFashionAI.py's (and ASEN's) transforms, written out with torchvision."""
    steps = [T.Resize(224), T.CenterCrop(224)]
    if train:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


@pytest.mark.parametrize("shape", list(SHAPES))
def test_evaluation_transform_is_resize_224_then_center_crop_224(shape):
    image = picture(*SHAPES[shape])
    ours = build_transform(224, train=False)(image)  # crop_ratio defaults to 1.0
    assert ours.shape == (3, 224, 224)
    assert torch.equal(ours, released(train=False)(image))
    assert torch.equal(build_transform(224, train=False, crop_ratio=1.0)(image), ours)


@pytest.mark.parametrize("shape", ["portrait", "landscape"])
def test_training_transform_is_the_released_one_flip_included(shape):
    image = picture(*SHAPES[shape], seed=1)
    ours, theirs = build_transform(224, train=True), released(train=True)
    flipped = set()
    for seed in range(12):
        torch.manual_seed(seed)
        a = ours(image)
        torch.manual_seed(seed)
        b = theirs(image)
        assert torch.equal(a, b)
        flipped.add(bool(torch.equal(a, torch.flip(released(train=False)(image), dims=[-1]))))
    assert flipped == {True, False}


def test_crop_ratio_0875_cuts_the_short_side_where_1_keeps_it():
    # landscape: the short side is the height; a hem-like band in the bottom 4 % of the rows
    arr = np.full((361, 640, 3), 128, dtype=np.uint8)
    arr[-14:] = (255, 0, 0)
    image = Image.fromarray(arr)
    whole = build_transform(224, train=False, crop_ratio=1.0)(image)
    cut = build_transform(224, train=False, crop_ratio=0.875)(image)
    red = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert whole[0, -1].mean() > red - 0.05  # the band is in the picture
    assert cut[0, -1].max() < 0.5  # resized to 256 and cropped to 224: the band is cut away
    assert torch.equal(cut, T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                                       T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(image))
