"""A real Milvus server at scale against the FAISS index folder, on the same machine, same run.

The catalog (``bench/catalog_data.py``): ``--items`` items (default 1,000,000) x ``--attributes``
(2) clustered unit vectors of D ``--dim`` (256), metadata ``price`` (number, 0-100),
``category`` (string) and ``in_stock``; ``price < 1`` passes 1 % of the items.

* **Milvus server**: ``milvus-server`` (PyPI ``milvus`` 2.3.x standalone, started here on free ports
  by ``tests/milvus_server.py``, or ``--uri`` for one already running), collections written by
  agman's ``MilvusStore`` — one ``FLAT``, one ``HNSW`` — searched through agman's ranking (per-attribute
  shortlists from Milvus, re-scored exactly from the stored vectors);
* **folder** (the baseline): agman index folders (``flat``: a numpy scan of the memory-mapped
  vectors; ``hnsw``: FAISS HNSW shortlists re-scored exactly);
* ground truth: numpy brute force (weighted sum over the attributes, the filter's mask, ties by row).

Reported: ingest items/s (vectors in and searchable — for HNSW until Milvus reports every row
indexed), peak RSS of the Milvus server process and of this process's growth while it opens and
searches the folder, p50/p99 single-query latency and recall@10 for one and two attributes,
unfiltered and with the 1 % filter.  Then what agman's exact weighted ranking buys: Milvus's own
``hybrid_search`` with ``WeightedRanker`` (each attribute's top-k merged by the ranker) against the
exact weighted top-k, same k — on Milvus Lite (``--hybrid-uri``), because Milvus 2.3 has no
hybrid search (it came with multi-vector collections in 2.4), over ``--hybrid-items`` items.

    python bench/milvus_scale.py                          # 1M items, D 256, 2 attributes
    python bench/milvus_scale.py --items 100000 --queries 100
    python bench/milvus_scale.py --uri http://host:19530 --server-pid PID
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from catalog_data import make_catalog, write_faiss, write_milvus  # noqa: E402
from milvus_vs_faiss import truth  # noqa: E402
from search_ann import percentiles  # noqa: E402

from agman.retrieval.catalog import CatalogSchema  # noqa: E402
from agman.retrieval.ranking import rank  # noqa: E402
from agman.retrieval.search import Retriever  # noqa: E402

K = 10
FILTERS = {"none": None, "1%": "price < 1"}


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith(field + ":")) / 1024


def milvus_pid(server_pid: int) -> int:
    """The ``milvus run standalone`` process under ``milvus-server`` (itself when it is the binary)."""
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children")
    kids = children.read_text().split() if children.exists() else []
    return int(kids[0]) if kids else server_pid


def wait_indexed(target, n_entities: int, timeout: float = 7200) -> None:
    """Until Milvus reports every entity of the collection in its vector index."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=target.uri, token=target.token or "")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = client.list_indexes(target.collection)
        d = client.describe_index(target.collection, names[0])
        if int(d.get("indexed_rows", 0)) >= n_entities and int(d.get("pending_index_rows", 0)) == 0:
            break
        time.sleep(2)
    client.close()


def measure(retriever, weights, text, queries, want) -> dict:
    store = retriever.store
    parsed = retriever.parse_attributes(weights)
    flt = retriever.compile_filter(text)
    selection = store.select(flt)
    retriever.search(queries[0], weights, K, filter=text)  # warm-up through the public API
    times, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        found.append(rank(store, q, parsed, K, selection).rows)  # what Retriever.search ranks by
        times.append(time.perf_counter() - t0)
    p50, p99 = percentiles(times)
    recall = sum(len(set(f.tolist()) & set(w.tolist())) for f, w in zip(found, want)) / sum(len(w) for w in want)
    return {"p50_ms": p50, "p99_ms": p99, "recall@10": recall}


