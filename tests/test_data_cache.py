"""Decoded-image cache: bit-equal to the file pipeline, keyed, stale-safe, resumable; fast decode's difference."""
from __future__ import annotations

import logging
import os
import pickle

import numpy as np
import pytest
import torch
from conftest import make_asen
from PIL import Image
from test_engine_bench import load

from agman.cli import main as cli_main
from agman.data import cache as C
from agman.data.cache import (
    CachedImageDataset,
    StaleCacheError,
    build_cache,
    image_dataset,
    open_cache,
    store_dir,
    to_model_input,
    triplet_dataset,
)
from agman.data.fastdecode import DraftImageListDataset, load_image_draft
from agman.data.images import ImageListDataset, ImageLoadError, TripletImageDataset, load_image
from agman.data.layouts import read_asen
from agman.data.transforms import build_transform, model_view
from agman.errors import InvalidValueError

photo = load("input_pipeline").photo_like  # photo-like test images: gradients, blobs, noise


@pytest.fixture
def mixed_images(tmp_path):
    """Portrait, landscape, square, odd sizes; JPEG, PNG, a greyscale and a palette image."""
    root = tmp_path / "imgs"
    root.mkdir()
    shapes = [(300, 200), (200, 300), (257, 257), (61, 97), (97, 61), (40, 30), (513, 511)]
    paths = []
    for i, (h, w) in enumerate(shapes):
        for ext in ("jpg", "png"):
            p = f"d{i % 2}/{i:02d}.{ext}"
            (root / p).parent.mkdir(exist_ok=True)
            Image.fromarray(photo(h, w, i)).save(root / p, quality=90) if ext == "jpg" else \
                Image.fromarray(photo(h, w, i)).save(root / p)
            paths.append(p)
    Image.fromarray(photo(80, 120, 99)).convert("L").save(root / "grey.jpg")
    Image.fromarray(photo(90, 70, 98)).convert("P").save(root / "palette.png")
    return root, paths + ["grey.jpg", "palette.png"]


@pytest.mark.parametrize("size,crop", [(224, 1.0), (64, 0.875), (32, 1.0)])
def test_cache_equals_the_file_pipeline_bit_for_bit(tmp_path, mixed_images, size, crop):
    root, paths = mixed_images
    report = build_cache(paths, root, size, crop, cache_dir=tmp_path / "c", workers=2, chunk=3, progress=False)
    assert report.new == report.images == len(paths)
    cached = open_cache(paths, root, size, crop, cache_dir=tmp_path / "c")
    for i, p in enumerate(paths):
        expected = np.asarray(model_view(load_image(root / p), size, crop))
        assert cached[i].shape == (size, size, 3) and cached[i].dtype == np.uint8
        assert np.array_equal(cached[i], expected), p
    # the normalised float tensors too, eval and train (same flip draws under the same seed)
    for train in (False, True):
        files = ImageListDataset(paths, root, build_transform(size, train, crop))
        fast = image_dataset(paths, root, input_size=size, crop_ratio=crop, train=train, cache_dir=tmp_path / "c")
        assert isinstance(fast, CachedImageDataset)
        torch.manual_seed(3)
        a = [files[i] for i in range(len(paths))]
        torch.manual_seed(3)
        b = [fast[i] for i in range(len(paths))]
        for (x, i), (y, j) in zip(a, b):
            assert i == j and x.dtype == y.dtype and torch.equal(x, y)
    batch = cached.batch([3, 0, 3])
    assert np.array_equal(batch[0], cached[3]) and np.array_equal(batch[1], cached[0])
    eval_ds = image_dataset(paths, root, input_size=size, crop_ratio=crop, train=False, cache_dir=tmp_path / "c")
    assert torch.equal(to_model_input(batch)[1], eval_ds[0][0])


def test_triplets_from_the_cache_equal_triplets_from_files(tmp_path):
    root = make_asen(tmp_path / "ds", n_per_split=(24, 10, 10))
    spec = read_asen(root)
    split = spec.split("train")
    build_cache(split.paths, spec.root, 24, 0.875, progress=False)
    rows = np.array([[0, 1, 2, 3], [1, 5, 6, 7], [0, 3, 2, 1]])
    files = TripletImageDataset(split.paths, spec.root, build_transform(24, True, 0.875), rows)
    fast = triplet_dataset(split.paths, spec.root, input_size=24, crop_ratio=0.875, triplets=rows)
    assert isinstance(fast.images, CachedImageDataset)
    for k in range(len(rows)):
        torch.manual_seed(k)
        a = files[k]
        torch.manual_seed(k)
        b = fast[k]
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    # the default folder is <image root>/.agman-cache
    assert store_dir(spec.root, 24, 0.875).parent == spec.root / ".agman-cache"


