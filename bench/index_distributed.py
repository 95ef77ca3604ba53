"""Distributed indexing: ``torchrun --nproc_per_node=2 -m agman index`` against one process, same run.

Writes ``--images`` JPEG files (random texture, 256x256), saves a randomly initialised AG-MAN
checkpoint and indexes the folder three ways, each a fresh ``agman index`` command:

* **1 process**, torch's default threads (one per core);
* **1 process, 1 thread** (``OMP_NUM_THREADS=1``);
* **torchrun, 2 processes** (gloo on CPU; torchrun gives each process one thread): each embeds its
  share of the batches, rank 0 commits.

Reported: wall seconds of the command (model loading included), images/s, and whether the
2-process index equals the 1-process one (vectors bit for bit, items the same).

    python bench/index_distributed.py                       # 96 images, ResNet-18 at 112 px
    python bench/index_distributed.py --images 64 --backbone resnet50 --size 224
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_speed import write_images  # noqa: E402


def checkpoint(path: Path, backbone: str, size: int, attributes: int) -> Path:
    import torch

    from agman.data.spec import Attribute
    from agman.engine.checkpoint import save_checkpoint
    from agman.models.registry import build_model

    torch.manual_seed(0)
    attrs = [Attribute(f"attr{a}", ("v0", "v1", "v2")) for a in range(attributes)]
    model = build_model("agman", len(attrs), backbone=backbone, pretrained="none")
    return save_checkpoint(path, model=model, model_name="agman", attributes=attrs, input_size=size, crop_ratio=1.0)


def run(cmd: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--attributes", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args(argv)
    from agman.retrieval.backends.faiss.store import FaissStore

    work = Path(tempfile.mkdtemp(prefix="dist-bench-"))
    try:
        write_images(work / "images", args.images)
        ckpt = checkpoint(work / "ckpt.pt", args.backbone, args.size, args.attributes)
        index = [sys.executable, "-m", "agman", "index", "--checkpoint", str(ckpt), "--images", str(work / "images"),
                 "--batch-size", str(args.batch_size), "--no-progress"]
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                    str(29500 + os.getpid() % 1000), "-m", "agman", "index", *index[4:]]
        env = dict(os.environ)
        single = {k: v for k, v in env.items() if k != "OMP_NUM_THREADS"}
        ways = {
            "1 process, default threads": (index + ["--out", str(work / "one")], single),
            "1 process, 1 thread": (index + ["--out", str(work / "one1")], dict(env, OMP_NUM_THREADS="1")),
            "torchrun, 2 processes": (torchrun + ["--out", str(work / "two")], single),
        }
        print(f"{args.images} images (256 px JPEG), AG-MAN {args.backbone} at {args.size} px, {args.attributes} "
              f"attributes, batch {args.batch_size}; {os.cpu_count()} CPUs", flush=True)
        results = {}
        for name, (cmd, e) in ways.items():
            seconds = run(cmd, e)
            results[name] = {"seconds": seconds, "images_per_s": args.images / seconds}
        one, two = FaissStore(work / "one"), FaissStore(work / "two")
        same = [(it.id, it.path) for it in one.items] == [(it.id, it.path) for it in two.items] and all(
            np.array_equal(np.asarray(one.vectors(a)), np.asarray(two.vectors(a))) for a in range(args.attributes)
        )
        base = results["1 process, default threads"]["seconds"]
        print(f"{'how':<28} {'seconds':>8} {'images/s':>9} {'vs 1 process':>13}")
        for name, r in results.items():
            print(f"{name:<28} {r['seconds']:8.1f} {r['images_per_s']:9.2f} {base / r['seconds']:12.2f}x")
        print(f"2-process index equal to the 1-process index (items, vectors bit for bit): {same}")
        results["equal"] = same
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
