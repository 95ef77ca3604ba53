"""`agman train`, `agman eval`, `agman ablate`: run configs, evaluate checkpoints, the ablation grid."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from agman.cli import CLIError, print_json

log = logging.getLogger(__name__)


def add_override_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. train.epochs=5 train.lr=3e-4 model.ca=false "
                             "(a bare key works when only one section has it)")


def register(subparsers) -> None:
    _register_train(subparsers)
    _register_eval(subparsers)
    _register_ablate(subparsers)


def _register_train(subparsers) -> None:
    from agman.engine.compose import describe

    tr = subparsers.add_parser(
        "train", help="train a model from a config (configs/<dataset>/<model>.yaml)",
        description="Train from a YAML config plus KEY=VALUE overrides. The run folder (output.dir, "
                    "default runs/<dataset>-<model>) receives config.yaml, best.pt, last.pt, log.csv, "
                    "curves.png and TensorBoard logs. Works under torchrun (DDP). Configs: " + describe(),
    )
    tr.add_argument("--config", help="DATASET/MODEL or a config file (resolved against the working directory, then "
                                     "the packaged configs; configs/fashionai/agman.yaml works too)")
    tr.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_OR_CHECKPOINT",
                    help="continue the run exactly: with no value the config's run folder; or a run folder / last.pt "
                         "(then --config may be left out)")
    tr.add_argument("--extend", metavar="CHECKPOINT",
                    help="add the attributes of the config's dataset that this trained model lacks, training only "
                         "what they need: every old attribute keeps its embeddings bit for bit (docs/training.md)")
    tr.add_argument("--design", choices=("rows", "adapter"), default="adapter",
                    help="with --extend: 'rows' trains only the new attribute's table rows on the frozen network; "
                         "'adapter' (default) also gives it private copies of the attribute-side projections")
    tr.add_argument("--attributes", metavar="NAME,...",
                    help="with --extend: which attributes to add (default: every one the parent lacks)")
    tr.add_argument("--out", help="run folder (same as output.dir=...)")
    tr.add_argument("--force", action="store_true", help="start afresh in a run folder that already holds a run")
    tr.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_override_argument(tr)
    tr.set_defaults(func=run_train)


def _register_eval(subparsers) -> None:
    ev = subparsers.add_parser(
        "eval", help="evaluate a checkpoint: MAP per attribute (Tables 2-3), R@k, P@k, TR accuracy",
        description="Evaluate a checkpoint on a split of the dataset its config names. Prints the tables and "
                    "writes eval-<split>.{csv,md,json} beside the checkpoint (or into --out). On FashionAI, "
                    "DeepFashion and Zappos50k the paper's published numbers are printed beside the measured ones. "
                    "Where the split has a regions file (regions_<split>.jsonl, docs/attention-scoring.md) the "
                    "model's attention is scored too: pointing game and energy share per attribute beside their "
                    "chance levels, also in "
                    "eval-<split>-localization.csv and the JSON.",
    )
    ev.add_argument("--checkpoint", required=True, help="best.pt / last.pt of a run")
    ev.add_argument("--split", default="test", help="split to evaluate (default test)")
    ev.add_argument("--data", help="dataset root (default: the one in the checkpoint's config)")
    ev.add_argument("--dataset", help="dataset name inside the root (e.g. FashionAI)")
    ev.add_argument("--out", help="folder for the tables (default: the checkpoint's folder)")
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--workers", type=int, default=2, help="image-loading processes (default 2)")
    ev.add_argument("--regions", help="regions file to score the attention against "
                                      "(default: regions_<split>.jsonl in the dataset root, when there is one)")
    ev.add_argument("--no-localization", action="store_true", help="do not score the attention")
    ev.add_argument("--json", action="store_true",
                    help="print the metrics as JSON instead of the tables (schema agman/eval/1, docs/training.md); "
                         "the table files are written all the same")
    ev.add_argument("--figures", type=int, default=0, metavar="N",
                    help="also draw the paper's Fig. 8 (N triplets with the model's verdict, where the split has "
                         "triplet lists) and Fig. 9 (up to N retrieval failures with attention) as PNGs")
    ev.set_defaults(func=run_eval)


def _register_ablate(subparsers) -> None:
    ab = subparsers.add_parser(
        "ablate", help="run the comparison and ablation grid (Tables 2-3, 5-8) and write one table",
        description="Train and test every variant of the chosen grids on one dataset: models (CSN, ASENet_V2, "
                    "AttnFashion, AG-MAN), hierarchy (hierarchical x classification), aga (each of ASA/SA/ACA/CA "
                    "off), asenpp (ASEN++ global branch only, global + local; not in the default). Runs that finished are reused, so an interrupted ablation continues. On FashionAI, "
                    "DeepFashion and Zappos50k each run is also printed beside the paper's row for it.",
    )
    ab.add_argument("--config", required=True, help="a config of the dataset, e.g. configs/synthetic/agman.yaml "
                                                    "(each model of the grid is composed with the same dataset)")
    ab.add_argument("--grid", default="models,hierarchy,aga", help="comma-separated grids (default all three)")
    ab.add_argument("--quick", action="store_true", help="short schedule (see docs/training.md)")
    ab.add_argument("--split", default="test", help="split to report (default test)")
    ab.add_argument("--out", default="runs/ablation", help="output folder (default runs/ablation)")
    ab.add_argument("--seeds", metavar="S,S,...",
                    help="repeat every run with train.seed = each of these seeds (e.g. 0,1,2), each seed in "
                         "<out>/seed-<s>/, and write the grids as mean ± sd over the seeds "
                         "(<out>/ablation-seeds-<grid>.md/.csv)")
    add_override_argument(ab)
    ab.set_defaults(func=run_ablate)


def _config_and_resume(args: argparse.Namespace):
    """The run's config and the checkpoint ``--resume`` names (None for a fresh run)."""
    from agman.engine.checkpoint import load_checkpoint
    from agman.engine.config import from_dict, load_config
    from agman.engine.train import find_resume

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"output.dir={args.out}")
    if args.no_progress:
        overrides.append("output.progress=false")
    if args.config:
        config = load_config(args.config, overrides)
        return config, find_resume(args.resume, config.run_dir)
    if args.resume and args.resume is not True:
        path = find_resume(args.resume, Path("."))
        from agman.engine.stages import STAGE1_DIR, STAGES_CONFIG

        stages = path.parent.parent / STAGES_CONFIG
        if path.parent.name == STAGE1_DIR and stages.is_file():  # a two-stage run still in stage 1
            return load_config(stages, overrides), path
        saved = load_checkpoint(path).get("config") or {}
        if not saved:
            raise CLIError(f"{path} carries no config; pass --config")
        saved = {k: v for k, v in saved.items() if k != "overrides"}
        return from_dict(saved, [f"output.dir={path.parent.as_posix()}", *overrides], source=str(path)), path
    raise CLIError("give --config DATASET/MODEL or FILE (or --resume RUN_FOLDER)")


