"""Input pipeline: images/s per core delivered as training batches, JPEG files vs the decoded-image cache.

    python bench/input_pipeline.py                    # 256 JPEGs of 512x512, 224 px crops, 16 triplets per batch
    python bench/input_pipeline.py --images 24 --seconds 0.5 --size 64   # seconds: checks the script works

The benchmark writes its own photo-like JPEGs (smooth colour gradients, blobs, sensor-like noise;
quality 90) to a temporary folder, caches them with :func:`agman.data.cache.build_cache`, then
loads triplet batches (anchor, positive, negative: ``3 x batch`` images, random flips, ImageNet
normalisation) through a ``DataLoader`` on one core (``num_workers=0``, one torch thread) from:

* ``files``        today's pipeline: decode the JPEG, ``Resize``, ``CenterCrop``, flip, normalise;
* ``files_draft``  the same with ``decode='draft'`` (JPEG DCT-scaled decoding; not bit-equal);
* ``cache``        the decoded-image cache (bit-equal to ``files``).

Rates are images per CPU-second of this process (``time.process_time``), so other programs on a
shared machine do not lower them; wall-clock rates are printed beside.  The ratio is cache/files
from the same run.  The pixel difference of draft decoding is measured on the same images.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core, before torch loads
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def photo_like(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like uint8 ``[h, w, 3]`` image: smooth colour gradients, a few flat blobs, mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in rng.uniform(0, 3, 3)], -1) * 90 + 128
    for _ in range(4):
        cy, cx, r = rng.uniform(0, 1, 3) * [h / max(h, w), w / max(h, w), 0.2]
        img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def write_jpegs(folder: Path, n: int, side: int) -> list[str]:
    paths = []
    for i in range(n):
        p = f"{i:05d}.jpg"
        Image.fromarray(photo_like(side, side, i)).save(folder / p, quality=90)
        paths.append(p)
    return paths


def deliver(dataset, n_images: int, batch: int, seconds: float, seed: int = 0) -> dict:
    """Load triplet batches until ``seconds`` of CPU time have passed (at least two batches)."""
    rng = np.random.default_rng(seed)
    rows = np.column_stack([rng.integers(0, 8, 10**5), rng.integers(0, n_images, (10**5, 3))])
    dataset.set_triplets(rows)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=0)
    it = iter(loader)
    next(it)  # first batch: opens files / maps the cache
    images, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
    for anchor, positive, negative, attrs in it:
        assert anchor.shape[0] == positive.shape[0] == negative.shape[0] == batch and anchor.dtype == torch.float32
        images += 3 * batch
        if images >= 6 * batch and time.process_time() - cpu0 >= seconds:
            break
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"images": images, "cpu_seconds": round(cpu, 3), "wall_seconds": round(wall, 3),
            "images_per_cpu_s": round(images / cpu, 1), "images_per_wall_s": round(images / wall, 1)}


def draft_difference(root: Path, paths: list[str], size: int, crop: float) -> dict:
    """uint8 difference between draft-decoded and exactly decoded model views of ``paths``."""
    from agman.data.fastdecode import load_image_draft
    from agman.data.images import load_image
    from agman.data.transforms import model_view

    short = int(round(size / crop))
    diffs = np.stack([np.abs(np.asarray(model_view(load_image(root / p), size, crop), np.int16)
                             - np.asarray(model_view(load_image_draft(root / p, short), size, crop), np.int16))
                      for p in paths])
    mse = float((diffs.astype(np.float64) ** 2).mean())
    return {"mean_abs": round(float(diffs.mean()), 3), "max_abs": int(diffs.max()),
            "share_equal": round(float((diffs == 0).mean()), 4),
            "psnr_db": round(10 * np.log10(255**2 / mse), 2) if mse else None}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=256, help="synthetic JPEGs to write (default 256)")
    p.add_argument("--image-side", type=int, default=512, help="their side in pixels (default 512)")
    p.add_argument("--size", type=int, default=224, help="model input size (default 224)")
    p.add_argument("--crop-ratio", type=float, default=1.0, help="default 1.0: Resize(224) + CenterCrop(224)")
    p.add_argument("--batch", type=int, default=16, help="triplets per batch (default 16)")
    p.add_argument("--seconds", type=float, default=5.0, help="CPU seconds per pipeline (default 5)")
    p.add_argument("--dir", help="folder for the JPEGs and the cache (default: a temporary one)")
    p.add_argument("--out", help="write the JSON here too")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from agman.data.cache import build_cache, triplet_dataset
    from agman.fileio import atomic_write_json

    with tempfile.TemporaryDirectory(prefix="agman-input-") as tmp:
        folder = Path(args.dir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        paths = write_jpegs(folder, args.images, args.image_side)
        written = time.perf_counter() - t
        cpu0 = time.process_time()
        report = build_cache(paths, folder, args.size, args.crop_ratio, cache_dir=folder / "cache", workers=1,
                             progress=False)
        cache_cpu = time.process_time() - cpu0
        common = dict(input_size=args.size, crop_ratio=args.crop_ratio, cache_dir=folder / "cache")
        datasets = {
            "files": triplet_dataset(paths, folder, cache="off", **common),
            "files_draft": triplet_dataset(paths, folder, cache="off", decode="draft", **common),
            "cache": triplet_dataset(paths, folder, cache="require", **common),
        }
        pipelines = {name: deliver(ds, len(paths), args.batch, args.seconds) for name, ds in datasets.items()}
        out = {
            "images": len(paths), "image_side": args.image_side, "input_size": args.size,
            "crop_ratio": args.crop_ratio, "batch_triplets": args.batch, "jpeg_write_seconds": round(written, 2),
            "cache_build": {"cpu_seconds": round(cache_cpu, 3), "images_per_cpu_s": round(report.new / cache_cpu, 1),
                            "bytes_per_image": args.size * args.size * 3},
            "pipelines": pipelines,
            "cache_vs_files": round(pipelines["cache"]["images_per_cpu_s"] / pipelines["files"]["images_per_cpu_s"], 1),
            "draft_vs_files": round(pipelines["files_draft"]["images_per_cpu_s"]
                                    / pipelines["files"]["images_per_cpu_s"], 2),
            "draft_pixel_difference": draft_difference(folder, paths[:32], args.size, args.crop_ratio),
            "goal_images_per_core_s": 2000,
        }
        out["goal_met"] = pipelines["cache"]["images_per_cpu_s"] >= out["goal_images_per_core_s"]
    if args.out:
        atomic_write_json(args.out, out, indent=2)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
