"""Indexing on several processes (torchrun's environment, gloo on CPU): each rank embeds its share of
the batches, rank 0 commits; the index equals a one-process build bit for bit, also when a
two-process run is interrupted and finished by one process."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_retrieval_index import tiny_checkpoint, tiny_dataset

from agman.data.layouts import open_dataset
from agman.retrieval.backends.faiss.store import FaissStore
from agman.retrieval.build import batch_runs, build_index
from agman.retrieval.imagesets import from_split


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, ds: str, ckpt: str, out, fail_rank: int, fail_at: str = "embed",
            report: str | None = None, work: str | None = None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from agman.engine.distributed import cleanup, init_distributed
    from agman.retrieval.backends.milvus.store import MilvusStore

    ctx = init_distributed("cpu")
    seen, written = [], []

    def on_shard(done, total):
        seen.append(done)
        if rank == fail_rank and fail_at == "embed":
            raise RuntimeError(f"rank {rank} stops after its first shard")

    real = MilvusStore.write_block

    def write_block(self, items, start, block, skipped, first_row):
        if written and rank == fail_rank and fail_at == "write":
            raise RuntimeError(f"rank {rank} stops after writing its first shard")
        real(self, items, start, block, skipped, first_row)
        written.append(len(block))

    MilvusStore.write_block = write_block
    try:
        images = from_split(open_dataset(ds), "test")
        summary = build_index(out, images, ckpt, batch_size=4, shard_size=8, distributed=ctx, on_shard=on_shard,
                              work=work)
        result = {"count": summary.count, "embedded": summary.embedded, "error": None}
    except Exception as exc:
        result = {"error": str(exc)}
    finally:
        cleanup(ctx)
    result["written"] = sum(written)
    with open(os.path.join(report or os.path.dirname(out), f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def run_ranks(tmp_path, ds, ckpt, out, fail_rank=-1, fail_at="embed", work=None) -> list[dict]:
    args = (2, _free_port(), str(ds), str(ckpt), out if not isinstance(out, Path) else str(out), fail_rank, fail_at,
            str(tmp_path), None if work is None else str(work))
    mp.spawn(_worker, args=args, nprocs=2, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    ds = tiny_dataset(tmp / "ds", n_test=30)
    spec = open_dataset(ds)
    ckpt = tiny_checkpoint(tmp / "ckpt.pt", spec.attributes)
    one = tmp / "one"
    build_index(one, from_split(spec, "test"), ckpt, batch_size=4, shard_size=8)
    return ds, ckpt, FaissStore(one)


def assert_same_index(a: FaissStore, b: FaissStore) -> None:
    assert [(it.id, it.path, it.labels) for it in a.items] == [(it.id, it.path, it.labels) for it in b.items]
    for attr in range(len(a.info.attributes)):
        assert np.array_equal(np.asarray(a.vectors(attr)), np.asarray(b.vectors(attr)))  # bit for bit


def test_two_processes_index_what_one_process_does(catalog, tmp_path):
    ds, ckpt, one = catalog
    out = tmp_path / "two"
    results = run_ranks(tmp_path, ds, ckpt, out)
    assert [r["error"] for r in results] == [None, None]
    assert results[0]["count"] == 30
    assert [r["embedded"] for r in results] == [16, 14]  # 8 batches of 4 (the last of 2): 4 batches each
    assert not (out / "progress.json").exists() and not (out / "shards").exists()
    assert_same_index(FaissStore(out), one)


def test_an_interrupted_two_process_run_is_finished_by_one_process(catalog, tmp_path):
    ds, ckpt, one = catalog
    out = tmp_path / "two"
    results = run_ranks(tmp_path, ds, ckpt, out, fail_rank=1)
    assert "rank 1 stops" in results[1]["error"]
    assert "another process of this torchrun failed" in results[0]["error"]  # rank 0 did not wait for ever
    kept = json.loads((out / "shards" / "rank-001.json").read_text())
    assert [(s["start"], s["count"]) for s in kept] == [(16, 8)]  # rank 1's first shard is kept
    assert FaissStore(out).count == 0
    summary = build_index(out, from_split(open_dataset(ds), "test"), ckpt, batch_size=4, shard_size=8)
    assert summary.count == 30 and summary.embedded < 30
    assert_same_index(FaissStore(out), one)


def test_batches_are_shared_out_in_contiguous_runs():
    assert batch_runs(list(range(8)), 2, 0) == [(0, 4)]
    assert batch_runs(list(range(8)), 2, 1) == [(4, 8)]
    assert batch_runs([0, 1, 4, 5, 6], 2, 0) == [(0, 2)] and batch_runs([0, 1, 4, 5, 6], 2, 1) == [(4, 7)]
    assert batch_runs([0, 1, 4, 5, 6], 1, 0) == [(0, 2), (4, 7)]
    assert batch_runs([3], 2, 0) == [] and batch_runs([3], 2, 1) == [(3, 4)]


# --------------------------------------------------------------------------- into a Milvus server
def milvus_contents(target) -> tuple[list, list[np.ndarray]]:
    """Every stored (row, id, path, labels) and each attribute's vectors in row order."""
    from agman.retrieval.backends.milvus.store import MilvusStore

    store = MilvusStore.open(target)
    try:
        rows = store.rows()
        items = [(int(r), it.id, it.path, it.labels) for r, it in zip(rows, store.items_of(list(rows)))]
        return items, [store.vectors(a, rows) for a in range(store.n_attributes)]
    finally:
        store.close()