def test_a_cache_for_other_settings_is_never_used(tmp_path, mixed_images, monkeypatch, caplog):
    root, paths = mixed_images
    build_cache(paths, root, 32, 1.0, cache_dir=tmp_path / "c", progress=False)
    kw = dict(cache_dir=tmp_path / "c", train=False)
    assert isinstance(image_dataset(paths, root, input_size=32, crop_ratio=1.0, **kw), CachedImageDataset)
    for size, crop in ((48, 1.0), (32, 0.875)):
        assert open_cache(paths, root, size, crop, cache_dir=tmp_path / "c") is None
        with caplog.at_level(logging.INFO, logger="agman.data.cache"):
            assert type(image_dataset(paths, root, input_size=size, crop_ratio=crop, **kw)) is ImageListDataset
        assert "are for other settings (32px-crop1-" in caplog.text
        with pytest.raises(StaleCacheError, match="no decoded-image cache"):
            image_dataset(paths, root, input_size=size, crop_ratio=crop, cache="require", **kw)
    # the same relative paths under another image root: another store
    other = tmp_path / "copy"
    os.rename(root, other)
    assert open_cache(paths, other, 32, 1.0, cache_dir=tmp_path / "c") is None
    os.rename(other, root)
    # an image the cache does not hold
    Image.fromarray(photo(50, 50, 7)).save(root / "new.png")
    with pytest.raises(StaleCacheError, match="has no image new.png"):
        open_cache(paths + ["new.png"], root, 32, 1.0, cache_dir=tmp_path / "c")
    # a subset (in any order) is served
    sub = open_cache(paths[5:1:-1], root, 32, 1.0, cache_dir=tmp_path / "c")
    assert np.array_equal(sub[0], np.asarray(model_view(load_image(root / paths[5]), 32, 1.0)))
    assert type(image_dataset(paths, root, input_size=32, crop_ratio=1.0, cache="off", **kw)) is ImageListDataset
    monkeypatch.setenv("AGMAN_CACHE", "off")  # the mode when the caller leaves it open
    assert type(image_dataset(paths, root, input_size=32, crop_ratio=1.0, **kw)) is ImageListDataset
    monkeypatch.setenv("AGMAN_CACHE", "sometimes")
    with pytest.raises(InvalidValueError, match="cache must be one of auto, off, require"):
        image_dataset(paths, root, input_size=32, crop_ratio=1.0, **kw)


def test_a_changed_file_makes_the_cache_stale_and_a_rebuild_fixes_it(tmp_path, mixed_images, caplog):
    root, paths = mixed_images
    c = tmp_path / "c"
    build_cache(paths, root, 32, 1.0, cache_dir=c, progress=False)
    target = root / paths[4]
    Image.fromarray(photo(90, 90, 1234)).save(target)  # new content
    kw = dict(input_size=32, crop_ratio=1.0, train=False, cache_dir=c)
    with pytest.raises(StaleCacheError, match=f"{paths[4]} changed"):
        open_cache(paths, root, 32, 1.0, cache_dir=c)
    with caplog.at_level(logging.WARNING, logger="agman.data.cache"):
        ds = image_dataset(paths, root, **kw)
    assert type(ds) is ImageListDataset and "reading the image files" in caplog.text
    with pytest.raises(StaleCacheError):
        image_dataset(paths, root, cache="require", **kw)
    # rebuilding caches only the changed image, into a newer part that wins
    report = build_cache(paths, root, 32, 1.0, cache_dir=c, progress=False)
    assert report.new == 1
    fresh = open_cache(paths, root, 32, 1.0, cache_dir=c)
    assert np.array_equal(fresh[4], np.asarray(model_view(load_image(target), 32, 1.0)))
    assert build_cache(paths, root, 32, 1.0, cache_dir=c, progress=False).new == 0
    # same size, same mtime is the rule: touching a file (content unchanged) is a change too
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(StaleCacheError):
        open_cache(paths, root, 32, 1.0, cache_dir=c)


