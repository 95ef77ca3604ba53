"""Milvus (Lite by default) against the FAISS flat index folder: ingest, query latency, recall, filters.

One run writes the same synthetic catalog both ways and asks both the same queries through the same
``Retriever`` (only the store differs):

* the catalog: ``--items`` items (100k) x ``--attributes`` attributes (2), D = 1024 (AG-MAN's
  embedding size), clustered unit vectors as in ``bench/search_ann.py`` (each attribute its own
  clusters), metadata ``price`` (0-100), ``category`` (5 values), ``in_stock``;
* **FAISS** (the baseline, measured in the same run): an agman index folder (flat: a numpy scan of
  the memory-mapped vectors), a filter as the numpy mask of ``agman.retrieval.filters``;
* **Milvus**: a collection written by ``MilvusStore`` (FLAT), exact through per-attribute shortlists
  re-scored from the stored vectors (the threshold algorithm of ``agman.retrieval.ranking``), the
  filter as a Milvus boolean expression;
* ground truth: numpy brute force over all items (weighted sum, filter mask, ties by row).

Reported: ingest items/s (vectors in, searchable; no embedding), p50/p99 latency per query and
recall@10 against the ground truth, for one attribute and two weighted attributes, unfiltered and
with two filters (~12% and ~2.5% of the items), and Milvus's mean shortlist rounds.

    python bench/milvus_vs_faiss.py                    # 100k items (Milvus Lite)
    python bench/milvus_vs_faiss.py --quick            # 10k items, 50 queries
    python bench/milvus_vs_faiss.py --milvus-uri http://host:19530   # a Milvus server instead
    python bench/milvus_vs_faiss.py --json results.json
"""

from __future__ import annotations

import argparse
import gc
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catalog_data import make_catalog, write_faiss, write_milvus  # noqa: E402
from search_ann import percentiles  # noqa: E402

from agman.fileio import atomic_write_json  # noqa: E402
from agman.retrieval.catalog import CatalogSchema  # noqa: E402
from agman.retrieval.ranking import exact_scores, rank, rank_order  # noqa: E402
from agman.retrieval.search import Retriever  # noqa: E402

D = 1024
K = 10
FILTERS = {
    "none": None,
    "12%": 'price < 30 and category in ["dress", "skirt"]',
    "2.5%": "in_stock and price < 5",
}


def truth(vectors, query, weights, mask, k):
    rows = np.flatnonzero(mask) if mask is not None else np.arange(len(vectors))
    total = np.zeros(len(rows))
    for a, w in weights:
        total += w * exact_scores(vectors[rows, a], query[a]).astype(np.float64)
    return rows[rank_order(total, rows)[:k]]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--attributes", type=int, default=2)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="10k items, 50 queries")
    ap.add_argument("--batch", type=int, default=10_000, help="items per Milvus commit")
    ap.add_argument("--milvus-uri", default=None, help="a Milvus server; default: a Milvus Lite file in a temp dir")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.items, args.queries = 10_000, 50
    import milvus_lite
    import pymilvus

    from agman.retrieval.backends.milvus.client import MilvusTarget

    print(
        f"n={args.items:,} A={args.attributes} D={D} queries={args.queries}; python {platform.python_version()}, "
        f"numpy {np.__version__}, pymilvus {pymilvus.__version__}, milvus-lite {milvus_lite.__version__}",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="milvus-bench-"))
    results: dict = {"n": args.items, "attributes": args.attributes, "dim": D, "queries": args.queries, "rows": []}
    try:
        t = time.perf_counter()
        vectors, queries, items = make_catalog(args.items, args.attributes, D, args.queries)
        print(f"data: {time.perf_counter() - t:.1f}s", flush=True)

        # ---- ingest
        faiss_s = write_faiss(work / "faiss", vectors, items)
        target = MilvusTarget(args.milvus_uri or str(work / "catalog.db"), f"bench_{int(time.time())}")
        milvus_s = write_milvus(target, vectors, items, args.batch, report=lambda m: print(m, flush=True))
        results["ingest"] = {"faiss_items_per_s": args.items / faiss_s, "milvus_items_per_s": args.items / milvus_s}
        print(
            f"ingest items/s: FAISS {args.items / faiss_s:,.0f}   Milvus {args.items / milvus_s:,.0f}   "
            f"(Milvus / FAISS {faiss_s / milvus_s:.3f}x)",
            flush=True,
        )
        backends = {"FAISS": Retriever.open(work / "faiss"), "Milvus": Retriever.open(target)}
        schema = CatalogSchema.of(backends["FAISS"].info)
        columns = schema.columns(backends["FAISS"].store.items)
        gc.collect()

        # ---- queries
        weight_sets = {"1 attribute": {"attr0": 1.0}, "2 attributes (1, 2)": {"attr0": 1.0, "attr1": 2.0}}
        if args.attributes < 2:
            weight_sets.pop("2 attributes (1, 2)")
        print(
            f"\n{'query':<22} {'filter':<6} {'backend':<7} {'p50 ms':>9} {'p99 ms':>9} {'recall@10':>10} "
            f"{'rounds':>7}  {'p50 vs FAISS':>12}",
            flush=True,
        )
        for wname, weights in weight_sets.items():
            pairs = [(int(n[4:]), w) for n, w in weights.items()]
            for fname, text in FILTERS.items():
                flt = backends["FAISS"].compile_filter(text)
                mask = flt.mask(columns, len(items)) if flt else None
                want = [truth(vectors, q, pairs, mask, K) for q in queries]
                row = {"query": wname, "filter": fname, "selected": int(mask.sum()) if mask is not None else args.items}
                for backend, retriever in backends.items():
                    store = retriever.store
                    parsed = retriever.parse_attributes(weights)
                    rounds: list[int] = []

                    def search(q):
                        found = rank(store, q, parsed, K, store.select(flt))  # what Retriever.search ranks by
                        rounds.append(found.rounds)
                        return found.rows

                    retriever.search(queries[0], weights, K, filter=text)  # warm-up through the public API
                    times, found = [], []
                    for q in queries:
                        t0 = time.perf_counter()
                        found.append(search(q))
                        times.append(time.perf_counter() - t0)
                    p50, p99 = percentiles(times)
                    recall = sum(len(set(f.tolist()) & set(w.tolist())) for f, w in zip(found, want)) / sum(
                        len(w) for w in want
                    )
                    mean_rounds = float(np.mean(rounds)) if backend == "Milvus" else None
                    row[backend] = {"p50_ms": p50, "p99_ms": p99, "recall@10": recall, "rounds": mean_rounds}
                    ratio = "" if backend == "FAISS" else f"{p50 / row['FAISS']['p50_ms']:.2f}x"
                    print(
                        f"{wname:<22} {fname:<6} {backend:<7} {p50:9.2f} {p99:9.2f} {recall:10.4f} "
                        f"{'' if mean_rounds is None else f'{mean_rounds:.2f}':>7}  {ratio:>12}",
                        flush=True,
                    )
                results["rows"].append(row)
        backends["Milvus"].store.drop()
        backends["Milvus"].store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        atomic_write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
