"""GPU benchmark: the released training step against agman's fastest, ``embed_all``, and end to end
from the decoded-image cache — one short run, JSON out.

    python bench/gpu_train.py --out bench-gpu.json   # on a GPU: ResNet-50, 224 px, batch 16 and 64 (a few minutes)
    python bench/gpu_train.py --tiny --device cpu     # seconds on a CPU: checks the script works (the suite does)

Sections (all on the same network, ``agman-official`` = the released AG-MAN, same initial weights):

* ``training``: per batch size, ``released`` (:mod:`released_step`: three forward passes of B,
  fp32, written out plainly) and ``agman`` (the engine's :class:`~agman.engine.step.TrainStep`:
  three passes of B, as the official config) with each speed switch: ``--bf16`` autocast, ``--channels-last``,
  ``--fused-adam``, ``--compile`` (``torch.compile``) and ``--cuda-graphs`` (compile mode
  ``reduce-overhead``; shapes are static).  Every switch defaults to on with CUDA and off on CPU;
  ``--no-<switch>`` turns one off.  ``agman_fp32`` is agman's step as the reproduction configs
  train (fp32, no compile).  Random images already on the device: model throughput only.
* ``embed_all``: images/s for all attributes: the released code needs one forward per (image,
  attribute) in fp32; agman's ``embed_all`` runs the backbone once (with the same switches).
* ``end_to_end``: photo-like 512x512 JPEGs written here, cached (:mod:`agman.data.cache`), read
  by a DataLoader with ``--workers`` processes (flip + normalisation in the workers, pinned
  memory), trained with agman's fastest step; also the loader alone, to show which side limits.

``--max-seconds`` stops starting new sections once spent (they are reported as skipped), so a
run on a lent GPU fits its budget.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from released_step import ReleasedNet, copy_from_agman_official  # noqa: E402
from train_step import agman_step, released_step  # noqa: E402

from agman.fileio import atomic_write_json  # noqa: E402
from agman.models.registry import build_model  # noqa: E402

SWITCHES = ("bf16", "channels_last", "fused_adam", "compile", "cuda_graphs")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return time.perf_counter() - start


def _timed_step(step, batch: tuple, device: torch.device, warmup: int, steps: int) -> float:
    return _timed(lambda: step(*batch), device, warmup, steps)


def _peak(device: torch.device):
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def fastest_step(official, device, sw: dict):
    """agman's TrainStep on a copy of ``official`` with the switches ``sw``."""
    mode = ("reduce-overhead" if sw["cuda_graphs"] else "default") if sw["compile"] else None
    return agman_step(copy.deepcopy(official), device, channels_last=sw["channels_last"], amp=sw["bf16"],
                      fused=sw["fused_adam"], compile_mode=mode)


def bench_training(args, device, official, batch: int, sw: dict) -> dict:
    g = torch.Generator().manual_seed(batch)
    a, p, n = (torch.randn(batch, 3, args.size, args.size, generator=g).to(device) for _ in range(3))
    attrs = torch.randint(0, args.attributes, (batch,), generator=g).to(device)
    variants = {
        "released": lambda: released_step(official, device, args.backbone),
        "agman_fp32": lambda: agman_step(copy.deepcopy(official), device),
        "agman": lambda: fastest_step(official, device, sw),
    }
    out = {"batch_triplets": batch}
    for name, make in variants.items():
        _reset_peak(device)
        seconds = _timed_step(make(), (a, p, n, attrs), device, args.warmup, args.steps)
        out[name] = {"triplets_per_s": round(batch * args.steps / seconds, 2),
                     "images_per_s": round(3 * batch * args.steps / seconds, 2), "peak_memory_gib": _peak(device)}
    for name in ("agman_fp32", "agman"):
        out[name]["speed_vs_released"] = round(out[name]["triplets_per_s"] / out["released"]["triplets_per_s"], 2)
    return out


def bench_embedding(args, device, official, sw: dict) -> dict:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(args.embed_batch, 3, args.size, args.size, generator=g).to(device)
    net = ReleasedNet(args.attributes, args.backbone)
    copy_from_agman_official(net, official)
    net.to(device).eval()

    def released():  # the released code: one fp32 forward per (image, attribute)
        with torch.no_grad():
            return torch.stack([net(images, torch.full((len(images),), k, device=device))[0]
                                for k in range(args.attributes)], 1)

    model = copy.deepcopy(official).to(device).eval()
    fast_images = images
    if sw["channels_last"]:
        model.to(memory_format=torch.channels_last)
        fast_images = images.contiguous(memory_format=torch.channels_last)
    embed = model.embed_all
    if sw["compile"]:
        embed = torch.compile(model.embed_all, mode="reduce-overhead" if sw["cuda_graphs"] else "default")

    def agman():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=sw["bf16"]):
            return embed(fast_images)

    ref, got = released(), agman()
    out = {"batch_images": args.embed_batch, "attributes": args.attributes, "output_shape": list(got.shape),
           "max_abs_difference_vs_released": round(float((got.float() - ref).abs().max()), 5)}
    for name, fn in (("released", released), ("agman", agman)):
        seconds = _timed(fn, device, args.warmup, args.steps)
        out[name] = {"images_per_s": round(args.embed_batch * args.steps / seconds, 2)}
    out["agman"]["speed_vs_released"] = round(out["agman"]["images_per_s"] / out["released"]["images_per_s"], 2)
    return out


