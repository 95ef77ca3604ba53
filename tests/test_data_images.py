"""Image pipeline and torch datasets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from agman.data.images import (
    ImageListDataset,
    ImageLoadError,
    TripletImageDataset,
    load_image,
)
from agman.data.layouts import read_asen
from agman.data.transforms import IMAGENET_MEAN, build_transform, denormalize, model_view
from agman.data.triplets import TripletSampler


@pytest.mark.parametrize("size", [224, 128, 96])
def test_transform_sizes_and_normalisation(size):
    im = Image.fromarray(np.full((300, 200, 3), 255, dtype=np.uint8))
    x = build_transform(size, train=False)(im)
    assert x.shape == (3, size, size)
    assert torch.allclose(denormalize(x), torch.ones_like(x), atol=1e-5)
    grey = Image.fromarray(np.full((40, 40, 3), [int(m * 255) for m in IMAGENET_MEAN], dtype=np.uint8))
    assert build_transform(32)(grey).abs().max() < 0.02


def test_train_transform_flips_sometimes():
    arr = np.zeros((64, 64, 3), dtype=np.uint8)
    arr[:, :32] = 255
    im = Image.fromarray(arr)
    t = build_transform(64, train=True, crop_ratio=1.0)
    torch.manual_seed(0)
    lefts = {bool(t(im)[0, 32, 5] > 0) for _ in range(40)}
    assert lefts == {True, False}


def test_bad_transform_arguments():
    with pytest.raises(ValueError, match="crop_ratio"):
        build_transform(64, crop_ratio=1.5)


def test_model_view_is_the_evaluation_crop():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8))
    view = model_view(image, 64, 0.875)
    assert view.size == (64, 64)
    as_tensor = build_transform(64, train=False, crop_ratio=0.875).transforms[2:]
    expected = build_transform(64, train=False, crop_ratio=0.875)(image)
    assert torch.equal(as_tensor[1](as_tensor[0](view)), expected)
    with pytest.raises(ValueError, match="crop_ratio"):
        model_view(image, 64, 1.5)


def test_corrupt_image_reported_with_path(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(ImageLoadError, match=f"cannot read image {bad}"):
        load_image(bad)
    with pytest.raises(ImageLoadError, match="image file not found"):
        load_image(tmp_path / "missing.png")


def test_datasets(asen_root):
    spec = read_asen(asen_root)
    train = spec.split("train")
    t = build_transform(32, train=True, crop_ratio=1.0)
    ds = ImageListDataset(train.paths, spec.root, t)
    x, i = ds[3]
    assert x.shape == (3, 32, 32) and i == 3
    rows = TripletSampler(train, 8, seed=0).epoch(0)
    tds = TripletImageDataset(train.paths, spec.root, t, rows)
    a, p, n, attr = tds[0]
    assert a.shape == p.shape == n.shape == (3, 32, 32) and int(attr) == rows[0, 0]
    (spec.root / train.paths[rows[1, 1]]).write_bytes(b"junk")
    with pytest.raises(ImageLoadError, match=train.paths[rows[1, 1]]):
        tds[1]
