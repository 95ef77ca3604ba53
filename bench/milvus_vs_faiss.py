"""Milvus (Lite by default) against the FAISS flat index: ingest, query latency, recall, filters.

One run builds the same synthetic catalog both ways and asks both the same queries:

* the catalog: ``--items`` items (100k) x ``--attributes`` attributes (2), D = 1024 (AG-MAN's
  embedding size), clustered unit vectors as in ``bench/search_ann.py`` (each attribute its own
  clusters), metadata ``price`` (0-100), ``category`` (5 values), ``in_stock``;
* **FAISS** (the baseline, measured in the same run): the index folder of ``agman.retrieval.index``
  (exact vectors + IndexFlatIP per attribute) searched through today's ``Retriever``; a filter is the
  numpy mask of ``agman.retrieval.filters`` passed as excluded rows;
* **Milvus**: ``agman.retrieval.milvus.MilvusIndex`` (FLAT, exact through per-attribute shortlists
  re-scored from the stored vectors), the filter as a Milvus expression;
* ground truth: numpy brute force over all items (weighted sum, filter mask, ties by row).

Reported: ingest items/s (vectors in, index searchable; no embedding), p50/p99 latency per query
and recall@10 against the ground truth, for one attribute and two weighted attributes, unfiltered
and with two filters (~12% and ~2.5% of the items), plus the mean shortlist rounds of Milvus.

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
from search_ann import clustered_embeddings, percentiles  # noqa: E402

from agman.data.spec import Attribute  # noqa: E402
from agman.fileio import atomic_write_json  # noqa: E402
from agman.retrieval.catalog import CatalogItem, CatalogSchema  # noqa: E402
from agman.retrieval.filters import compile_filter  # noqa: E402
from agman.retrieval.index import (  # noqa: E402
    FORMAT_VERSION,
    IndexConfig,
    IndexLayout,
    Item,
    atomic_write_faiss,
    fill_faiss_index,
    new_faiss_index,
    write_items,
)
from agman.retrieval.search import Retriever, exact_scores, rank_order  # noqa: E402

D = 1024
K = 10
CATEGORIES = ["dress", "skirt", "coat", "shirt", "trousers"]
FILTERS = {
    "none": None,
    "12%": 'price < 30 and category in ["dress", "skirt"]',
    "2.5%": "in_stock and price < 5",
}


def make_catalog(n: int, n_attr: int, n_queries: int, seed: int):
    """Vectors ``[n, A, D]``, queries ``[Q, A, D]`` and items with metadata."""
    clusters = max(10, n // 1000)
    vectors = np.empty((n, n_attr, D), dtype=np.float32)
    queries = np.empty((n_queries, n_attr, D), dtype=np.float32)
    for a in range(n_attr):
        vectors[:, a] = clustered_embeddings(n, D, seed=1000 * (20 + a) + 1, n_clusters=clusters)
        queries[:, a] = clustered_embeddings(n_queries, D, seed=1000 * (20 + a) + 2, n_clusters=clusters)
    rng = np.random.default_rng(seed)
    price = np.round(rng.uniform(0, 100, n), 2)
    category = rng.integers(0, len(CATEGORIES), n)
    in_stock = rng.random(n) < 0.5
    items = [
        CatalogItem(
            f"sku-{i:07d}",
            f"img/{i:07d}.jpg",
            {},
            {"price": float(price[i]), "category": CATEGORIES[category[i]], "in_stock": bool(in_stock[i])},
        )
        for i in range(n)
    ]
    return vectors, queries, items


def write_faiss_index(root: Path, schema: CatalogSchema, vectors: np.ndarray, items: list[CatalogItem]) -> float:
    """An index folder as ``agman index`` writes it (flat), from precomputed vectors; seconds taken."""
    started = time.perf_counter()
    layout = IndexLayout(root)
    root.mkdir(parents=True)
    config = IndexConfig("flat")
    write_items(layout.items, [Item(it.id, str(root / it.path), dict(it.labels)) for it in items])
    faiss_meta = {}
    for a in range(vectors.shape[1]):
        block = np.ascontiguousarray(vectors[:, a])
        layout.vectors(a).parent.mkdir(parents=True, exist_ok=True)
        block.tofile(layout.vectors(a))
        index = new_faiss_index(config, D, len(items))
        fill_faiss_index(index, block)
        atomic_write_faiss(layout.faiss(a), index)
        faiss_meta[str(a)] = {"trained_on": len(items), "factory": "Flat"}
    atomic_write_json(
        layout.meta,
        {
            "format_version": FORMAT_VERSION,
            "checkpoint": {
                "identity": "bench",
                "path": str(root / "none.pt"),
                "model_name": "bench",
                "model_config": {},
                "input_size": 224,
                "crop_ratio": 0.875,
                "epoch": 0,
            },
            "model_name": "bench",
            "attributes": [{"name": a.name, "values": list(a.values)} for a in schema.attributes],
            "dim": D,
            "index": config.to_dict(),
            "faiss": faiss_meta,
            "count": len(items),
        },
    )
    return time.perf_counter() - started


def truth(vectors, query, weights_idx, mask, k):
    rows = np.flatnonzero(mask) if mask is not None else np.arange(len(vectors))
    total = np.zeros(len(rows))
    for a, w in weights_idx:
        total += w * exact_scores(vectors[rows, a], query[a]).astype(np.float64)
    return rows[rank_order(total, rows)[:k]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--attributes", type=int, default=2)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="10k items, 50 queries")
    ap.add_argument("--batch", type=int, default=10_000, help="items per Milvus add() call")
    ap.add_argument("--milvus-uri", default=None, help="a Milvus server; default: a Milvus Lite file in a temp dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.quick:
        args.items, args.queries = 10_000, 50
    import faiss
    import milvus_lite
    import pymilvus

    from agman.retrieval.milvus import MilvusIndex

    faiss.omp_set_num_threads(1)
    print(
        f"n={args.items:,} A={args.attributes} D={D} queries={args.queries}; python {platform.python_version()}, "
        f"faiss {faiss.__version__}, pymilvus {pymilvus.__version__}, milvus-lite {milvus_lite.__version__}",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="milvus-bench-"))
    results: dict = {"n": args.items, "attributes": args.attributes, "dim": D, "queries": args.queries, "rows": []}
    try:
        t = time.perf_counter()
        vectors, queries, items = make_catalog(args.items, args.attributes, args.queries, args.seed)
        attrs = tuple(Attribute(f"attr{a}", ("v0", "v1")) for a in range(args.attributes))
        schema = CatalogSchema.create(attrs, {"price": "number", "category": "string", "in_stock": "bool"})
        columns = schema.columns(items)
        print(f"data: {time.perf_counter() - t:.1f}s", flush=True)

        # ---- ingest
        faiss_s = write_faiss_index(work / "faiss", schema, vectors, items)
        uri = args.milvus_uri or str(work / "catalog.db")
        t = time.perf_counter()
        milvus = MilvusIndex.create(
            uri, schema=schema, dim=D, checkpoint={"identity": "bench"}, collection=f"bench_{int(time.time())}"
        )
        for lo in range(0, args.items, args.batch):
            milvus.add(items[lo : lo + args.batch], vectors[lo : lo + args.batch])
            print(f"  milvus: {min(args.items, lo + args.batch):,} items, {time.perf_counter() - t:.0f}s", flush=True)
        milvus_s = time.perf_counter() - t
        results["ingest"] = {"faiss_items_per_s": args.items / faiss_s, "milvus_items_per_s": args.items / milvus_s}
        print(
            f"ingest items/s: FAISS {args.items / faiss_s:,.0f}   Milvus {args.items / milvus_s:,.0f}   "
            f"(Milvus / FAISS {faiss_s / milvus_s:.3f}x)",
            flush=True,
        )
        retriever = Retriever.open(work / "faiss")
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
            widx = [(int(n[4:]), w) for n, w in weights.items()]
            for fname, flt in FILTERS.items():
                mask = compile_filter(flt, schema.fields()).mask(columns, len(items)) if flt else None
                want = [truth(vectors, q, widx, mask, K) for q in queries]
                row = {"query": wname, "filter": fname, "selected": int(mask.sum()) if mask is not None else args.items}

                def faiss_search(q):
                    excluded = ()
                    if flt:
                        m = compile_filter(flt, schema.fields()).mask(columns, len(items))
                        excluded = np.flatnonzero(~m)
                    return [h.row for h in retriever.search(q, weights, K, exclude=excluded).hits]

                def milvus_search(q, stats):
                    res = milvus.search(q, weights, K, filter=flt)
                    stats.append((res.rounds, res.scanned))
                    return res.rows.tolist()

                for backend, fn in (("FAISS", faiss_search), ("Milvus", milvus_search)):
                    stats: list = []
                    call = fn if backend == "FAISS" else (lambda q, s=stats: milvus_search(q, s))
                    call(queries[0])
                    stats.clear()
                    times, found = [], []
                    for q in queries:
                        t0 = time.perf_counter()
                        found.append(call(q))
                        times.append(time.perf_counter() - t0)
                    p50, p99 = percentiles(times)
                    recall = sum(len(set(f) & set(w.tolist())) for f, w in zip(found, want)) / sum(len(w) for w in want)
                    rounds = float(np.mean([s[0] for s in stats])) if stats else None
                    row[backend] = {
                        "p50_ms": p50,
                        "p99_ms": p99,
                        "recall@10": recall,
                        "rounds": rounds,
                        "scans": sum(s[1] for s in stats),
                    }
                    ratio = "" if backend == "FAISS" else f"{p50 / row['FAISS']['p50_ms']:.2f}x"
                    print(
                        f"{wname:<22} {fname:<6} {backend:<7} {p50:9.2f} {p99:9.2f} {recall:10.4f} "
                        f"{'' if rounds is None else f'{rounds:.2f}':>7}  {ratio:>12}",
                        flush=True,
                    )
                results["rows"].append(row)
        milvus.drop()
        milvus.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        atomic_write_json(args.json, results)


if __name__ == "__main__":
    main()