def bench_end_to_end(args, device, official, sw: dict) -> dict:
    from input_pipeline import write_jpegs

    from agman.data.cache import build_cache, triplet_dataset

    batch = int(args.batches.split(",")[-1])
    with tempfile.TemporaryDirectory(prefix="agman-e2e-") as tmp:
        folder = Path(tmp)
        paths = write_jpegs(folder, args.e2e_images, args.e2e_side)
        report = build_cache(paths, folder, args.size, 1.0, cache_dir=folder / "cache",
                             workers=max(1, args.workers), progress=False)
        dataset = triplet_dataset(paths, folder, input_size=args.size, crop_ratio=1.0, cache="require",
                                  cache_dir=folder / "cache")
        rng = np.random.default_rng(0)
        steps = args.warmup + args.steps
        dataset.set_triplets(np.column_stack([rng.integers(0, args.attributes, steps * batch),
                                              rng.integers(0, len(paths), (steps * batch, 3))]))
        loader_options = dict(batch_size=batch, num_workers=args.workers, pin_memory=device.type == "cuda",
                              drop_last=True, **({"prefetch_factor": 4, "persistent_workers": True}
                                                 if args.workers else {}))
        loader = torch.utils.data.DataLoader(dataset, **loader_options)

        def run(train: bool) -> float:
            step = fastest_step(official, device, sw) if train else None
            it, start = iter(loader), None
            for k, (anc, pos, neg, attrs) in enumerate(it):
                if k == args.warmup:
                    _sync(device)
                    start = time.perf_counter()
                anc, pos, neg, attrs = (t.to(device, non_blocking=True) for t in (anc, pos, neg, attrs))
                if step is not None:
                    step(anc, pos, neg, attrs)
            _sync(device)
            return args.steps * batch / (time.perf_counter() - start)

        loader_rate, train_rate = run(False), run(True)
    return {"batch_triplets": batch, "workers": args.workers, "images": len(paths),
            "cache_build_images_per_s": round(report.new / report.seconds, 1),
            "loader_only_triplets_per_s": round(loader_rate, 2), "train_triplets_per_s": round(train_rate, 2)}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batches", default="16,64", help="training batch sizes in triplets")
    p.add_argument("--attributes", type=int, default=8)
    p.add_argument("--embed-batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, CUDA graph capture)")
    for name in SWITCHES:
        p.add_argument(f"--{name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=None,
                       help="default: on with CUDA, off on CPU")
    p.add_argument("--workers", type=int, default=None, help="end-to-end loader workers (default: 8 on GPU, 0 on CPU)")
    p.add_argument("--e2e-images", type=int, default=512, help="synthetic JPEGs for the end-to-end run")
    p.add_argument("--e2e-side", type=int, default=512, help="their side in pixels")
    p.add_argument("--sections", default="training,embed_all,end_to_end")
    p.add_argument("--max-seconds", type=float, default=0, help="start no new section after this many (0: no limit)")
    p.add_argument("--tiny", action="store_true",
                   help="CPU-sized check: resnet18, 32 px, batches 2,4, embedding batch 8, 2 steps, 8 JPEGs of 64 px")
    p.add_argument("--out", help="write the JSON here (it is printed too)")
    args = p.parse_args(argv)
    if args.tiny:  # CPU-sized values for whatever was left at its default
        tiny = dict(backbone="resnet18", size=32, batches="2,4", embed_batch=8, steps=2, warmup=1, e2e_images=8,
                    e2e_side=64)
        for key, value in tiny.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    sw = {k: cuda if getattr(args, k) is None else bool(getattr(args, k)) for k in SWITCHES}
    sw["cuda_graphs"] = sw["cuda_graphs"] and sw["compile"] and cuda
    if args.workers is None:
        args.workers = min(8, (os.cpu_count() or 2) - 1) if cuda else 0
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (the released code's setting)
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    official = build_model("agman-official", args.attributes, backbone=args.backbone)
    start = time.perf_counter()
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "network": f"agman-official {args.backbone} {args.size}px, {args.attributes} attributes",
        "switches": sw,
    }
    sections = {
        "training": lambda: [bench_training(args, device, official, int(b), sw) for b in args.batches.split(",")],
        "embed_all": lambda: bench_embedding(args, device, official, sw),
        "end_to_end": lambda: bench_end_to_end(args, device, official, sw),
    }
    for name in args.sections.split(","):
        if args.max_seconds and time.perf_counter() - start > args.max_seconds:
            result[name] = "skipped: --max-seconds spent"
            continue
        result[name] = sections[name]()
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    if args.out:
        atomic_write_json(args.out, result, indent=2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
