"""A synthetic catalog for the retrieval benchmarks: clustered unit embeddings per attribute (as in
``bench/search_ann.py``), shop metadata, and writers that put it in a FAISS index folder or a Milvus
collection through agman's own writers (no model: the vectors are given)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_ann import clustered_embeddings  # noqa: E402

from agman.data.spec import Attribute  # noqa: E402
from agman.retrieval.backends.faiss.layout import IndexLayout  # noqa: E402
from agman.retrieval.info import IndexConfig, IndexedCheckpoint, IndexInfo  # noqa: E402
from agman.retrieval.items import Item  # noqa: E402

CATEGORIES = ["dress", "skirt", "coat", "shirt", "trousers"]
METADATA = {"price": "number", "category": "string", "in_stock": "bool"}


def make_catalog(n: int, n_attr: int, dim: int, n_queries: int, seed: int = 0):
    """Vectors ``[n, A, D]``, queries ``[Q, A, D]`` (each attribute its own clusters) and items with
    metadata (price 0-100, one of five categories, in_stock half of them)."""
    clusters = max(10, n // 1000)
    vectors = np.empty((n, n_attr, dim), dtype=np.float32)
    queries = np.empty((n_queries, n_attr, dim), dtype=np.float32)
    for a in range(n_attr):
        vectors[:, a] = clustered_embeddings(n, dim, seed=1000 * (20 + a) + 1, n_clusters=clusters)
        queries[:, a] = clustered_embeddings(n_queries, dim, seed=1000 * (20 + a) + 2, n_clusters=clusters)
    rng = np.random.default_rng(seed)
    price = np.round(rng.uniform(0, 100, n), 2)
    category = rng.integers(0, len(CATEGORIES), n)
    in_stock = rng.random(n) < 0.5
    items = [
        Item(f"sku-{i}", f"/catalog/{i}.jpg", {},
             {"price": float(price[i]), "category": CATEGORIES[category[i]], "in_stock": bool(in_stock[i])})
        for i in range(n)
    ]
    return vectors, queries, items


def info_for(n_attr: int, dim: int, kind: str = "flat") -> IndexInfo:
    attrs = [Attribute(f"attr{a}", ("v0", "v1")) for a in range(n_attr)]
    checkpoint = IndexedCheckpoint("0" * 16, Path("/bench/none.pt"), "bench", 224, 1.0)
    return IndexInfo(checkpoint, attrs, dim, IndexConfig(kind), metadata=dict(METADATA), root="/catalog")


def blocks_of(vectors: np.ndarray, size: int = 10_000):
    return lambda: (vectors[lo : lo + size] for lo in range(0, len(vectors), size))


def write_faiss(folder: Path, vectors: np.ndarray, items: list[Item], kind: str = "flat") -> float:
    """Write the catalog as an index folder; seconds taken."""
    from agman.retrieval.backends.faiss.writer import FaissWriter

    started = time.perf_counter()
    layout = IndexLayout(folder)
    writer = FaissWriter(layout, info_for(vectors.shape[1], vectors.shape[2], kind))
    writer.info.write(layout.info)
    writer.commit(items, blocks_of(vectors), [None] * len(items), [], 0)
    writer.close()
    return time.perf_counter() - started


def write_milvus(target, vectors: np.ndarray, items: list[Item], batch: int = 10_000, report=print,
                 kind: str = "flat") -> float:
    """Write the catalog as a Milvus collection (index ``kind``) in commits of ``batch`` items; seconds taken."""
    from agman.retrieval.backends.milvus.store import MilvusStore

    started = time.perf_counter()
    store = MilvusStore.create(target, info_for(vectors.shape[1], vectors.shape[2], kind))
    for lo in range(0, len(items), batch):
        chunk = items[lo : lo + batch]
        first = store.reserve(len(chunk))
        store.commit(chunk, blocks_of(vectors[lo : lo + batch]), [None] * len(chunk), [], first)
        report(f"  milvus: {lo + len(chunk):,} items, {time.perf_counter() - started:.0f} s")
    store.close()
    return time.perf_counter() - started
