"""DDP on CPU: two gloo processes train a few steps; the replicas must hold identical weights."""
from __future__ import annotations

import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp

from agman.engine import distributed as D


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from test_engine_train import tiny_config

    from agman.engine.train import train

    cfg = tiny_config(root, out, epochs=2, triplets_per_epoch=16, batch_size=4, threads=1)
    cfg.loss.weighting = "learned"  # loss weights with gradients, to check they are averaged
    result = train(cfg)
    state = {f"model.{k}": v for k, v in result.model.state_dict().items()}
    state |= {f"loss.{k}": v for k, v in result.criterion.state_dict().items()}
    torch.save({"state": state, "steps": len(result.history)}, os.path.join(out, f"replica{rank}.pt"))


def test_two_gloo_processes_keep_identical_replicas(asen_root, tmp_path):
    out = tmp_path / "ddp"
    mp.spawn(_worker, args=(2, _free_port(), str(asen_root), str(out)), nprocs=2, join=True)
    r0 = torch.load(out / "replica0.pt", weights_only=True)
    r1 = torch.load(out / "replica1.pt", weights_only=True)
    assert r0["steps"] == r1["steps"] == 2
    assert r0["state"].keys() == r1["state"].keys()
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    # the loss weights learned too (their gradients are averaged outside DDP)
    assert not torch.equal(r0["state"]["loss.weighting.log_weights"], torch.zeros(2))
    # only rank 0 writes the run folder, and its checkpoint is the replicas' state
    from agman.engine.checkpoint import load_checkpoint

    ck = load_checkpoint(out / "last.pt")
    assert ck["world_size"] == 2
    for k, v in ck["state_dict"].items():
        assert torch.equal(v, r0["state"][f"model.{k}"]), k


def test_shard_gives_equal_disjoint_shares():
    rows = np.arange(11)
    parts = [D.shard(rows, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [3, 3, 3]
    assert len(set(np.concatenate(parts).tolist())) == 9
    assert D.shard(rows, 0, 1) is rows


def test_single_process_context(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ctx = D.init_distributed("cpu")
    assert not ctx.enabled and ctx.is_main and ctx.device == torch.device("cpu")
    assert D.all_reduce_mean({"a": 1.0}, ctx) == {"a": 1.0}
    assert D.broadcast_flag(True, ctx) is True