@pytest.fixture(scope="module")
def milvus_one(catalog, milvus_server, tmp_path_factory):
    """The one-process index of the catalog in a collection of the real server."""
    from agman.retrieval.backends.milvus.client import MilvusTarget

    ds, ckpt, _ = catalog
    target = MilvusTarget(milvus_server.uri, "dist_one")
    build_index(target, from_split(open_dataset(ds), "test"), ckpt, batch_size=4, shard_size=8,
                work=tmp_path_factory.mktemp("one-work"))
    return milvus_contents(target)


def test_two_ranks_upsert_their_own_shards_into_a_milvus_server(catalog, milvus_server, milvus_one, tmp_path):
    """`torchrun --nproc_per_node=2 agman index --backend milvus --uri http://...`: each rank writes the
    shards it embedded (rank 0 receives no vector of rank 1) and the collection equals the one-process one."""
    from agman.retrieval.backends.milvus.client import MilvusTarget

    ds, ckpt, _ = catalog
    target = MilvusTarget(milvus_server.uri, "dist_two")
    results = run_ranks(tmp_path, ds, ckpt, target, work=tmp_path / "work")
    assert [r["error"] for r in results] == [None, None]
    assert [r["written"] for r in results] == [16, 14]  # each rank its own share of the 30 items
    assert results[0]["count"] == 30 and not (tmp_path / "work").exists()
    items, vectors = milvus_contents(target)
    assert items == milvus_one[0]
    for a, b in zip(vectors, milvus_one[1]):
        assert np.array_equal(a, b)  # bit for bit


def test_a_rank_that_fails_while_writing_is_resumed_without_rewriting_what_was_written(
    catalog, milvus_server, milvus_one, tmp_path
):
    from agman.retrieval.backends.milvus.client import MilvusTarget

    ds, ckpt, _ = catalog
    target, work = MilvusTarget(milvus_server.uri, "dist_resume"), tmp_path / "work"
    results = run_ranks(tmp_path, ds, ckpt, target, fail_rank=1, fail_at="write", work=work)
    assert "rank 1 stops after writing" in results[1]["error"] and results[1]["written"] == 8
    assert "another process of this torchrun failed while writing" in results[0]["error"]
    assert json.loads((work / "shards" / "written-001.json").read_text()) == ["shard-0000000016.npy"]
    results = run_ranks(tmp_path, ds, ckpt, target, work=work)  # the same command again
    assert [r["error"] for r in results] == [None, None]
    assert [r["embedded"] for r in results] == [0, 0] and [r["written"] for r in results] == [0, 6]
    items, vectors = milvus_contents(target)
    assert items == milvus_one[0]
    for a, b in zip(vectors, milvus_one[1]):
        assert np.array_equal(a, b)
