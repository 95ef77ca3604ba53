"""Bounded load test on loopback: 200 concurrent searches against a real uvicorn, zero errors.

Half the requests upload a distinct image (model inference, serialised by the Retriever's lock),
half query a catalog item (stored vectors, no model).  p50 / p99 latencies are printed (run with
``-s`` to see them; CI logs them).
"""
from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
from test_service_api import LiveServer, png_bytes, service_index

from agman.service.app import create_app

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


def test_200_concurrent_searches_without_errors(tmp_path):
    spec, _, out = service_index(tmp_path, n_test=30)
    items = spec.split("test").paths
    with LiveServer(create_app(out)) as server:
        started = time.perf_counter()
        results = asyncio.run(_fire(server.url, items))
        wall = time.perf_counter() - started
        health = httpx.get(server.url + "/health", timeout=30)
    errors = [(status, n) for status, _, n in results if status != 200 or n != K]
    latencies = np.array([t for _, t, _ in results]) * 1000
    p50, p99 = np.percentile(latencies, 50), np.percentile(latencies, 99)
    print(
        f"\nload test: {N_REQUESTS} concurrent searches ({N_REQUESTS // 2} uploads + {N_REQUESTS // 2} item queries) "
        f"in {wall:.2f}s: errors {len(errors)}, p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {latencies.max():.1f} ms"
    )
    assert errors == []
    assert health.status_code == 200
