"""Benchmark: one-pass ``embed_all`` against A separate per-attribute passes (CPU, FashionAI's 8 attributes).

    python bench/embed_all.py                       # resnet18, 128 px, batch 8: well under a minute
    python bench/embed_all.py --backbone resnet50 --size 224 --batch 4 --repeats 2

Prints images/s for both ways of embedding every attribute of a batch, and their ratio, measured
in the same run on the same model.
"""
from __future__ import annotations

import argparse
import time

import torch

from agman.models import MODEL_NAMES, build_model


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="agman", choices=MODEL_NAMES)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=128, help="input side in pixels (default 128)")
    parser.add_argument("--batch", type=int, default=8, help="images per batch (default 8)")
    parser.add_argument("--attributes", type=int, default=8, help="attributes (default 8, FashionAI)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is kept (default 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on small 2-vCPU VMs more threads are slower)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model, args.attributes, backbone=args.backbone).eval()
    images = torch.randn(args.batch, 3, args.size, args.size)
    ids = [torch.full((args.batch,), a, dtype=torch.long) for a in range(args.attributes)]

    with torch.inference_mode():
        one_pass = best_seconds(lambda: model.embed_all(images), args.repeats)
        per_attribute = best_seconds(lambda: [model(images, i).embedding for i in ids], args.repeats)
        together = model.embed_all(images)
        separate = torch.stack([model(images, i).embedding for i in ids], dim=1)
    max_diff = (together - separate).abs().max().item()

    print(f"{args.model} on {args.backbone}, {args.size}px, batch {args.batch}, {args.attributes} attributes, "
          f"{args.threads} thread(s), best of {args.repeats}")
    print(f"  embed_all (one backbone pass):  {args.batch / one_pass:8.1f} images/s  ({one_pass * 1e3:.0f} ms/batch)")
    print(f"  {args.attributes} separate passes:            {args.batch / per_attribute:8.1f} images/s  "
          f"({per_attribute * 1e3:.0f} ms/batch)")
    print(f"  ratio one-pass / separate:      {per_attribute / one_pass:8.2f}x   (max |difference| {max_diff:.1e})")


if __name__ == "__main__":
    main()