def hybrid_recall(uri: str, vectors, queries, weights: list[float], k: int) -> dict:
    """Milvus's hybrid_search with WeightedRanker (one vector field per attribute) vs the exact weighted top-k."""
    from pymilvus import AnnSearchRequest, DataType, MilvusClient, WeightedRanker

    n, n_attr, dim = vectors.shape
    client = MilvusClient(uri=uri)
    name = "hybrid"
    schema = client.create_schema(auto_id=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    for a in range(n_attr):
        schema.add_field(f"v{a}", DataType.FLOAT_VECTOR, dim=dim)
    params = client.prepare_index_params()
    for a in range(n_attr):
        params.add_index(field_name=f"v{a}", index_type="FLAT", metric_type="IP")
    client.create_collection(name, schema=schema, index_params=params, consistency_level="Strong")
    for lo in range(0, n, 5000):
        client.insert(name, [{"pk": lo + i, **{f"v{a}": vectors[lo + i, a] for a in range(n_attr)}}
                             for i in range(min(5000, n - lo))])
    client.flush(name)
    client.load_collection(name)
    pairs = list(enumerate(weights))
    out = {}
    for norm in (True, False):
        hits = total = 0
        for q in queries:
            reqs = [AnnSearchRequest(data=[q[a].tolist()], anns_field=f"v{a}", param={"metric_type": "IP"}, limit=k)
                    for a in range(n_attr)]
            got = client.hybrid_search(name, reqs, WeightedRanker(*weights, norm_score=norm), limit=k)[0]
            want = truth(vectors, q, pairs, None, k)
            hits += len({int(h["pk"]) for h in got} & set(want.tolist()))
            total += len(want)
        out[f"norm_score={norm}"] = hits / total
    client.drop_collection(name)
    client.close()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--attributes", type=int, default=2)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--batch", type=int, default=20_000, help="items per Milvus commit")
    ap.add_argument("--types", default="flat,hnsw", help="index types to measure (flat, hnsw)")
    ap.add_argument("--uri", help="a running Milvus server (default: start milvus-server here)")
    ap.add_argument("--server-pid", type=int, help="with --uri: the server's pid, for its RSS")
    ap.add_argument("--hybrid-uri", help="Milvus with hybrid_search (default: a Milvus Lite file in the temp dir)")
    ap.add_argument("--hybrid-items", type=int, default=100_000, help="items in the hybrid_search comparison (0: skip it)")
    ap.add_argument("--work", help="scratch folder (default: a temp dir, removed after)")
    args = ap.parse_args(argv)
    import pymilvus

    from agman.retrieval.backends.milvus.client import MilvusTarget

    work = Path(args.work or tempfile.mkdtemp(prefix="milvus-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    server = None
    results: dict = {"n": args.items, "attributes": args.attributes, "dim": args.dim, "rows": [], "ingest": {}}
    try:
        uri, pid = args.uri, args.server_pid
        if uri is None:
            sys.path.insert(0, str(HERE.parent / "tests"))
            from milvus_server import MilvusServer

            server = MilvusServer(work / "milvus-server").start()
            uri, pid = server.uri, server.proc.pid
        mpid = milvus_pid(pid) if pid else None
        print(f"n={args.items:,} A={args.attributes} D={args.dim} queries={args.queries}; pymilvus "
              f"{pymilvus.__version__}; Milvus server at {uri}"
              + (f" (RSS {rss_mb(mpid):.0f} MB idle)" if mpid else ""), flush=True)
        t = time.perf_counter()
        vectors, queries, items = make_catalog(args.items, args.attributes, args.dim, args.queries)
        print(f"data: {time.perf_counter() - t:.1f}s", flush=True)
        kinds = args.types.split(",")
        retrievers = {}
        for kind in kinds:
            seconds = write_faiss(work / f"folder-{kind}", vectors, items, kind=kind)
            results["ingest"][f"folder {kind}"] = args.items / seconds
            print(f"ingest folder {kind}: {args.items / seconds:,.0f} items/s ({seconds:.0f} s)", flush=True)
            target = MilvusTarget(uri, f"scale_{kind}_{int(time.time())}", consistency="Session")
            seconds = write_milvus(target, vectors, items, args.batch, report=lambda m: None, kind=kind)
            if kind != "flat":
                started = time.perf_counter() - seconds
                wait_indexed(target, args.items * args.attributes)
                seconds = time.perf_counter() - started
            results["ingest"][f"milvus {kind}"] = args.items / seconds
            print(f"ingest milvus {kind}: {args.items / seconds:,.0f} items/s ({seconds:.0f} s)", flush=True)
            retrievers[f"milvus {kind}"] = target
        folder_rss0 = rss_mb(os.getpid())
        opened = {}
        for kind in kinds:
            opened[f"folder {kind}"] = Retriever.open(work / f"folder-{kind}")
            opened[f"milvus {kind}"] = Retriever.open(retrievers[f"milvus {kind}"])
        schema = CatalogSchema.of(opened[f"folder {kinds[0]}"].info)
        columns = schema.columns(opened[f"folder {kinds[0]}"].store.items)
        gc.collect()

        weight_sets = {"1 attribute": {"attr0": 1.0}, "2 attributes (1, 2)": {"attr0": 1.0, "attr1": 2.0}}
        if args.attributes < 2:
            weight_sets.pop("2 attributes (1, 2)")
        print(f"\n{'query':<20} {'filter':<6} {'backend':<13} {'p50 ms':>9} {'p99 ms':>9} {'recall@10':>10} "
              f"{'p50 vs folder':>14}", flush=True)
        for wname, weights in weight_sets.items():
            pairs = [(int(n[4:]), w) for n, w in weights.items()]
            for fname, text in FILTERS.items():
                flt = opened[f"folder {kinds[0]}"].compile_filter(text)
                mask = flt.mask(columns, len(items)) if flt else None
                want = [truth(vectors, q, pairs, mask, K) for q in queries]
                row = {"query": wname, "filter": fname, "selected": int(mask.sum()) if mask is not None else args.items}
                for kind in kinds:
                    for backend in (f"folder {kind}", f"milvus {kind}"):
                        m = measure(opened[backend], weights, text, queries, want)
                        row[backend] = m
                        base = row[f"folder {kind}"]["p50_ms"]
                        print(f"{wname:<20} {fname:<6} {backend:<13} {m['p50_ms']:9.2f} {m['p99_ms']:9.2f} "
                              f"{m['recall@10']:10.4f} {m['p50_ms'] / base:13.2f}x", flush=True)
                results["rows"].append(row)
        results["rss_mb"] = {"folder (this process, growth while open and searching)":
                             rss_mb(os.getpid()) - folder_rss0}
        if mpid:
            results["rss_mb"]["milvus server (peak)"] = rss_mb(mpid, "VmHWM")
        for name, value in results["rss_mb"].items():
            print(f"RSS {name}: {value:,.0f} MB", flush=True)
        for backend, retriever in opened.items():
            if backend.startswith("milvus"):
                retriever.store.drop()
                retriever.store.close()
        del opened
        gc.collect()

        if args.attributes >= 2 and args.hybrid_items > 0:
            n = min(args.hybrid_items, args.items)
            weights = [1.0, 2.0] + [1.0] * (args.attributes - 2)
            started = time.perf_counter()
            recall = hybrid_recall(args.hybrid_uri or str(work / "hybrid.db"), vectors[:n], queries, weights, K)
            results["hybrid"] = {"items": n, "weights": weights, "recall@10": recall}
            exact = results["rows"][2].get("milvus flat", {}).get("recall@10")
            agman = f"; agman's weighted ranking on Milvus FLAT above: {exact:.4f}" if exact is not None else ""
            print(f"\nhybrid_search + WeightedRanker{tuple(weights)}, {n:,} items, k={K}: recall@10 "
                  + ", ".join(f"{k} {v:.4f}" for k, v in recall.items())
                  + f" ({time.perf_counter() - started:.0f} s){agman}", flush=True)
    finally:
        if server is not None:
            server.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