def _extended_parent(resume: Path | None) -> str | None:
    """The parent a resumed extension run extends (None for an ordinary run)."""
    if resume is None:
        return None
    from agman.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(resume, verify=False)
    parent = ((ckpt.get("lineage") or {}).get("parent") or {}).get("path")
    return parent if parent and ckpt.get("extension") else None


def run_train(args: argparse.Namespace) -> int:
    from agman.engine.distributed import env_world
    from agman.engine.train import train

    config, resume = _config_and_resume(args)
    parent = args.extend or _extended_parent(resume)
    if parent:
        from agman.engine.extend import extend

        names = [n.strip() for n in args.attributes.split(",") if n.strip()] if args.attributes else None
        result = extend(config, parent, design=args.design, attributes=names, resume=resume or False,
                        overwrite=args.force)
    else:
        if args.attributes:
            raise CLIError("--attributes goes with --extend CHECKPOINT")
        result = train(config, resume=resume or False, overwrite=args.force)
    if env_world()[0] != 0:
        return 0
    if result.interrupted:
        print(f"stopped; resume with: agman train --resume {result.run_dir}")
        return 130
    print(f"best validation score {result.best_score:.4f}; checkpoints in {result.run_dir} (best.pt, last.pt)")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from agman.engine.distributed import pick_device
    from agman.engine.eval_report import evaluate_and_report

    data = {}
    if args.data:
        data.update(root=args.data, synthetic=None)  # a given folder is read, never generated into
    if args.dataset:
        data["dataset"] = args.dataset
    report = evaluate_and_report(args.checkpoint, args.split, out=args.out, data=data, device=pick_device(args.device),
                                 batch_size=args.batch_size, workers=args.workers, progress=True,
                                 localize=not args.no_localization, regions=args.regions, figures=args.figures)
    if args.json:
        print_json(report.to_json())
        return 0
    print(report.tables)
    if report.result.localization is not None:
        print("\n" + report.result.localization.table())
    if report.published:
        print(f"\n{report.published}")
    for path in report.figures:
        print(f"figure written to {path}")
    print(f"\ntables written to {report.out}/eval-{args.split}.csv and .md ({report.result.seconds:.1f} s)")
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from agman.engine.ablate import run_ablation

    grids = [g.strip() for g in args.grid.split(",") if g.strip()]
    if args.seeds is not None:
        from agman.engine.seeds import parse_seeds, run_ablation_seeds

        result = run_ablation_seeds(args.config, args.out, parse_seeds(args.seeds), grids=grids,
                                    overrides=args.overrides, quick=args.quick, split=args.split)
        print(result.tables)
        print(f"\n{len(result.seeds)} seeds finished in {result.seconds / 60:.1f} min; tables in "
              f"{result.out_dir}/ablation-seeds-*.md/.csv (each seed's own in {result.out_dir}/seed-<s>/)")
        return 0
    result = run_ablation(args.config, args.out, grids=grids, overrides=args.overrides, quick=args.quick,
                          split=args.split)
    print(result.tables)
    print(f"\nablation finished in {result.seconds / 60:.1f} min; tables in {result.out_dir}/ablation*.md/.csv")
    return 0
