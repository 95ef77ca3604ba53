"""Adding an attribute to a trained model (`agman train --extend`) against training on every attribute.

On the FashionAI-like synthetic set, for each held-out attribute and seed: train on the other attributes
(warm-up included, so the trunk never saw the held-out labels), extend by the held-out one with design
``rows`` and design ``adapter``, and fine-tune the whole network on it (the naive way, which forgets);
the baseline is joint training on all attributes with the same seed, measured in the same run.  Printed
per method: the new attribute's test MAP (and as % of joint), the old attributes' test MAP (for the
extensions asserted bit-identical to the base model's embeddings), and the training compute (image
passes and wall seconds, extension against joint).  Every finished run is appended to
``OUT/results.jsonl``, so an interrupted benchmark continues where it stopped.

    python bench/extension.py --out /tmp/ext --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from agman.data.asen import write_asen
from agman.engine.checkpoint import load_model
from agman.engine.config import load_config
from agman.engine.embed import embed_images
from agman.engine.evaluate import evaluate_embeddings
from agman.engine.extend import extend, restrict
from agman.engine.train import train

HELD_OUT = ("sleeve_length", "neckline_design", "pant_length")


def config(out: Path, root: Path, seed: int, args, *, synthetic: bool, extension: bool = False):
    over = [f"output.dir={out}", f"data.root={root}", f"train.seed={seed}", "output.progress=false",
            "output.tensorboard=false", f"model.name={args.model}", f"train.amp={args.amp}",
            f"train.channels_last={'true' if args.amp != 'none' else 'false'}"]
    over += ([f"data.synthetic.images={args.images}", "data.synthetic.mode=fashionai"] if synthetic
             else ["data.synthetic=null"])
    if extension:
        over += [f"train.epochs={args.ext_epochs}", f"train.triplets_per_epoch={args.ext_triplets}",
                 f"train.lr={args.ext_lr}", f"train.lr_step={args.ext_epochs}"]
    else:
        over += [f"train.triplets_per_epoch={args.triplets}", f"warmup.epochs={args.warmup}",
                 f"train.epochs={args.epochs}", f"train.lr_step={args.epochs}"]
    return load_config("synthetic/demo-fashionai.yaml", over)


def test_maps(checkpoint: Path, spec, cache: dict) -> tuple[dict[str, float], np.ndarray]:
    """Test MAP per attribute (the dataset's names; an attribute the model lacks is left out) and the
    embeddings in the model's own attribute order."""
    model, info = load_model(checkpoint)
    split = spec.split("test")
    emb = embed_images(model, split.paths, spec.root, input_size=info.input_size, crop_ratio=info.crop_ratio,
                       batch_size=100)
    cols = np.zeros((emb.shape[0], spec.n_attributes, emb.shape[2]), dtype=np.float32)
    for j, name in enumerate(info.attribute_names):
        cols[:, spec.attribute_index(name)] = emb[:, j]
    maps = evaluate_embeddings(cols, spec, "test").asfr.per_attribute_map
    cache[str(checkpoint)] = emb
    return {k: 100 * v for k, v in maps.items() if k in info.attribute_names}, emb


def passes(cfg, train_images: int, warm: bool) -> int:
    """Images through the network while training: warm-up epochs x train images + epochs x triplets x 3."""
    return (cfg.warmup.epochs * train_images if warm else 0) + cfg.train.epochs * cfg.train.triplets_per_epoch * 3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--held-out", default=",".join(HELD_OUT))
    ap.add_argument("--model", default="agman")
    ap.add_argument("--images", type=int, default=1200, help="synthetic images (the demo: 4000)")
    ap.add_argument("--warmup", type=int, default=6)
    ap.add_argument("--triplets", type=int, default=1600, help="triplets per epoch, 3 epochs (the demo: 4800)")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs after the warm-up (the demo: 3)")
    ap.add_argument("--ext-epochs", type=int, default=2)
    ap.add_argument("--ext-triplets", type=int, default=800)
    ap.add_argument("--ext-lr", type=float, default=1e-3)
    ap.add_argument("--amp", default="none", help="train.amp (the preset's bf16 is slow on a CPU without bf16 "
                                                  "instructions, as on the machine measured)")
    ap.add_argument("--table", action="store_true", help="only print the table of OUT/results.jsonl")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.jsonl"
    done = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.exists() else []
    if not args.table:
        run_all(args, done, results_path)
    print(table(done))
    return 0


def record(done: list, path: Path, row: dict) -> None:
    done.append(row)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def run_all(args, done: list, results_path: Path) -> None:
    data = args.out / "data"
    have = {(r["seed"], r["held_out"], r["method"]) for r in done}
    for seed in [int(s) for s in args.seeds.split(",")]:
        jcfg = config(args.out / f"s{seed}-joint", data, seed, args, synthetic=True)
        spec = jcfg.data.open()
        n_train = len(spec.split("train"))
        cache: dict = {}
        if (seed, "", "joint") not in have:
            t0 = time.perf_counter()
            train(jcfg, overwrite=True)
            seconds = time.perf_counter() - t0
            maps, _ = test_maps(jcfg.run_dir / "best.pt", spec, cache)
            record(done, results_path, {"seed": seed, "held_out": "", "method": "joint", "maps": maps,
                                        "seconds": seconds, "passes": passes(jcfg, n_train, True)})
        joint = next(r for r in done if r["seed"] == seed and r["method"] == "joint")
        for held in args.held_out.split(","):
            others = [a for a in spec.attribute_names if a != held]
            base_root = args.out / f"data-without-{held}"
            if not (base_root / "meta.json").exists():
                write_asen(restrict(spec, others), base_root)
            bcfg = config(args.out / f"s{seed}-{held}-base", base_root, seed, args, synthetic=False)
            base_ckpt = bcfg.run_dir / "best.pt"
            if (seed, held, "base") not in have:
                t0 = time.perf_counter()
                train(bcfg, overwrite=True)
                maps, _ = test_maps(base_ckpt, spec, cache)
                record(done, results_path, {"seed": seed, "held_out": held, "method": "base", "maps": maps,
                                            "seconds": time.perf_counter() - t0, "passes": passes(bcfg, n_train, True)})
            for method in ("rows", "adapter", "naive"):
                if (seed, held, method) in have:
                    continue
                ecfg = config(args.out / f"s{seed}-{held}-{method}", data, seed, args, synthetic=True, extension=True)
                t0 = time.perf_counter()
                extend(ecfg, base_ckpt, design="rows" if method == "naive" else method, attributes=[held],
                       overwrite=True, unfreeze=method == "naive")
                seconds = time.perf_counter() - t0
                maps, emb = test_maps(ecfg.run_dir / "best.pt", spec, cache)
                if str(base_ckpt) not in cache:
                    test_maps(base_ckpt, spec, cache)
                old = cache[str(base_ckpt)]
                identical = bool(np.array_equal(emb[:, :old.shape[1]], old))
                if method != "naive":
                    assert identical, f"{method}: an old attribute's test embeddings changed"
                record(done, results_path, {"seed": seed, "held_out": held, "method": method, "maps": maps,
                                            "seconds": seconds, "passes": passes(ecfg, n_train, False),
                                            "old_identical": identical, "joint_new": joint["maps"][held]})


def table(done: list) -> str:
    """Mean over the finished seeds, per held-out attribute and method."""
    lines = ["| held out | method | seeds | new attr. MAP | % of joint | old attrs MAP (base -> after) | old embeddings "
             "bit-identical | image passes (% of joint) | wall s (% of joint) |", "|---|---|---:|---:|---:|---|---|---:|---:|"]
    joints = {r["seed"]: r for r in done if r["method"] == "joint"}
    for held in dict.fromkeys(r["held_out"] for r in done if r["held_out"]):
        bases = {r["seed"]: r for r in done if r["held_out"] == held and r["method"] == "base"}
        for method in ("rows", "adapter", "naive"):
            rows = [r for r in done if r["held_out"] == held and r["method"] == method and r["seed"] in bases]
            if not rows:
                continue
            new = [r["maps"][held] for r in rows]
            pct = [r["maps"][held] / joints[r["seed"]]["maps"][held] * 100 for r in rows]
            old_before = [np.mean([v for k, v in bases[r["seed"]]["maps"].items()]) for r in rows]
            old_after = [np.mean([v for k, v in r["maps"].items() if k != held]) for r in rows]
            ppass = [r["passes"] / joints[r["seed"]]["passes"] * 100 for r in rows]
            pwall = [r["seconds"] / joints[r["seed"]]["seconds"] * 100 for r in rows]
            same = "yes" if all(r["old_identical"] for r in rows) else "no"
            lines.append(f"| {held} | {method} | {len(rows)} | {_ms(new)} | {_ms(pct)} | {np.mean(old_before):.2f} -> "
                         f"{np.mean(old_after):.2f} | {same} | {np.mean(ppass):.1f} | {np.mean(pwall):.1f} |")
    joint_rows = list(joints.values())
    if joint_rows:
        lines.append("")
        lines.append("joint training (the baseline), test MAP per attribute over "
                     f"{len(joint_rows)} seed(s): " + ", ".join(
                         f"{k} {_ms([r['maps'][k] for r in joint_rows])}" for k in joint_rows[0]["maps"])
                     + f"; {np.mean([r['seconds'] for r in joint_rows]):.0f} s wall, "
                     f"{joint_rows[0]['passes']} image passes")
    return "\n".join(lines)


def _ms(values: list[float]) -> str:
    return f"{np.mean(values):.2f}" + (f" ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else "")


if __name__ == "__main__":
    sys.exit(main())
