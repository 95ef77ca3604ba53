"""FAISS indexes of one attribute's embeddings: the factory string per index type, training and
filling, per-call search parameters, and atomic reads/writes of the index files.

Exact indexes use the inner product; approximate ones the L2 metric over the unit-norm embeddings
(``ip = 1 - l2^2 / 2``: the same ranking).  FAISS row ``i`` is catalog row ``i``.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from agman.errors import InvalidValueError
from agman.fileio import atomic_write
from agman.retrieval.info import IndexConfig


def import_faiss():
    """``faiss``, with its loader's INFO lines about CPU-specific builds silenced."""
    loader = logging.getLogger("faiss.loader")
    if loader.level < logging.WARNING:
        loader.setLevel(logging.WARNING)
    import faiss

    return faiss


def auto_nlist(n: int) -> int:
    """Inverted-list count for ``n`` items: about 4*sqrt(n), with >= 39 training points per list."""
    return max(1, min(round(4 * math.sqrt(max(n, 1))), n // 39))


def auto_pq_m(d: int) -> int:
    """PQ sub-quantizers: one per 8 dimensions (a divisor of ``d``)."""
    m = max(1, d // 8)
    while d % m:
        m -= 1
    return m


def factory_string(config: IndexConfig, d: int, n: int) -> tuple[str, int]:
    """``(faiss.index_factory description, metric)`` for ``n`` items of dimension ``d``."""
    faiss = import_faiss()

    if config.kind == "flat":
        return "Flat", faiss.METRIC_INNER_PRODUCT
    if config.kind == "hnsw":
        return f"HNSW{config.hnsw_m},Flat", faiss.METRIC_L2
    nlist = config.nlist or auto_nlist(n)
    if config.kind == "ivf":
        return f"IVF{nlist},Flat", faiss.METRIC_L2
    if config.kind == "ivf-sq8":
        return f"IVF{nlist},SQ8", faiss.METRIC_L2
    m = config.pq_m or auto_pq_m(d)
    if d % m:
        raise InvalidValueError(f"pq_m={m} must divide the embedding size {d}")
    nbits = 8 if n >= 256 * 39 else max(1, min(8, int(math.log2(max(n // 39, 2)))))
    return f"IVF{nlist},PQ{m}x{nbits}", faiss.METRIC_L2


def new_faiss_index(config: IndexConfig, d: int, n: int):
    """An empty FAISS index of ``config``'s type for ``n`` items (approximate ones still untrained)."""
    faiss = import_faiss()

    description, metric = factory_string(config, d, n)
    index = faiss.index_factory(d, description, metric)
    inner = faiss.downcast_index(index)
    if config.kind == "hnsw":
        inner.hnsw.efConstruction = config.ef_construction
    if hasattr(inner, "cp"):  # small catalogs: fewer than 39 points per cell is fine, say nothing
        inner.cp.min_points_per_centroid = 1
    if hasattr(inner, "pq"):
        inner.pq.cp.min_points_per_centroid = 1
    return index


def train_sample(vectors: np.ndarray, n_max: int, seed: int = 0) -> np.ndarray:
    """At most ``n_max`` rows of ``vectors`` (a random subset in row order), as a float32 copy."""
    n = len(vectors)
    if n <= n_max:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, n_max, replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def fill_faiss_index(index, vectors: np.ndarray, *, chunk: int = 65536, train_max: int = 256 * 1024) -> None:
    """Train ``index`` where needed (on a sample of at most ``train_max`` rows) and add ``vectors``."""
    if not index.is_trained:
        index.train(train_sample(vectors, train_max))
    for lo in range(0, len(vectors), chunk):
        index.add(np.ascontiguousarray(vectors[lo : lo + chunk], dtype=np.float32))


def search_params(index, config: IndexConfig, k: int, allowed: np.ndarray | None = None, count: int = 0):
    """FAISS search parameters for one call: ``nprobe`` (IVF), ``efSearch`` (HNSW, at least ``k``),
    and a selector restricting the search to the ``allowed`` rows (of ``count``: a bitmap when they
    are many, a hash set when few); ``None`` when there is nothing to set.  Per call, so concurrent
    searches never share mutable settings."""
    faiss = import_faiss()

    inner = faiss.downcast_index(index)
    if hasattr(inner, "hnsw"):
        params = faiss.SearchParametersHNSW(efSearch=max(config.ef_search, k))
    elif hasattr(inner, "nprobe"):
        params = faiss.SearchParametersIVF(nprobe=min(config.nprobe, inner.nlist))
    elif allowed is not None:
        params = faiss.SearchParameters()
    else:
        return None
    if allowed is not None:
        allowed = np.ascontiguousarray(allowed, dtype=np.int64)
        if count and len(allowed) * 64 > count:  # a bitmap of count bits is the smaller and faster
            mask = np.zeros(count, dtype=bool)
            mask[allowed] = True
            bits = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(count, faiss.swig_ptr(bits))
            params._bits = bits  # keep the bitmap alive as long as the selector
        else:
            selector = faiss.IDSelectorBatch(allowed)
        params.sel = selector
        params._selector = selector  # keep the selector alive as long as the parameters
    return params


def similarities(index, distances: np.ndarray) -> np.ndarray:
    """FAISS's answers as inner products: as they are for an inner-product index, ``1 - d / 2``
    for squared L2 distances between unit vectors."""
    faiss = import_faiss()

    if index.metric_type == faiss.METRIC_INNER_PRODUCT:
        return distances
    return 1.0 - distances / 2.0


def read_faiss(path: Path):
    return import_faiss().read_index(str(path))


def write_faiss(path: Path, index) -> None:
    """Write ``index`` atomically (temp file + rename)."""
    faiss = import_faiss()
    atomic_write(path, lambda f: faiss.write_index(index, faiss.PyCallbackIOWriter(f.write)))
