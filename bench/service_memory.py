"""Memory of `agman serve` under large uploads: the resident set (RSS) of the server process while
it answers searches by distinct, highly compressible PNGs (a few hundred kB that decode to
``--side`` x ``--side`` pixels), one after another and all at once.

Builds a small index with a randomly initialised ResNet-18 AG-MAN (64 px), starts ``agman serve``
on a free loopback port and prints the RSS at start, after each sequential upload, and the peak
and final RSS of a concurrent burst.  ``--src`` runs the server (and the index build) from another
checkout's ``src`` (e.g. the main branch) for a before/after comparison on the same machine.

    python bench/service_memory.py                       # 6 sequential + 8 concurrent 6000x6000 uploads
    python bench/service_memory.py --src ../main/src --side 4000
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

BUILD = """
import sys
from pathlib import Path
import numpy as np, torch
from PIL import Image
from agman.data.spec import Attribute
from agman.engine.checkpoint import save_checkpoint
from agman.models import build_model
from agman.retrieval.build import build_index
from agman.retrieval.imagesets import from_directory
root = Path(sys.argv[1])
rng = np.random.default_rng(0)
for i in range(16):
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(root / "images" / f"{i:02d}.png")
attributes = [Attribute("attr0", ("a", "b")), Attribute("attr1", ("c", "d", "e"))]
torch.manual_seed(0)
net = build_model("agman", 2, backbone="resnet18", embedding_dim=32, attention_dim=16)
ckpt = save_checkpoint(root / "c.pt", model=net, model_name="agman", attributes=attributes, input_size=64,
                       crop_ratio=1.0)
build_index(root / "index", from_directory(root / "images"), ckpt, batch_size=8)
"""


def png(side: int, i: int) -> bytes:
    picture = Image.new("RGB", (side, side), (200, 120, 40))
    picture.putpixel((i % side, 0), (i % 256, i % 256, i % 256))  # distinct bytes: a new query each time
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


class Server:
    def __init__(self, index: Path, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "agman", "serve", "--index", str(index), "--port",
                                      str(free_port())], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.url = None
        for line in self.proc.stdout:
            if line.startswith("serving "):
                self.url = line.split(" on ")[1].split("/ ")[0]
                break
        if self.url is None:
            raise RuntimeError("agman serve did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        self.peak = 0
        self._watching = False

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmRSS")) // 1024

    def watch(self):
        self._watching, self.peak = True, self.rss()

        def loop():
            while self._watching:
                self.peak = max(self.peak, self.rss())
                time.sleep(0.05)

        threading.Thread(target=loop, daemon=True).start()

    def stop(self):
        self._watching = False
        self.proc.terminate()
        self.proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=6000)
    parser.add_argument("--sequential", type=int, default=6)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--src", help="run the server from this checkout's src folder (default: the installed agman)")
    args = parser.parse_args()
    env = dict(os.environ, **({"PYTHONPATH": str(Path(args.src).resolve())} if args.src else {}))
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-c", BUILD, tmp], env=env, check=True, capture_output=True)
        server = Server(Path(tmp) / "index", env)
        form = {"attributes": "attr0", "k": "3"}
        try:
            print(f"agman serve from {args.src or 'the installed package'}; {args.side}x{args.side} PNG uploads "
                  f"({len(png(args.side, 0)) // 1000} kB each)")
            line = [f"start {server.rss()}"]
            for i in range(args.sequential):
                r = httpx.post(server.url + "/search", files={"image": ("q.png", png(args.side, i), "image/png")},
                               data=form, timeout=600)
                line.append(f"{r.status_code}:{server.rss()}")
            print(f"  {args.sequential} one after another, RSS MB after each: " + ", ".join(line))
            bodies = [png(args.side, 1000 + i) for i in range(args.concurrent)]
            before = server.rss()
            server.watch()

            async def burst():
                async with httpx.AsyncClient(timeout=600) as client:
                    return await asyncio.gather(*(client.post(server.url + "/search", data=form,
                                                              files={"image": ("q.png", b, "image/png")})
                                                  for b in bodies))

            started = time.perf_counter()
            answers = asyncio.run(burst())
            seconds = time.perf_counter() - started
            time.sleep(1)
            statuses = sorted({a.status_code for a in answers})
            print(f"  {args.concurrent} at once in {seconds:.1f} s, statuses {statuses}: RSS {before} MB before, "
                  f"peak {server.peak} MB, {server.rss()} MB after")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
