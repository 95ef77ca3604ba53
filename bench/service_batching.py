"""Service throughput: 50 concurrent image uploads, dynamically batched vs one model call at a time.

Builds a small index with a randomly initialised model, then for each mode starts ``agman serve``
(a separate process, real uvicorn on loopback) and fires ``--uploads`` distinct PNG uploads at
``POST /search`` at once from as many client threads:

* **one at a time**: ``--batch-size 1`` (each upload its own forward pass: the service before
  batching);
* **batched**: ``--batch-size 16 --batch-wait-ms 5`` (the default: uploads that arrive together
  share one ``embed_all`` pass).

Reported per mode: wall time for all uploads, uploads/s, p50 / p99 latency, forward passes and the
seconds the server spent embedding, wall and CPU (from ``/health``: the rest is decoding, HTTP, search
and JSON), the server process's CPU seconds (``/proc``: a measure that a busy machine does not
inflate), and the batched / one-at-a-time ratios measured in the same run.

    python bench/service_batching.py                          # ResNet-18 at 64 px (the demo's model size)
    python bench/service_batching.py --backbone resnet50 --size 224   # the paper's size
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

MODES = {"one at a time": ["--batch-size", "1"], "batched": ["--batch-size", "16", "--batch-wait-ms", "5"]}


def pictures(n: int, size: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(base).resize((size, size), Image.Resampling.BICUBIC).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def build(work: Path, backbone: str, size: int, attributes: int) -> Path:
    import torch

    from agman.data.spec import Attribute
    from agman.engine.checkpoint import save_checkpoint
    from agman.models.registry import build_model
    from agman.retrieval.build import build_index
    from agman.retrieval.imagesets import from_directory

    torch.manual_seed(0)
    attrs = [Attribute(f"attr{a}", ("v0", "v1", "v2")) for a in range(attributes)]
    model = build_model("agman", len(attrs), backbone=backbone, pretrained="none")
    ckpt = save_checkpoint(work / "ckpt.pt", model=model, model_name="agman", attributes=attrs, input_size=size,
                           crop_ratio=1.0)
    (work / "catalog").mkdir()
    for i, data in enumerate(pictures(24, 128, seed=1)):
        (work / "catalog" / f"{i:03d}.png").write_bytes(data)
    build_index(work / "index", from_directory(work / "catalog"), ckpt, batch_size=8)
    return work / "index"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_mode(index: Path, flags: list[str], uploads: list[bytes], threads: int | None) -> dict:
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "agman", "serve", "--index", str(index), "--port", str(port), "--max-upload-mb", "5",
         "--reload-seconds", "0", *flags, *(["--threads", str(threads)] if threads else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"agman serve did not start: {server.stderr.read() if server.poll() else ''}")
            time.sleep(0.2)

        def send(data: bytes) -> float:
            t0 = time.perf_counter()
            r = httpx.post(f"{url}/search", files={"image": ("q.png", data, "image/png")},
                           data={"attributes": "attr0", "k": "5"}, timeout=600)
            r.raise_for_status()
            return time.perf_counter() - t0

        for data in pictures(2, 128, seed=99):  # warm-up: model, allocator, first requests
            send(data)
        before, cpu_before = httpx.get(f"{url}/health").json()["batches"], process_cpu(server.pid)
        with ThreadPoolExecutor(len(uploads)) as pool:
            started = time.perf_counter()
            latencies = list(pool.map(send, uploads))
            wall = time.perf_counter() - started
        after, cpu_after = httpx.get(f"{url}/health").json()["batches"], process_cpu(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    lat = np.asarray(latencies) * 1000
    return {
        "wall_s": wall,
        "uploads_per_s": len(uploads) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "forward_passes": after["forward_passes"] - before["forward_passes"],
        "model_s": after["seconds"] - before["seconds"],
        "model_cpu_s": after["cpu_seconds"] - before["cpu_seconds"],
        "server_cpu_s": cpu_after - cpu_before,
    }


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", type=int, default=64, help="model input size (px)")
    ap.add_argument("--attributes", type=int, default=5)
    ap.add_argument("--uploads", type=int, default=50)
    ap.add_argument("--upload-px", type=int, default=256, help="side of the uploaded PNGs")
    ap.add_argument("--threads", type=int, default=None, help="agman serve --threads (default: torch's)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    try:
        index = build(work, args.backbone, args.size, args.attributes)
        uploads = pictures(args.uploads, args.upload_px, seed=7)
        print(f"{args.uploads} concurrent uploads ({args.upload_px} px PNG), AG-MAN {args.backbone} at {args.size} px, "
              f"{args.attributes} attributes; {os.cpu_count()} CPUs, torch threads: {args.threads or 'default'}",
              flush=True)
        results = {name: run_mode(index, flags, uploads, args.threads) for name, flags in MODES.items()}
        print(f"{'mode':<15} {'wall s':>7} {'uploads/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'passes':>6} "
              f"{'model s':>7} {'model CPU s':>11} {'server CPU s':>12}")
        for name, r in results.items():
            print(f"{name:<15} {r['wall_s']:7.2f} {r['uploads_per_s']:9.2f} {r['p50_ms']:7.0f} {r['p99_ms']:7.0f} "
                  f"{r['forward_passes']:6d} {r['model_s']:7.2f} {r['model_cpu_s']:11.2f} {r['server_cpu_s']:12.2f}")
        one, batched = results["one at a time"], results["batched"]
        ratio = batched["uploads_per_s"] / one["uploads_per_s"]
        results["ratio"] = ratio
        results["cpu_ratio"] = one["server_cpu_s"] / batched["server_cpu_s"]
        print(f"batched / one at a time: {ratio:.2f}x throughput; {results['cpu_ratio']:.2f}x fewer server CPU "
              f"seconds per upload; model CPU per upload {one['model_cpu_s'] / batched['model_cpu_s']:.2f}x less")
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
