"""The fp32 training step on CPU: agman's step against the released code's, same network, one run.

    python bench/train_step.py                       # ResNet-50, 224 px, batch 8, 8 attributes, 3 rounds
    python bench/train_step.py --backbone resnet18 --size 32 --batch 2 --rounds 1   # seconds: checks the script

``released`` is :class:`released_step.ReleasedStep`: the released network written out plainly,
anchor/far/close as three forward passes of B, fp32, BCE/3, margin ranking on dot products, fixed
loss weights, Adam.  ``agman`` is the engine's :class:`agman.engine.step.TrainStep` on the
``agman-official`` model (the same network: it starts from the same weights, copied in) as the
FashionAI ``agman-official`` config trains it on a CPU today (fp32, three passes of B, Eq. 9 weights
held at 1); ``agman_channels_last`` adds channels-last tensors (``train.channels_last:
true``), ``agman_channels_last_fused`` fused Adam on top (``train.fused_optimizer: true``) and
``agman_channels_last_fused_stacked`` one pass of 3B with BatchNorm per set on top of that
(``train.bn_passes: stacked``: the three passes' result within float rounding).  With ``--paper`` the paper preset (``agman``: CA, D = 1024) is raced too.

Variants run in interleaved rounds (one step of each per round, after one warm-up step each) so
that a load change on a shared machine hits all of them alike.  Each variant's figure is its
median step over the rounds, as wall-clock and as CPU time of this process (CPU time is what a
shared machine's other programs disturb least); ratios are released step time / variant step
time, i.e. the variant's speed in units of the released code's.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from released_step import ReleasedNet, ReleasedStep, copy_from_agman_official  # noqa: E402

from agman.engine.losses import TripletCriterion  # noqa: E402
from agman.engine.step import TrainStep  # noqa: E402
from agman.fileio import atomic_write_json  # noqa: E402
from agman.models.registry import build_model  # noqa: E402


def agman_step(model: torch.nn.Module, device: torch.device, *, channels_last: bool = False, amp: bool = False,
               fused: bool = False, compile_mode: str | None = None, bn_passes: str = "separate"):
    """The engine's step for ``model`` with the official config's loss (Eq. 9 held at 1) and Adam."""
    criterion = TripletCriterion(weighting="released", init=1.0).to(device)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    params = [p for p in model.parameters() if p.requires_grad] + list(criterion.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-4, **({"fused": True} if fused else {}))
    net = torch.compile(model, mode=compile_mode) if compile_mode else model
    model.train()
    return TrainStep(net, criterion, optimizer, device, channels_last=channels_last, amp=amp, bn_passes=bn_passes)


def released_step(official: torch.nn.Module, device: torch.device, backbone: str) -> ReleasedStep:
    net = ReleasedNet(official.n_attributes, backbone)
    copy_from_agman_official(net, official)
    net.to(device).train()
    return ReleasedStep(net)


def race(steps: dict, batch: int, n_attributes: int, size: int, device: torch.device, rounds: int,
         sync=lambda: None) -> dict:
    """Interleaved rounds of one step of each variant on the same random batch; median times."""
    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.randn(batch, 3, size, size, generator=g).to(device) for _ in range(3))
    attrs = torch.randint(0, n_attributes, (batch,), generator=g).to(device)
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for name, step in steps.items():  # warm-up (and compilation)
        step(a, p, n, attrs)
    sync()
    for _ in range(rounds):
        for name, step in steps.items():
            w, c = time.perf_counter(), time.process_time()
            step(a, p, n, attrs)
            sync()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    out = {}
    for name in steps:
        mw, mc = statistics.median(wall[name]), statistics.median(cpu[name])
        out[name] = {"step_wall_s": round(mw, 4), "step_cpu_s": round(mc, 4),
                     "triplets_per_s": round(batch / mw, 2), "triplets_per_cpu_s": round(batch / mc, 2)}
    base = out.get("released")
    if base:
        for name, row in out.items():
            row["speed_vs_released_wall"] = round(base["step_wall_s"] / row["step_wall_s"], 2)
            row["speed_vs_released_cpu"] = round(base["step_cpu_s"] / row["step_cpu_s"], 2)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8, help="triplets per step (default 8)")
    p.add_argument("--attributes", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's, all cores)")
    p.add_argument("--paper", action="store_true", help="also race the paper preset (agman)")
    p.add_argument("--out", help="write the JSON here too")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    torch.manual_seed(0)
    official = build_model("agman-official", args.attributes, backbone=args.backbone)
    steps = {"released": released_step(official, device, args.backbone)}
    for name, cl, fused, passes in (("agman", False, False, "separate"),
                                    ("agman_channels_last", True, False, "separate"),
                                    ("agman_channels_last_fused", True, True, "separate"),
                                    ("agman_channels_last_fused_stacked", True, True, "stacked")):
        steps[name] = agman_step(copy.deepcopy(official), device, channels_last=cl, fused=fused, bn_passes=passes)
    if args.paper:
        torch.manual_seed(0)
        steps["agman_paper"] = agman_step(build_model("agman", args.attributes, backbone=args.backbone), device)
        steps["agman_paper_channels_last"] = agman_step(
            build_model("agman", args.attributes, backbone=args.backbone), device, channels_last=True)
    result = {
        "device": f"cpu ({platform.processor() or platform.machine()})", "threads": torch.get_num_threads(),
        "torch": torch.__version__, "network": f"agman-official {args.backbone} {args.size}px, {args.attributes} "
                                               f"attributes", "batch_triplets": args.batch, "rounds": args.rounds,
        "steps": race(steps, args.batch, args.attributes, args.size, device, args.rounds),
    }
    best = max((k for k in result["steps"] if k != "released"), key=lambda k: result["steps"][k]["triplets_per_s"])
    result["fastest_agman"] = best
    result["goal"] = "agman fp32 >= released (speed_vs_released >= 1.0)"
    if args.out:
        atomic_write_json(args.out, result, indent=2)
    print(json.dumps(result, indent=2))
    return result if all(math.isfinite(r["step_wall_s"]) for r in result["steps"].values()) else {}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
