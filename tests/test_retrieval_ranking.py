"""Exact weighted top k from per-attribute shortlists: equal to a full scan whatever the shortlist
sizes, ties and filters; approximate backends get one re-scored round."""

from __future__ import annotations

import numpy as np
import pytest

from agman.retrieval.info import IndexConfig
from agman.retrieval.query import AttributeWeights
from agman.retrieval.ranking import exact_scores, rank, rank_order
from agman.retrieval.store import Selection


class NumpyStore:
    """A store over numpy arrays ranked through shortlists (``in_memory`` False, as a database): exact
    per-attribute top m among the selected rows, with scores perturbed by up to ``noise`` (a
    database's own float rounding), or (``exact`` False) a poor approximate index.  Counts the rows
    it re-scores (of the first queried attribute), the shortlist sizes asked for, and scans."""

    in_memory = False
    location = "numpy"

    def __init__(self, vectors, query, allowed, noise=0.0, seed=0, exact=True, limit=10_000):
        self._vectors, self.query, self.allowed = vectors, query, np.asarray(allowed, dtype=np.int64)
        self.config = IndexConfig("flat" if exact else "hnsw", rerank=10)
        self.shortlist_limit = limit
        self.scored = 0
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.calls: list[int] = []
        self.scanned = False
        self.first: int | None = None

    def select(self, flt=None, exclude=()):
        return Selection(len(self.allowed), self.allowed)

    def shortlist(self, a, query, m, selection):
        self.calls.append(m)
        self.first = a if self.first is None else self.first
        rows = selection.rows
        s = exact_scores(self._vectors[rows, a], query).astype(np.float64)
        s = s + self.rng.uniform(-self.noise, self.noise, len(s))
        order = np.argsort(-s, kind="stable")[:m]
        return rows[order], s[order]

    def vectors(self, a, rows):
        self.first = a if self.first is None else self.first
        self.scored += len(rows) if a == self.first else 0
        return self._vectors[rows, a]

    def similarities(self, a, query, selection, exact=True):
        self.scanned = True
        s = exact_scores(self._vectors[selection.rows, a], query)
        if not exact:  # the store's fast product: within BORDER_EPS of exact
            s = s + self.rng.uniform(-self.noise, self.noise, len(s)).astype(np.float32)
        return selection.rows, s


def top_k(store: NumpyStore, pairs, k, start):
    """``rank`` of the store's query under weights ``[(attribute, weight), ...]``."""
    names = [f"a{j}" for j in range(8)]
    weights = AttributeWeights.parse({names[a]: w for a, w in pairs}, names)
    return rank(store, store.query, weights, k, store.select(), start=start)


def brute(vectors, query, allowed, attrs, k):
    total = np.zeros(len(allowed))
    for a, w in attrs:
        total += w * exact_scores(vectors[allowed, a], query[a]).astype(np.float64)
    order = rank_order(total, allowed)[:k]
    return allowed[order], total[order]


