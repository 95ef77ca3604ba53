"""Search latency, recall@10 and memory of the catalog index types, against numpy brute force.

For each catalog size (10k / 100k / 1M by default) this generates clustered synthetic embeddings
(D = 512, unit norm: one cluster per thousand items, 64-dimensional within-cluster variation plus
isotropic noise; queries drawn from the same distribution, not from the catalog), then measures, one query at
a time (as the service searches):

* numpy brute force (``X @ q`` + ``argpartition``) -- the baseline, measured in the same run;
* exact FAISS (``flat``: IndexFlatIP);
* HNSW32 (L2 on unit vectors) at several efSearch;
* IVF-Flat, IVF-SQ8 and IVF-PQ (nlist ~ 4*sqrt(n), one coarse quantizer trained once and shared)
  at several nprobe; the compressed ones also with exact re-ranking of a k x 10 shortlist from the
  float32 vectors (what ``agman search`` does for every approximate index).

Reported: p50 / p99 latency (ms), recall@10 against exact search, build seconds, and RAM of the
index per million items per attribute (the serialized FAISS index, scaled; re-ranking additionally
reads the exact vectors, 2 GiB per million on disk, memory-mapped).  The last lines state the 1M
acceptance: the fastest approximate setting with recall@10 >= 0.95 and its speed-up over numpy.

    python bench/search_ann.py --quick            # 10k only, a minute
    python bench/search_ann.py                    # 10k, 100k, 1M (about 30 min on 2 cores, < 10 GiB)
    python bench/search_ann.py --json results.json
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time

import numpy as np

K = 10
D = 512


def clustered_embeddings(n: int, d: int, seed: int, n_clusters: int, intrinsic: int = 64, groups: int = 16) -> np.ndarray:
    """``n`` unit vectors: a random centre of ``n_clusters`` (unit norm) plus a within-cluster offset
    of norm ~0.6 in an ``intrinsic``-dimensional subspace (one of ``groups`` random subspaces) plus
    isotropic noise of norm ~0.08.  Centres and subspaces depend on ``seed // 1000`` only, so the
    catalog and the queries (seeds of the same thousand) share them."""
    base = np.random.default_rng(seed // 1000)
    centres = base.standard_normal((n_clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = base.standard_normal((groups, intrinsic, d)).astype(np.float32) / math.sqrt(d)
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, 65536):
        m = min(n, lo + 65536) - lo
        labels = rng.integers(0, n_clusters, m)
        z = rng.standard_normal((m, intrinsic)).astype(np.float32) * (0.6 / math.sqrt(intrinsic))
        x = centres[labels]
        for g in range(groups):
            sel = labels % groups == g
            x[sel] += z[sel] @ bases[g]
        x += rng.standard_normal((m, d)).astype(np.float32) * (0.08 / math.sqrt(d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[lo : lo + m] = x
    return out


def percentiles(times: list[float]) -> tuple[float, float]:
    t = np.asarray(times) * 1000.0
    return float(np.percentile(t, 50)), float(np.percentile(t, 99))


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


def time_queries(fn, queries: np.ndarray) -> tuple[np.ndarray, list[float]]:
    fn(queries[0])  # warm-up (page faults, lazy allocations)
    rows, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        rows.append(fn(q))
        times.append(time.perf_counter() - t0)
    return np.stack(rows), times


def index_bytes(index) -> int:
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def bench_size(n: int, n_queries: int, n_brute: int, threads: int, seed: int, quick: bool) -> list[dict]:
    import faiss

    faiss.omp_set_num_threads(threads)
    rows: list[dict] = []
    t0 = time.perf_counter()
    n_clusters = max(10, n // 1000)  # clusters of about a thousand items, as attribute values are
    X = clustered_embeddings(n, D, seed=1000 * 7 + 1, n_clusters=n_clusters)
    Q = clustered_embeddings(n_queries, D, seed=1000 * 7 + 2, n_clusters=n_clusters)
    print(f"\n== n = {n:,}  (data {time.perf_counter() - t0:.1f}s, {n_queries} queries, brute force on {n_brute})", flush=True)
    per_million = 1e6 / n

    def record(method, params, build_s, mem, times, found, truth, note=""):
        p50, p99 = percentiles(times)
        row = {
            "n": n,
            "method": method,
            "params": params,
            "build_s": round(build_s, 2),
            "ram_mib_per_1m": round(mem * per_million / 2**20, 1) if mem is not None else None,
            "p50_ms": round(p50, 3),
            "p99_ms": round(p99, 3),
            "recall@10": round(recall_at_k(found, truth), 4) if truth is not None else 1.0,
            "note": note,
        }
        rows.append(row)
        mem_txt = f"{row['ram_mib_per_1m']:>8.1f}" if mem is not None else "       -"
        print(
            f"{method:<16} {params:<22} build {build_s:7.1f}s  MiB/1M {mem_txt}  "
            f"p50 {p50:8.3f}ms  p99 {p99:8.3f}ms  recall@10 {row['recall@10']:.4f} {note}",
            flush=True,
        )

    # numpy brute force: the baseline
    def brute(q):
        s = X @ q
        top = np.argpartition(-s, K)[:K]
        return top[np.argsort(-s[top])]

    found_b, times_b = time_queries(brute, Q[:n_brute])
    record("numpy-brute", "X@q+argpartition", 0.0, X.nbytes, times_b, found_b, None)

    # exact FAISS flat = ground truth
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(D)
    flat.add(X)
    build = time.perf_counter() - t
    _, truth = flat.search(Q, K)
    found_f, times_f = time_queries(lambda q: flat.search(q[None], K)[1][0], Q[:n_brute])
    record("flat", "IndexFlatIP", build, index_bytes(flat), times_f, found_f, truth[:n_brute])
    agree = recall_at_k(found_b, truth[:n_brute])
    if agree < 0.999:
        print(f"warning: numpy and FAISS exact top-10 agree on only {agree:.4f}", file=sys.stderr)
    flat = None  # free before the next index is built
    gc.collect()

    # HNSW
    t = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(D, 32, faiss.METRIC_L2)
    hnsw.hnsw.efConstruction = 64
    hnsw.add(X)
    build = time.perf_counter() - t
    mem = index_bytes(hnsw)
    for ef in ([32, 64] if quick else [32, 64, 128, 256]):
        params = faiss.SearchParametersHNSW(efSearch=ef)
        found, times = time_queries(lambda q, p=params: hnsw.search(q[None], K, params=p)[1][0], Q)
        record("hnsw32", f"efSearch={ef}", build, mem, times, found, truth)
    hnsw = None
    gc.collect()

    # IVF family: one coarse quantizer
    nlist = max(1, min(int(2 ** round(math.log2(4 * math.sqrt(n)))), n // 39))
    t = time.perf_counter()
    quantizer = faiss.IndexFlatL2(D)
    km = faiss.Clustering(D, nlist)
    km.niter = 20
    km.max_points_per_centroid = 40
    km.seed = seed
    sample = X[np.random.default_rng(seed).choice(n, min(n, 40 * nlist), replace=False)]
    km.train(sample, quantizer)
    train_s = time.perf_counter() - t
    assign = quantizer.search(X, 1)[1][:, 0]  # shared coarse assignment
    print(f"(coarse quantizer: nlist={nlist}, trained in {train_s:.1f}s on {len(sample):,} points)", flush=True)
    nprobes = [8, 16, 32] if quick else [8, 16, 32, 64]

    def build_ivf(make):
        t = time.perf_counter()
        index = make()
        if not index.is_trained:
            index.train(sample)
        for lo in range(0, n, 131072):
            hi = min(n, lo + 131072)
            index.add_core(hi - lo, faiss.swig_ptr(np.ascontiguousarray(X[lo:hi])), None,
                           faiss.swig_ptr(np.ascontiguousarray(assign[lo:hi])))
        return index, train_s + time.perf_counter() - t

    def rerank_search(index, params, factor):
        def fn(q):
            _, cand = index.search(q[None], K * factor, params=params)
            cand = cand[0][cand[0] >= 0]
            s = np.einsum("ij,j->i", X[cand], q)
            return cand[np.lexsort((cand, -s))[:K]]
        return fn

    variants = [
        ("ivf-flat", lambda: faiss.IndexIVFFlat(quantizer, D, nlist, faiss.METRIC_L2), False),
        ("ivf-sq8", lambda: faiss.IndexIVFScalarQuantizer(quantizer, D, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_L2), True),
        ("ivf-pq64", lambda: faiss.IndexIVFPQ(quantizer, D, nlist, 64, 8, faiss.METRIC_L2), True),
    ]
    for name, make, rerank in variants:
        index, build = build_ivf(make)
        mem = index_bytes(index)
        for nprobe in nprobes:
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            found, times = time_queries(lambda q, i=index, p=params: i.search(q[None], K, params=p)[1][0], Q)
            record(name, f"nprobe={nprobe}", build, mem, times, found, truth)
            if rerank:
                found, times = time_queries(rerank_search(index, params, 10), Q)
                record(name + "+rerank", f"nprobe={nprobe},k'=100", build, mem, times, found, truth,
                       note="(+ exact vectors on disk)")
        del index
        gc.collect()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k items only, fewer settings")
    parser.add_argument("--sizes", type=int, nargs="+", help="catalog sizes (default 10000 100000 1000000)")
    parser.add_argument("--queries", type=int, default=500, help="queries per approximate setting (default 500)")
    parser.add_argument("--brute-queries", type=int, default=100, help="queries for numpy / flat (default 100)")
    parser.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    import os

    import faiss

    threads = args.threads or os.cpu_count() or 1
    sizes = args.sizes or ([10_000] if args.quick else [10_000, 100_000, 1_000_000])
    queries = min(args.queries, 200) if args.quick else args.queries
    print(f"faiss {faiss.__version__}, numpy {np.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {threads} FAISS threads, D={D}, k={K}")
    rows = []
    for n in sizes:
        rows += bench_size(n, queries, min(args.brute_queries, queries), threads, args.seed, args.quick)

    n = max(sizes)
    at_n = [r for r in rows if r["n"] == n]
    brute = next(r for r in at_n if r["method"] == "numpy-brute")
    good = [r for r in at_n if r["method"] not in ("numpy-brute", "flat") and r["recall@10"] >= 0.95]
    print(f"\n== acceptance at n = {n:,}: numpy brute force p50 {brute['p50_ms']:.3f} ms")
    ok = False
    if good:
        best = min(good, key=lambda r: r["p50_ms"])
        speedup = brute["p50_ms"] / best["p50_ms"]
        ok = speedup >= 20
        print(f"fastest with recall@10 >= 0.95: {best['method']} {best['params']}: recall@10 {best['recall@10']:.4f}, "
              f"p50 {best['p50_ms']:.3f} ms = {speedup:.1f}x faster than numpy -> {'PASS' if ok else 'FAIL'} (need >= 20x)")
    else:
        print("no approximate setting reached recall@10 >= 0.95 -> FAIL")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"faiss": faiss.__version__, "threads": threads, "rows": rows}, f, indent=1)
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
