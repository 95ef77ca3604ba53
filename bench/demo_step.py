"""The demo's training step on CPU, main's code path against this one, side by side in one run.

    python bench/demo_step.py                          # demo preset: ResNet-18, 64 px, bf16, batch 32, 2 threads
    python bench/demo_step.py --threads 1 --rounds 3 --images 200   # a minute: checks the script

A step here is what one iteration of the training loop costs: the next batch of 32 triplets out
of the DataLoader (``workers: 0``, as the demo runs it, so on the same cores as the step) plus
:class:`agman.engine.step.TrainStep` on it.

* ``main``: the path of main before issue #25: every image decoded from its PNG each epoch
  (no cache), each triplet row's augmentation seeded with ``torch.manual_seed`` (which also
  seeds, lazily, every accelerator generator: a recorded Python stack per call), Adam's
  for-each implementation;
* ``data``: the data-side switches alone (the preset of #25's first round): ``data.cache: true``
  (the decoded-image cache, the same pixels), the row seed set on the CPU generator only,
  ``train.fused_optimizer: true``; three passes, oneDNN convolutions everywhere;
* ``new``: the demo preset as it is: ``data``'s switches plus ``train.bn_passes: stacked`` (one pass
  of 3B with BatchNorm per set: the three passes' result) and ``train.small_map_matmul: true``
  (layer4's 2x2 maps as matrix products: the same sums).

All start from the same weights and see the same triplet rows in the same order.  Rounds
alternate them (one batch each), so a load change on a shared machine hits both alike; each
figure is the median over the rounds, wall-clock and CPU time of this process, split into the
batch (``load``) and the step.  ``speedup`` is main's time / new's time (``speedup_data``: main's /
data's).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch

from agman.data.cache import triplet_dataset
from agman.data.triplets import make_sampler
from agman.engine import distributed as D
from agman.engine.batches import EpochTriplets, epoch_loader, item_seed
from agman.engine.config import load_config
from agman.engine.step import TrainStep
from agman.engine.train import build_state, fill_cache
from agman.fileio import atomic_write_json


class MainEpochTriplets(EpochTriplets):
    """Main's row seeding: ``torch.manual_seed`` (CPU and, lazily, every accelerator generator)."""

    def __getitem__(self, key):
        epoch, position = key
        self.rows(epoch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, epoch, self.rank + position * self.world_size))
            return self.images[position]


STEP_SWITCHES = ("train.bn_passes=separate", "train.small_map_matmul=false")  # main's and data's step


def variant(config, spec, new: bool):
    """``(batch iterator, step)`` for main's path or the new one, from the config's seed."""
    device = torch.device("cpu")
    train = config.train
    state = build_state(config, spec.n_attributes, device, None)
    if not new:  # main's optimizer: Adam's for-each loop
        params = [p for group in state.optimizer.param_groups for p in group["params"]]
        state.optimizer = torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)
    split = spec.split("train")
    images = triplet_dataset(split.paths, spec.root, input_size=config.data.input_size,
                             crop_ratio=config.data.crop_ratio, cache="require" if new else "off")
    rows = (EpochTriplets if new else MainEpochTriplets)(make_sampler(split, 10**6, train.seed, train.sampling),
                                                         images, train.seed)
    loader, _ = epoch_loader(rows, train, device)
    state.model.train()
    step = TrainStep.for_run(state.model, state.criterion, state.optimizer, train, D.DistributedContext(device=device))
    return iter(loader), step


def timed(batches, step) -> tuple[float, float, float, float]:
    """(load wall, load cpu, step wall, step cpu) of one iteration."""
    w0, c0 = time.perf_counter(), time.process_time()
    batch = next(batches)
    w1, c1 = time.perf_counter(), time.process_time()
    step(*batch)
    return w1 - w0, c1 - c0, time.perf_counter() - w1, time.process_time() - c1


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="synthetic/demo")
    p.add_argument("--images", type=int, default=1000, help="synthetic images to render (default 1000)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: the config's train.threads)")
    p.add_argument("--dir", help="folder for the rendered set (default: a temporary one)")
    p.add_argument("--out", help="write the JSON here too")
    p.add_argument("overrides", nargs="*", help="config overrides (KEY=VALUE)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="agman-demo-step-") as tmp:
        root = os.path.join(args.dir or tmp, "synthetic")
        config = load_config(args.config, [f"data.root={root}", f"data.synthetic.images={args.images}",
                                           *args.overrides])
        threads = args.threads or config.train.threads
        if threads:
            torch.set_num_threads(threads)
        spec = config.data.open(progress=False)
        fill_cache(spec, config.data.input_size, config.data.crop_ratio, progress=False)
        before = load_config(args.config, [f"data.root={root}", f"data.synthetic.images={args.images}",
                                           *args.overrides, *STEP_SWITCHES])
        runs = {"main": variant(before, spec, new=False), "data": variant(before, spec, new=True),
                "new": variant(config, spec, new=True)}
        for batches, step in runs.values():  # warm-up: first batch (opens files / maps the cache), first step
            timed(batches, step)
        times = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, (batches, step) in runs.items():
                times[name].append(timed(batches, step))
    figures = {}
    for name, rows in times.items():
        med = [statistics.median(r[i] for r in rows) for i in range(4)]
        total_wall = statistics.median(r[0] + r[2] for r in rows)
        total_cpu = statistics.median(r[1] + r[3] for r in rows)
        figures[name] = {"load_wall_s": round(med[0], 4), "load_cpu_s": round(med[1], 4),
                         "step_wall_s": round(med[2], 4), "step_cpu_s": round(med[3], 4),
                         "iteration_wall_s": round(total_wall, 4), "iteration_cpu_s": round(total_cpu, 4),
                         "triplets_per_s": round(config.train.batch_size / total_wall, 1)}
    m, d, n = figures["main"], figures["data"], figures["new"]
    result = {
        "device": f"cpu ({platform.processor() or platform.machine()})", "threads": torch.get_num_threads(),
        "torch": torch.__version__, "load_average": [round(x, 2) for x in os.getloadavg()],
        "setting": f"{args.config}: {config.model.options.get('backbone')} {config.data.input_size} px, batch "
                   f"{config.train.batch_size} triplets, amp {config.train.amp}, new: bn_passes "
                   f"{config.train.bn_passes}, small_map_matmul {config.train.small_map_matmul}",
        "rounds": args.rounds, "figures": figures,
        "speedup_wall": round(m["iteration_wall_s"] / n["iteration_wall_s"], 2),
        "speedup_cpu": round(m["iteration_cpu_s"] / n["iteration_cpu_s"], 2),
        "speedup_load_cpu": round(m["load_cpu_s"] / max(n["load_cpu_s"], 1e-9), 1),
        "speedup_step_cpu": round(m["step_cpu_s"] / n["step_cpu_s"], 2),
        "speedup_step_wall": round(m["step_wall_s"] / n["step_wall_s"], 2),
        "speedup_data_wall": round(m["iteration_wall_s"] / d["iteration_wall_s"], 2),
        "speedup_data_cpu": round(m["iteration_cpu_s"] / d["iteration_cpu_s"], 2),
    }
    print(json.dumps(result, indent=2))
    if args.out:  # beside the printed figures, for the docs
        atomic_write_json(args.out, result, indent=2)
    return result


if __name__ == "__main__":
    main()
