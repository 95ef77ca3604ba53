"""Multi-GPU / multi-node training with ``torchrun`` (DDP), and the same code on one process.

``torchrun --nproc_per_node=N -m agman train --config ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init_distributed` reads them, joins the process group (NCCL on GPU, gloo on
CPU) and picks ``cuda:LOCAL_RANK``.  Each rank trains on its own shard of the epoch's triplets
(:func:`shard`); gradients are averaged by DDP (and by :func:`average_gradients` for parameters
outside the DDP module, such as the Eq. 9 loss weights); only rank 0 validates and writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from agman.errors import InvalidValueError


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (0, 1, 0 without it)."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", rank))
    return rank, world, local


def pick_device(requested: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """The torch device for ``requested``: ``auto`` is ``cuda:local_rank`` where CUDA is usable, else CPU;
    ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are checked against this machine, so a missing GPU is a
    clear :class:`InvalidValueError` before any tensor moves (never torch's assertion)."""
    if str(requested) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidValueError(f"unknown device {str(requested)!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidValueError(
                f"device {str(requested)!r} was asked for, but CUDA is not available on this machine "
                "(no usable NVIDIA GPU/driver, or a CPU-only torch): use cpu or auto"
            )
        count = torch.cuda.device_count()
        if device.index is None:
            device = torch.device("cuda", local_rank % count)
        elif device.index >= count:
            raise InvalidValueError(
                f"device {str(requested)!r} was asked for, but this machine has {count} CUDA device(s): "
                f"cuda:0..cuda:{count - 1}"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise InvalidValueError(f"device {str(requested)!r} was asked for, but this machine has no usable MPS")
    elif device.type != "cpu":
        raise InvalidValueError(f"unsupported device {str(requested)!r}: expected auto, cpu, cuda, cuda:N or mps")
    return device


def init_distributed(device: str = "auto", backend: str = "auto") -> DistributedContext:
    """Join the process group when ``WORLD_SIZE > 1`` (idempotent); return this process's context."""
    rank, world, local = env_world()
    dev = pick_device(device, local)
    if world <= 1:
        return DistributedContext(0, 1, 0, dev, None)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistributedContext(rank, world, local, dev, backend)


def shard(rows: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's share of an epoch's rows: every ``world_size``-th row from ``rank``, all shards
    cut to the same length (so every rank runs the same number of steps)."""
    if world_size <= 1:
        return rows
    per_rank = len(rows) // world_size
    return rows[rank::world_size][:per_rank]


def average_gradients(parameters, ctx: DistributedContext) -> None:
    """All-reduce (mean) the gradients of parameters DDP does not manage."""
    if not ctx.enabled:
        return
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= ctx.world_size


def broadcast_buffers(module: torch.nn.Module, ctx: DistributedContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so replicas match."""
    if not ctx.enabled:
        return
    for b in module.buffers():
        dist.broadcast(b, src=0)


def all_reduce_mean(values: dict[str, float], ctx: DistributedContext) -> dict[str, float]:
    """Mean of scalar statistics over ranks (for logging)."""
    if not ctx.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=ctx.device if ctx.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.tolist())}


def broadcast_flag(flag: bool, ctx: DistributedContext) -> bool:
    """Rank 0's value of ``flag`` on every rank (e.g. 'stop now')."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=ctx.device if ctx.backend == "nccl" else "cpu")
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        dist.barrier()


def cleanup(ctx: DistributedContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
