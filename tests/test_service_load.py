"""Bounded load test on loopback: 200 concurrent searches against ``agman serve`` (uvicorn in its
own process), zero errors.

Half the requests upload a distinct image (model inference, serialised by the Retriever's lock),
half query a catalog item (stored vectors, no model).  p50 / p99 latencies are printed (run with
``-s`` to see them; CI logs them).
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
from test_service_api import png_bytes, service_index

N_REQUESTS = 200
K = 5


async def _fire(url: str, items: list[str]) -> list[tuple[int, float, int]]:
    limits = httpx.Limits(max_connections=N_REQUESTS, max_keepalive_connections=N_REQUESTS)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one(i: int):
            if i % 2:
                kwargs = {"files": {"image": (f"q{i}.png", png_bytes(10_000 + i), "image/png")},
                          "data": {"attributes": ["attr0:1", "attr1:0.5"], "k": str(K)}}
            else:
                kwargs = {"data": {"item": items[i % len(items)], "attributes": "attr1", "k": str(K),
                                   "exclude_self": "true"}}
            t0 = time.perf_counter()
            try:
                r = await client.post("/search", **kwargs)
                n = len(r.json()["results"]) if r.status_code == 200 else -1
                return r.status_code, time.perf_counter() - t0, n
            except httpx.HTTPError as exc:  # a connection error counts as an error, not a crash
                return f"{type(exc).__name__}", time.perf_counter() - t0, -1

        return await asyncio.gather(*(one(i) for i in range(N_REQUESTS)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def agman_serve(index_dir, port: int):
    """``agman serve`` in its own process (its own GIL, as in production), stopped afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agman", "serve", "--index", str(index_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"agman serve exited with {proc.returncode}: {proc.stdout.read()}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("agman serve did not answer /health within 120 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_200_concurrent_searches_without_errors(tmp_path):
    spec, _, out = service_index(tmp_path, n_test=30)
    items = spec.split("test").paths
    with agman_serve(out, free_port()) as url:
        started = time.perf_counter()
        results = asyncio.run(_fire(url, items))
        wall = time.perf_counter() - started
        health = httpx.get(url + "/health", timeout=30)
    errors = [(status, n) for status, _, n in results if status != 200 or n != K]
    latencies = np.array([t for _, t, _ in results]) * 1000
    p50, p99 = np.percentile(latencies, 50), np.percentile(latencies, 99)
    up50, up99 = np.percentile(latencies[1::2], [50, 99])
    it50, it99 = np.percentile(latencies[0::2], [50, 99])
    print(
        f"\nload test: {N_REQUESTS} concurrent searches ({N_REQUESTS // 2} uploads + {N_REQUESTS // 2} item queries) "
        f"against `agman serve` in {wall:.2f}s ({N_REQUESTS / wall:.0f} requests/s): errors {len(errors)}, "
        f"p50 {p50:.0f} ms, p99 {p99:.0f} ms (uploads {up50:.0f} / {up99:.0f} ms, items {it50:.0f} / {it99:.0f} ms)"
    )
    assert errors == []
    assert health.status_code == 200
