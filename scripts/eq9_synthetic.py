"""Validation MAP of each Eq. 9 weighting on a small synthetic set (docs/training.md, *Eq. 9*).

The learning test's setting (tests/test_engine_train.py): 1,200 synthetic images at 32 px, AG-MAN on
a ResNet-18 warmed up for 10 epochs, then 3 epochs x 30 steps of 32 triplets (Adam 3e-4, StepLR
3 x 0.9, value sampling, three passes).  Besides the four modes from their usual start, ``learned``
is also started from the weights the paper's schedule reaches by epoch 10, 20 and 50
(scripts/eq9_weights.py), to show what the rest of a 50-epoch run trains with.

    python scripts/eq9_synthetic.py --out /tmp/eq9 [--seeds 0 1] [--only released learned@50]
    python scripts/eq9_synthetic.py --out /tmp/eq9 --only released --set data.crop_ratio=0.875   # other options

``--set section.key=value`` items apply to every run (their runs get their own folders); each line
also gives the best epoch's MAP per attribute.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

#: name -> loss overrides; learned@N starts at the w the paper's schedule reaches after epoch N.
RUNS = {
    "released": {"weighting": "released", "weight_init": 1.0},
    "learned": {"weighting": "learned", "weight_init": 0.0},
    "uncertainty": {"weighting": "uncertainty", "weight_init": 0.0},
    "fixed": {"weighting": "fixed"},
    "learned@10": {"weighting": "learned", "weight_init": -5.52},
    "learned@20": {"weighting": "learned", "weight_init": -9.43},
    "learned@50": {"weighting": "learned", "weight_init": -15.48},
}


def run(out: Path, name: str, seed: int, overrides: list[str] = ()) -> dict:
    from agman.data.synthetic import generate
    from agman.engine.checkpoint import load_checkpoint
    from agman.engine.config import from_dict
    from agman.engine.train import train

    root = out / "synth1200"
    if not (root / "meta.json").exists():
        generate(root, 1200, 32, seed=0, progress=False)
    cfg = from_dict({
        "model": {"name": "agman", "backbone": "resnet18", "embedding_dim": 32, "attention_dim": 64},
        "data": {"root": str(root), "input_size": 32, "crop_ratio": 1.0},
        "warmup": {"epochs": 10, "batch_size": 32, "dir": str(out / "warmup")},
        "train": {"epochs": 3, "triplets_per_epoch": 960, "batch_size": 32, "lr": 3e-4, "workers": 0, "seed": seed,
                  "bn_passes": "separate", "sampling": "value"},
        "loss": RUNS[name],
        "eval": {"batch_size": 100},
        "output": {"dir": str(out / "-".join([name, *overrides, f"seed{seed}"])), "progress": False,
                   "tensorboard": False},
    }, overrides)
    result = train(cfg, overwrite=True)
    per = load_checkpoint(result.best_path)["metrics"]["map_per_attribute"]
    return {"best": result.best_score, "valid": [row["valid_score"] for row in result.history],
            "weights": {k: v for k, v in result.history[-1].items() if k.startswith("weight_")}, "per": per}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the data, the warm-up trunks and the runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--only", nargs="+", choices=list(RUNS), help="run these modes only")
    ap.add_argument("--set", nargs="+", default=[], metavar="SECTION.KEY=VALUE", help="overrides for every run")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    for seed in args.seeds:
        for name in args.only or RUNS:
            r = run(out, name, seed, args.set)
            print(f"{name:12s} {' '.join(args.set)} seed {seed}: best valid MAP {r['best']:.4f}; per epoch "
                  f"{', '.join(f'{v:.4f}' for v in r['valid'])}; final factors {r['weights']}; per attribute "
                  f"{', '.join(f'{a} {v:.4f}' for a, v in r['per'].items())}", flush=True)


if __name__ == "__main__":
    main()
