"""The catalog benchmarks run at tiny sizes and report what they promise (their figures are in
docs/retrieval.md, measured at full size)."""
from __future__ import annotations

import pytest
from test_engine_bench import load


def test_flat_search_benchmark_agrees_with_numpy():
    result = load("flat_search").main(["--items", "3000", "--dim", "64", "--queries", "20"])
    assert result["agree"] == 20  # agman's top k is numpy's
    assert {"numpy X @ q + argpartition", "agman flat (Retriever.search)"} <= set(result["rows"])
    assert all(row["p50_ms"] > 0 for row in result["rows"].values())


def test_milvus_benchmark_runs_and_both_backends_are_exact():
    pytest.importorskip("milvus_lite")
    bench = load("milvus_vs_faiss")
    bench.D = 32
    result = bench.main(["--items", "1200", "--queries", "4", "--batch", "600"])
    assert result["ingest"]["milvus_items_per_s"] > 0 and len(result["rows"]) == 6
    for row in result["rows"]:
        assert row["FAISS"]["recall@10"] == 1.0 and row["Milvus"]["recall@10"] == 1.0, row
