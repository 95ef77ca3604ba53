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


def test_milvus_scale_benchmark_on_the_server_reports_exact_flat_rankings(milvus_server, tmp_path):
    pytest.importorskip("milvus_lite")  # the hybrid_search comparison runs on Milvus Lite
    result = load("milvus_scale").main([
        "--items", "1500", "--dim", "32", "--queries", "5", "--batch", "500", "--uri", milvus_server.uri,
        "--hybrid-items", "1500", "--work", str(tmp_path),
    ])
    assert len(result["rows"]) == 4 and set(result["ingest"]) == {"folder flat", "milvus flat", "folder hnsw",
                                                                   "milvus hnsw"}
    for row in result["rows"]:
        assert row["folder flat"]["recall@10"] == 1.0 and row["milvus flat"]["recall@10"] == 1.0, row
    assert {"norm_score=True", "norm_score=False"} == set(result["hybrid"]["recall@10"])
    assert all(0 <= r <= 1 for r in result["hybrid"]["recall@10"].values())
