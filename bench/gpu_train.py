"""GPU benchmark: AG-MAN training triplets/s and ``embed_all`` images/s, one short run, JSON out.

    python bench/gpu_train.py --out bench-gpu.json            # ResNet-50, 224 px, batch 16 and 64, fp32 and bf16
    python bench/gpu_train.py --tiny --device cpu             # seconds on a CPU: checks the script works

Training uses the engine's own step (:class:`agman.engine.step.TrainStep`: anchor, positive and
negative through the backbone as one batch of 3B, Eq. 7-9 losses, Adam) on random images already
on the device, so the figures are model throughput without image decoding.  Embedding runs
``model.embed_all`` (one backbone pass, every attribute's head) in inference mode.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from agman.engine.losses import TripletCriterion
from agman.engine.step import TrainStep
from agman.fileio import atomic_write_json
from agman.models.registry import build_model


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


def bench_training(args, device: torch.device, batch: int, bf16: bool) -> dict:
    torch.manual_seed(0)
    model = build_model("agman", args.attributes, backbone=args.backbone, embedding_dim=args.embedding_dim,
                        attention_dim=args.attention_dim).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = TripletCriterion().to(device)
    optimizer = torch.optim.Adam(list(model.parameters()) + list(criterion.parameters()), lr=1e-4)
    net = torch.compile(model) if args.compile else model
    step = TrainStep(net, criterion, optimizer, device, channels_last=channels_last, amp=bf16)
    shape = (batch, 3, args.size, args.size)
    a, p, n = (torch.randn(shape, device=device) for _ in range(3))
    attrs = torch.randint(0, args.attributes, (batch,), device=device)
    model.train()
    seconds = _timed(lambda: step(a, p, n, attrs), device, args.warmup, args.steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"batch_triplets": batch, "dtype": "bf16" if bf16 else "fp32", "steps": args.steps,
            "seconds": round(seconds, 4), "triplets_per_s": round(batch * args.steps / seconds, 2),
            "images_per_s": round(3 * batch * args.steps / seconds, 2),
            "peak_memory_gib": None if peak is None else round(peak, 2)}


def bench_embedding(args, device: torch.device, bf16: bool) -> dict:
    torch.manual_seed(0)
    model = build_model("agman", args.attributes, backbone=args.backbone, embedding_dim=args.embedding_dim,
                        attention_dim=args.attention_dim).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    images = torch.randn(args.embed_batch, 3, args.size, args.size, device=device)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            return model.embed_all(images)

    out_shape = tuple(run().shape)
    seconds = _timed(run, device, args.warmup, args.steps)
    return {"batch_images": args.embed_batch, "dtype": "bf16" if bf16 else "fp32", "attributes": args.attributes,
            "output_shape": list(out_shape), "seconds": round(seconds, 4),
            "images_per_s": round(args.embed_batch * args.steps / seconds, 2)}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batches", default="16,64", help="training batch sizes in triplets")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--attributes", type=int, default=8)
    p.add_argument("--embedding-dim", type=int, default=1024)
    p.add_argument("--attention-dim", type=int, default=512)
    p.add_argument("--embed-batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    p.add_argument("--tiny", action="store_true",
                   help="CPU-sized check: resnet18, 32 px, batches 2,4, embedding 32, 2 steps")
    p.add_argument("--out", help="write the JSON here (it is printed too)")
    args = p.parse_args(argv)
    if args.tiny:  # CPU-sized values for whatever was left at its default
        tiny = dict(backbone="resnet18", size=32, batches="2,4", embedding_dim=32, attention_dim=32, embed_batch=8,
                    steps=2, warmup=1)
        for key, value in tiny.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    start = time.perf_counter()
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "model": f"agman {args.backbone} {args.size}px D={args.embedding_dim} c'={args.attention_dim} "
                 f"{args.attributes} attributes",
        "compile": args.compile,
        "training": [bench_training(args, device, int(b), d == "bf16")
                     for b in args.batches.split(",") for d in dtypes],
        "embed_all": [bench_embedding(args, device, d == "bf16") for d in dtypes],
    }
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    if args.out:
        atomic_write_json(args.out, result, indent=2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
