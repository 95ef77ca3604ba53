"""Exact search of the default (flat) index against a plain numpy brute force, in the same run.

The catalog: ``--items`` (100k) clustered unit vectors of ``--dim`` (512), one attribute, written as
an agman index folder.  Each query (one at a time, k = 10) is answered, interleaved, by

* **numpy**: ``X @ q`` + ``argpartition`` + sorting the k (the baseline the issue names);
* **agman**: ``Retriever.search(q, "attr0", k=10)`` on the index folder (a numpy scan of the
  memory-mapped vectors, exact scores, the tie rule, the hits' records);
* **agman + filter**: the same with a filter keeping ~half of the items (``price < 50``);
* **FAISS IndexFlatIP** (what the flat index searched with before, for reference).

Printed: p50 / p99 ms of each and p50 ratio to numpy (the methods take turns, 10 queries each, in a
shuffled order); how often numpy's and agman's top k agree.

    python bench/flat_search.py                  # 100k x 512
    python bench/flat_search.py --items 20000    # quick
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catalog_data import make_catalog, write_faiss  # noqa: E402
from search_ann import percentiles  # noqa: E402

from agman.retrieval.search import Retriever  # noqa: E402


BLOCK = 10  # queries in a row per method


def numpy_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    s = x @ q
    top = np.argpartition(-s, k - 1)[:k]
    return top[np.argsort(-s[top], kind="stable")]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args(argv)
    import faiss

    vectors, queries, items = make_catalog(args.items, 1, args.dim, args.queries)
    work = Path(tempfile.mkdtemp(prefix="flat-bench-"))
    try:
        write_faiss(work / "idx", vectors, items)
        retriever = Retriever.open(work / "idx")
        x = np.ascontiguousarray(vectors[:, 0])
        flat = faiss.IndexFlatIP(args.dim)
        flat.add(x)
        k = args.k
        methods = {
            "numpy X @ q + argpartition": lambda q: numpy_top(x, q[0], k),
            "agman flat (Retriever.search)": lambda q: np.array([h.row for h in retriever.search(q, "attr0", k).hits]),
            "agman flat, filter price < 50": lambda q: retriever.search(q, "attr0", k, filter="price < 50"),
            "FAISS IndexFlatIP (before)": lambda q: flat.search(q[:1], k)[1][0],
        }
        times: dict[str, list[float]] = {name: [] for name in methods}
        for fn in methods.values():
            fn(queries[0])  # warm-up: page the vectors in
        order = np.random.default_rng(0)
        names = list(methods)
        for lo in range(0, len(queries), BLOCK):  # blocks of queries per method, methods in a shuffled order:
            for name in order.permutation(names):  # load changes hit all alike, and a block's first query
                fn = methods[name]                  # absorbs the thread pools the previous method left spinning
                for q in queries[lo : lo + BLOCK]:
                    t0 = time.perf_counter()
                    fn(q)
                    times[name].append(time.perf_counter() - t0)
        agree = sum(np.array_equal(methods[names[0]](q), methods[names[1]](q)) for q in queries)
        base = percentiles(times["numpy X @ q + argpartition"])[0]
        print(f"n={args.items:,} D={args.dim} k={k} queries={args.queries} (one at a time, methods taking turns)")
        print(f"{'method':<32} {'p50 ms':>8} {'p99 ms':>8} {'p50 / numpy':>12}")
        result = {"n": args.items, "dim": args.dim, "rows": {}}
        for name in methods:
            p50, p99 = percentiles(times[name])
            result["rows"][name] = {"p50_ms": p50, "p99_ms": p99, "ratio": p50 / base}
            print(f"{name:<32} {p50:8.2f} {p99:8.2f} {p50 / base:11.2f}x")
        print(f"agman's top {k} equal to numpy's for {agree} of {args.queries} queries")
        result["agree"] = agree
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