def test_an_interrupted_build_resumes_where_it_stopped(tmp_path, mixed_images, monkeypatch):
    root, paths = mixed_images
    c = tmp_path / "c"
    calls = []
    real = C._decode_rows

    def flaky(root_, chunk_paths, size, crop, out):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the third chunk never finishes
        calls.append(list(chunk_paths))
        real(root_, chunk_paths, size, crop, out)

    monkeypatch.setattr(C, "_decode_rows", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_cache(paths, root, 32, 1.0, cache_dir=c, chunk=4, progress=False)
    assert open_cache(paths, root, 32, 1.0, cache_dir=c) is None  # unfinished: not a cache yet
    assert len(list((store_dir(root, 32, 1.0, c)).glob("*.partial.npy"))) == 1
    monkeypatch.setattr(C, "_decode_rows", lambda *a: (calls.append(list(a[1])), real(*a)))
    report = build_cache(paths, root, 32, 1.0, cache_dir=c, chunk=4, progress=False)
    assert report.new == len(paths)
    done_first = sum(calls[:2], [])
    assert sorted(sum(calls[2:], [])) == sorted(set(paths) - set(done_first))  # no chunk decoded twice
    cached = open_cache(paths, root, 32, 1.0, cache_dir=c)
    for i, p in enumerate(paths):
        assert np.array_equal(cached[i], np.asarray(model_view(load_image(root / p), 32, 1.0)))
    assert not list(store_dir(root, 32, 1.0, c).glob("*.partial.npy"))
    assert not list(store_dir(root, 32, 1.0, c).glob("*.done.npy"))


def test_a_broken_image_stops_the_build_naming_it(tmp_path, mixed_images):
    root, paths = mixed_images
    (root / paths[2]).write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match=paths[2]):
        build_cache(paths, root, 32, 1.0, cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(ImageLoadError, match="missing.png"):
        build_cache(["missing.png"], root, 32, 1.0, cache_dir=tmp_path / "c", progress=False)


def test_workers_see_the_cache(tmp_path, mixed_images):
    root, paths = mixed_images
    build_cache(paths, root, 32, 1.0, cache_dir=tmp_path / "c", progress=False)
    ds = image_dataset(paths, root, input_size=32, crop_ratio=1.0, train=False, cache_dir=tmp_path / "c")
    expected = torch.stack([ds[i][0] for i in range(len(ds))])  # opens the memmaps here
    copy = pickle.loads(pickle.dumps(ds))  # what a spawned worker gets: paths, not pixels
    assert len(pickle.dumps(ds)) < 20_000 and torch.equal(copy[3][0], expected[3])
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2)
    assert torch.equal(torch.cat([x for x, _ in loader]), expected)


def test_draft_decoding_is_close_but_only_when_asked(tmp_path, monkeypatch):
    root = tmp_path / "j"
    root.mkdir()
    Image.fromarray(photo(512, 640, 0)).save(root / "a.jpg", quality=90)
    Image.fromarray(photo(64, 64, 1)).save(root / "b.png")
    draft = load_image_draft(root / "a.jpg", 224)
    assert min(draft.size) >= 224 and draft.size[0] < 640  # decoded at 1/2 scale
    exact = np.asarray(model_view(load_image(root / "a.jpg"), 224, 1.0), dtype=np.int16)
    fast = np.asarray(model_view(draft, 224, 1.0), dtype=np.int16)
    diff = np.abs(exact - fast)
    assert 0 < diff.mean() < 3 and diff.max() < 60
    assert np.array_equal(np.asarray(load_image_draft(root / "b.png", 32)), np.asarray(load_image(root / "b.png")))
    ds = image_dataset(["a.jpg", "b.png"], root, input_size=224, crop_ratio=1.0, train=False, decode="draft")
    assert isinstance(ds, DraftImageListDataset) and ds[0][0].shape == (3, 224, 224)
    assert type(image_dataset(["a.jpg"], root, input_size=224, crop_ratio=1.0, train=False)) is ImageListDataset
    monkeypatch.setenv("AGMAN_DECODE", "draft")  # asked for by the environment (agman train/eval)
    assert type(image_dataset(["a.jpg"], root, input_size=224, crop_ratio=1.0, train=False)) is DraftImageListDataset
    (root / "bad.jpg").write_bytes(b"\xff\xd8 nope")
    with pytest.raises(ImageLoadError, match="bad.jpg"):
        load_image_draft(root / "bad.jpg", 32)


def test_agman_data_cache_command(tmp_path, capsys):
    root = make_asen(tmp_path / "ds", n_per_split=(12, 6, 6))
    assert cli_main(["data", "cache", str(root), "--size", "24", "--no-progress", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "train: 12 images, 12 newly cached" in out and "valid: 6 images, 6 newly cached" in out
    spec = read_asen(root)
    for name in ("train", "valid", "test"):
        assert open_cache(spec.split(name).paths, spec.root, 24, 1.0) is not None
    assert cli_main(["data", "cache", str(root), "--size", "24", "--split", "train", "--no-progress"]) == 0
    assert "train: 12 images, 0 newly cached" in capsys.readouterr().out
    assert cli_main(["data", "cache", str(root), "--split", "nope", "--no-progress"]) == 2
