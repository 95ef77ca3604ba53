"""How the processes of a ``torchrun`` build agree (:mod:`agman.retrieval.build`): whether every rank
is fine, and rank 0's word handed to the others; one process is a world of one."""
from __future__ import annotations


def single_process():
    from agman.engine.distributed import DistributedContext

    return DistributedContext()


def all_ranks_ok(ok: bool, ctx) -> bool:
    """Whether every rank is ``ok`` (a collective: every rank calls it)."""
    if not ctx.enabled:
        return ok
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1 if ok else 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def broadcast_text(text: str, ctx) -> str:
    import torch.distributed as dist

    box = [text]
    dist.broadcast_object_list(box, src=0)
    return box[0]
