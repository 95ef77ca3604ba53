"""Image pipeline and torch datasets."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from agman.data.decode import DEFAULT_LIMITS
from agman.data.images import (
    ImageLimits,
    ImageListDataset,
    ImageLoadError,
    ImageNotFoundError,
    ImageTooLargeError,
    TripletImageDataset,
    decode_image,
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


# --------------------------------------------------------------------------- bounded decoding (#12.1, .2, .8)
def _png_bytes(size, mode="RGB", color=0) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_small_images_decode_exactly_as_pillow_gives_them(tmp_path):
    rng = np.random.default_rng(0)
    for mode, arr in (("RGB", rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)),
                      ("L", rng.integers(0, 256, (20, 30), dtype=np.uint8))):
        path = tmp_path / f"{mode}.png"
        Image.fromarray(arr, mode).save(path)
        got = decode_image(path)
        assert got.mode == "RGB" and np.array_equal(np.asarray(got), np.asarray(Image.open(path).convert("RGB")))
    jpg = tmp_path / "p.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)).save(jpg, quality=90)
    assert np.array_equal(np.asarray(load_image(jpg)), np.asarray(Image.open(jpg).convert("RGB")))


def test_large_png_is_shrunk_to_the_pixel_limit():
    data = _png_bytes((6000, 6000), color=(200, 30, 40))
    assert len(data) < 200_000  # a few hundred kB that decode to 36 Mpx
    im = decode_image(data)
    assert im.size == (2000, 2000) and im.width * im.height <= DEFAULT_LIMITS.max_pixels
    assert im.getpixel((1000, 1000)) == (200, 30, 40)
    small = decode_image(data, ImageLimits(max_pixels=10_000))
    assert small.size == (100, 100)
    wide = decode_image(_png_bytes((3000, 1000)), ImageLimits(max_pixels=30_000))
    assert wide.size == (300, 100)


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (10, 120, 250)).save(path, quality=85)
    sizes = []
    real_load = Image.Image.load

    def spy(self):
        out = real_load(self)
        sizes.append(self.size)
        return out

    monkeypatch.setattr(Image.Image, "load", spy)
    im = decode_image(path, ImageLimits(max_pixels=120_000))
    assert im.size == (400, 300)
    assert sizes[0] == (500, 375)  # the decoder itself ran at 1/8 scale (JPEG draft)


def test_extreme_aspect_ratio_is_refused_before_resizing(tmp_path):
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1, 200_000)).save(thin)
    assert thin.stat().st_size < 2_000
    with pytest.raises(ImageTooLargeError, match=rf"image {thin} is 1x200000: its aspect ratio 200000.0:1 exceeds 20:"):
        load_image(thin)
    with pytest.raises(ImageTooLargeError, match=r"image upload is 200000x1"):
        decode_image(_png_bytes((200_000, 1)))
    assert decode_image(_png_bytes((400, 20))).size == (400, 20)  # 20:1 itself is allowed
    assert decode_image(_png_bytes((400, 20)), ImageLimits(max_aspect=50)).size == (400, 20)


def _png_header(width: int, height: int) -> bytes:
    """An 8-bit RGB PNG's signature, IHDR chunk and the start of an IDAT chunk: a header, no pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 1000) + b"IDAT" + b"\0" * 8


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    header_only = _png_header(9000, 9000)  # no pixel data at all: decoding would fail differently
    with pytest.raises(ImageTooLargeError, match=r"is 9000x9000 = 81,000,000 pixels; at most 40,000,000"):
        decode_image(header_only)
    with pytest.raises(ImageTooLargeError, match="at most 100 are decoded"):
        decode_image(_png_bytes((11, 10)), ImageLimits(max_source_pixels=100))


def test_formats_outside_the_list_are_refused(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="DDS")
    with pytest.raises(ImageLoadError, match=r"cannot read image upload: not an image in a supported format \(BMP,"):
        decode_image(buf.getvalue())
    im_file = tmp_path / "x.im"
    Image.new("RGB", (8, 8)).save(im_file, format="IM")
    with pytest.raises(ImageLoadError, match=rf"cannot read image {im_file}: not an image"):
        decode_image(im_file)
    assert decode_image(im_file, ImageLimits(formats=("IM",))).size == (8, 8)


@pytest.mark.parametrize(
    "exc", [TypeError("bad tile"), NotImplementedError, struct.error("unpack"), IndexError, MemoryError]
)
def test_every_decoder_failure_becomes_image_load_error(monkeypatch, exc):
    def broken(self):
        raise exc

    data = _png_bytes((4, 4))
    monkeypatch.setattr(Image.Image, "load", broken)
    monkeypatch.setattr(ImageFile.ImageFile, "load", broken)
    with pytest.raises(ImageLoadError, match="cannot read image photo.png: ") as err:
        decode_image(data, name="photo.png")
    assert err.value.source == "photo.png"


def test_empty_missing_and_folder_inputs(tmp_path):
    with pytest.raises(ImageLoadError, match="cannot read image upload: it is empty"):
        decode_image(b"")
    with pytest.raises(ImageNotFoundError, match="image file not found"):
        decode_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match=f"cannot read image {tmp_path}"):
        decode_image(tmp_path)


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_aspect"):
        ImageLimits(max_aspect=0.5)
    with pytest.raises(ValueError, match="Pillow cannot open NOPE"):
        ImageLimits(formats=("PNG", "NOPE"))