def clustered(n: int, a: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, a, d))
    x = centres[rng.integers(0, 8, n)] + 0.3 * rng.standard_normal((n, a, d))
    return (x / np.linalg.norm(x, axis=2, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("seed", range(12))
def test_top_k_equals_a_full_scan(seed):
    rng = np.random.default_rng(seed)
    vectors = clustered(500, 3, 16, seed)
    query = vectors[rng.integers(500)] + 0.05 * rng.standard_normal((3, 16)).astype(np.float32)
    allowed = np.sort(rng.choice(500, int(rng.integers(1, 501)), replace=False)) if seed % 3 else np.arange(500)
    attrs = [(0, 1.0)] if seed % 4 == 0 else [(0, 2.0), (2, 0.5)] if seed % 4 == 1 else [(0, 1.0), (1, 1.0), (2, 1.0)]
    k = [1, 5, 20, 600][seed % 4]
    backend = NumpyStore(vectors, query, allowed, noise=5e-7, seed=seed)
    got = top_k(backend, attrs, k, start=k + 16)
    rows, totals = brute(vectors, query, allowed, attrs, k)
    assert got.exact
    assert got.rows.tolist() == rows.tolist()
    assert np.array_equal(got.total, totals)  # the same float64 sums, bit for bit
    assert np.allclose(got.per.T @ np.array([w for _, w in attrs]), got.total, atol=1e-6)


def test_ties_rank_by_row_and_shortlists_grow_until_the_bound_holds():
    vectors = clustered(300, 2, 8, 1)
    vectors[100:140] = vectors[5]  # 41 identical items: exact ties across both attributes
    query = vectors[5].copy()
    allowed = np.arange(300)
    backend = NumpyStore(vectors, query, allowed)
    got = top_k(backend, [(0, 1.0), (1, 3.0)], 30, start=4)
    rows, _ = brute(vectors, query, allowed, [(0, 1.0), (1, 3.0)], 30)
    assert got.rows.tolist() == rows.tolist() == [5] + list(range(100, 129))
    assert got.rounds > 1 and backend.calls[0] == 4 and max(backend.calls) >= 64  # grew 4 -> 16 -> 64 ...
    assert not backend.scanned


def test_the_backend_limit_ends_in_an_exact_scan():
    vectors = clustered(400, 2, 8, 2)
    vectors[:, 1] = vectors[0, 1]  # attribute 1 the same everywhere: its border never separates anything
    query = vectors[3]
    allowed = np.arange(400)
    backend = NumpyStore(vectors, query, allowed, limit=8)
    got = top_k(backend, [(0, 1.0), (1, 1.0)], 10, start=2)
    rows, totals = brute(vectors, query, allowed, [(0, 1.0), (1, 1.0)], 10)
    assert backend.scanned and got.scanned and got.exact and got.candidates == 400
    assert got.rows.tolist() == rows.tolist() and np.array_equal(got.total, totals)


def test_fewer_allowed_rows_than_k_and_no_rows():
    vectors = clustered(50, 2, 8, 3)
    backend = NumpyStore(vectors, vectors[0], np.array([3, 7, 9]))
    got = top_k(backend, [(0, 1.0), (1, 1.0)], 10, start=26)
    assert sorted(got.rows.tolist()) == [3, 7, 9] and got.candidates == 3 and got.rounds == 1
    empty = NumpyStore(vectors, vectors[0], np.zeros(0, np.int64))
    got = top_k(empty, [(0, 1.0)], 5, start=10)
    assert got.rows.tolist() == [] and got.candidates == 0


def test_approximate_backends_get_one_rescored_round():
    vectors = clustered(500, 2, 8, 4)
    backend = NumpyStore(vectors, vectors[1], np.arange(500), noise=0.05, seed=4, exact=False)  # a poor index
    got = top_k(backend, [(0, 1.0), (1, 1.0)], 10, start=100)
    assert not got.exact and got.rounds == 1 and not backend.scanned
    # whatever was found is scored exactly
    total = exact_scores(vectors[got.rows, 0], vectors[1, 0]).astype(np.float64) + exact_scores(
        vectors[got.rows, 1], vectors[1, 1]
    ).astype(np.float64)
    assert np.array_equal(got.total, total)


def test_items_outside_every_shortlist_can_win_the_sum_and_are_found():
    """Items best in one attribute are worst in the other; balanced items, in neither top m, win."""

    def unit(first: float) -> list[float]:
        return [first, float(np.sqrt(1 - first * first)), 0.0, 0.0]

    one_sided = [(unit(0.9), unit(-0.9))] * 100 + [(unit(-0.9), unit(0.9))] * 100
    balanced = [(unit(0.6), unit(0.6))] * 10
    vectors = np.asarray(one_sided + balanced, dtype=np.float32)
    query = np.asarray([[1, 0, 0, 0], [1, 0, 0, 0]], dtype=np.float32)
    backend = NumpyStore(vectors, query, np.arange(len(vectors)))
    got = top_k(backend, [(0, 1.0), (1, 1.0)], 5, start=8)
    assert got.rows.tolist() == [200, 201, 202, 203, 204]  # the balanced ones, ties by row
    assert np.allclose(got.total, 1.2, atol=1e-6)
    assert got.rounds >= 3 and not backend.scanned  # 8 -> 32 -> 128: only then do they enter a shortlist


def test_only_candidates_that_can_still_make_the_top_k_are_rescored():
    vectors = clustered(3000, 2, 16, 5)
    backend = NumpyStore(vectors, vectors[7], np.arange(3000), noise=5e-7, seed=5)
    got = top_k(backend, [(0, 1.0)], 10, start=500)
    rows, totals = brute(vectors, vectors[7], np.arange(3000), [(0, 1.0)], 10)
    assert got.rows.tolist() == rows.tolist() and np.array_equal(got.total, totals)
    assert backend.scored <= 48  # of a 500-row shortlist: batches of 16, 32 at most


class ScannedStore(NumpyStore):
    """An in-memory exact store (as a FAISS folder): ranked by a scan of approximate products."""

    in_memory = True


@pytest.mark.parametrize("seed", range(8))
def test_a_scan_of_approximate_products_ranks_exactly(seed):
    """The scan picks candidates by the store's fast product (here off by up to 5e-6) and returns
    the exact top k, ties by row, even when near-ties at the border make it look further."""
    rng = np.random.default_rng(seed)
    vectors = clustered(2000, 2, 16, seed)
    vectors[500:560] = vectors[7]  # 61 exact ties
    query = vectors[7] + (0.05 * rng.standard_normal((2, 16)).astype(np.float32) if seed % 2 else 0)
    allowed = np.sort(rng.choice(2000, 1500, replace=False)) if seed % 3 == 0 else np.arange(2000)
    attrs = [(0, 1.0)] if seed % 4 < 2 else [(0, 2.0), (1, 0.5)]
    k = [1, 10, 40, 100][seed % 4]
    store = ScannedStore(vectors, query, allowed, noise=5e-6, seed=seed)
    got = top_k(store, attrs, k, start=None)
    rows, totals = brute(vectors, query, allowed, attrs, k)
    assert got.exact and got.scanned and got.candidates == len(allowed)
    assert got.rows.tolist() == rows.tolist()
    assert np.array_equal(got.total, totals)
    assert 0 < store.scored < len(allowed) / 4  # only candidates were re-scored
