"""The paper's comparison and ablation grid, run on one dataset, combined into one table.

Grids (``GRIDS``):

* ``models``     — Tables 2–3: CSN, ASENet_V2, AttnFashion and AG-MAN, each from the config of
                   the same name beside the given one (``configs/<dataset>/<model>.yaml``: the
                   dataset composed with each model, :func:`agman.engine.compose.sibling`);
* ``hierarchy``  — Tables 5–6: hierarchical feature x classification loss;
* ``aga``        — Tables 7–8: AG-MAN without ASA, SA, ACA or CA, and with all four;
* ``asenpp``     — ASEN++ with its global branch only (stage 1 as the whole run) and global + local
                   (both stages, :mod:`agman.engine.stages`).

Identical runs (the full AG-MAN appears in every grid) are trained once.  Each run trains in
``<out>/runs/<name>/`` and its test metrics land in ``<out>/runs/<name>/test-metrics.json``; a run
whose metrics file exists is not repeated, so an interrupted ablation continues where it stopped.
Runs with a backbone warm-up (``warmup.epochs``) share one trunk file in ``<out>/warmup/``.
On the paper's datasets the runs are also put beside its rows (:mod:`agman.engine.published`).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from agman.engine.compose import sibling
from agman.engine.config import RunConfig, load_config, with_overrides
from agman.engine.evaluate import evaluate_checkpoint
from agman.engine.published import beside, beside_text
from agman.engine.report import markdown_table, write_report_tables
from agman.engine.stages import STAGE1_DIR
from agman.engine.train import train
from agman.errors import InvalidValueError
from agman.fileio import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

YES, NO = "✓", "-"


@dataclass(frozen=True)
class Variant:
    """One run: a config file of the dataset folder plus overrides; ``switches`` are table columns."""

    name: str
    label: str
    model_file: str
    overrides: tuple[str, ...] = ()
    switches: tuple[tuple[str, str], ...] = field(default=())

    @property
    def key(self) -> tuple:
        return (self.model_file, tuple(sorted(self.overrides)))


def _flag(on: bool) -> str:
    return YES if on else NO


def _models_grid() -> list[Variant]:
    return [
        Variant("csn", "CSN", "csn"),
        Variant("asenet-v2", "ASENet_V2", "asenet-v2"),
        Variant("attnfashion", "AttnFashion", "attnfashion"),
        Variant("agman", "AG-MAN", "agman"),
    ]


def _hierarchy_grid() -> list[Variant]:
    rows = []
    for hier, cls in ((False, False), (True, False), (False, True), (True, True)):
        name = "agman" if hier and cls else f"agman-h{int(hier)}-c{int(cls)}"
        overrides = () if hier and cls else (f"model.hierarchical={str(hier).lower()}",
                                              f"model.classification={str(cls).lower()}")
        rows.append(Variant(name, "AG-MAN", "agman", overrides,
                            (("hierarchical", _flag(hier)), ("classification", _flag(cls)))))
    return rows


def _aga_grid() -> list[Variant]:
    parts = ("asa", "sa", "aca", "ca")
    rows = []
    for off in (*parts, None):
        name = "agman" if off is None else f"agman-no-{off}"
        overrides = () if off is None else (f"model.{off}=false",)
        rows.append(Variant(name, "AG-MAN", "agman", overrides, tuple((p.upper(), _flag(p != off)) for p in parts)))
    return rows


def _asenpp_grid() -> list[Variant]:
    """ASEN++'s branches: the global branch alone (its stage 1 as the whole run) and global + local (both stages)."""
    return [Variant("asenpp-global", "ASEN++ global", "asenpp", ("train.stage2=null", "model.local=false"),
                    (("local branch", NO),)),
            Variant("asenpp", "ASEN++", "asenpp", (), (("local branch", YES),))]


GRIDS = {"models": _models_grid, "hierarchy": _hierarchy_grid, "aga": _aga_grid, "asenpp": _asenpp_grid}
GRID_TITLES = {
    "models": "Comparison of models (Tables 2-3)",
    "hierarchy": "Hierarchical feature and classification loss (Tables 5-6)",
    "aga": "AGA parts (Tables 7-8)",
    "asenpp": "ASEN++ global and local branches",
}

#: Overrides of ``--quick``: a short schedule that shows the grid works (not converged numbers).
QUICK = ("train.epochs=2", "train.triplets_per_epoch=1600", "eval.every=2")
#: ``--quick``'s addition for a two-stage run (ASEN++): one epoch of stage 2.
QUICK_STAGE2 = ("train.stage2.epochs=1",)


@dataclass
class AblationResult:
    out_dir: Path
    metrics: dict[str, dict]
    tables: str
    seconds: float
    runs: dict[str, float] = field(default_factory=dict)
    attribute_names: list[str] = field(default_factory=list)


def plan(grids: list[str]) -> tuple[dict[str, list[Variant]], list[Variant]]:
    """The variants of each requested grid and the unique runs they need."""
    unknown = [g for g in grids if g not in GRIDS]
    if unknown:
        raise InvalidValueError(f"unknown grid(s) {', '.join(unknown)}; choose from {', '.join(GRIDS)}")
    per_grid = {g: GRIDS[g]() for g in grids}
    unique: dict[tuple, Variant] = {}
    for variants in per_grid.values():
        for v in variants:
            unique.setdefault(v.key, v)
    return per_grid, list(unique.values())


def run_ablation(
    config_path: str | Path,
    out_dir: str | Path,
    *,
    grids: list[str] = ("models", "hierarchy", "aga"),
    overrides: list[str] | tuple[str, ...] = (),
    quick: bool = False,
    split: str = "test",
) -> AblationResult:
    """Train and evaluate every run the grids need; write ``ablation.{md,csv}`` (all rows) and one
    table per grid into ``out_dir``.  ``config_path`` is any config of the dataset (the runs use
    its siblings ``<model>.yaml``); ``overrides`` apply to every run (after ``--quick``'s)."""
    start = time.perf_counter()
    out = Path(out_dir)
    per_grid, runs = plan(list(grids))
    extra = list(QUICK if quick else ()) + list(overrides)
    metrics: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    attribute_names: list[str] = []
    dataset = ""
    for i, v in enumerate(runs, 1):
        run_dir = out / "runs" / v.name
        metrics_file = run_dir / f"{split}-metrics.json"
        if metrics_file.is_file():
            saved = json.loads(metrics_file.read_text(encoding="utf-8"))
            metrics[v.name], attribute_names, seconds[v.name] = saved["metrics"], saved["attributes"], saved["seconds"]
            dataset = saved.get("dataset", dataset)
            log.info("[%d/%d] %s: done before (score %.4f)", i, len(runs), v.name, metrics[v.name]["score"])
            continue
        t0 = time.perf_counter()
        config = load_config(sibling(config_path, v.model_file),
                             [*extra, *v.overrides, f"output.dir={run_dir.as_posix()}",
                              f"warmup.dir={(out / 'warmup').as_posix()}"])
        if quick and config.train.stage2 is not None:
            config = with_overrides(config, QUICK_STAGE2)
        log.info("[%d/%d] training %s (%s)", i, len(runs), v.name, " ".join(v.overrides) or "as configured")
        resume = (run_dir / "last.pt").is_file() or (run_dir / STAGE1_DIR / "last.pt").is_file()
        result = train(config, resume=resume, overwrite=True)
        evaluation, info = evaluate_checkpoint(result.best_path or result.last_path, split,
                                               device=_device(config), batch_size=config.eval.batch_size)
        metrics[v.name] = evaluation.to_dict()
        attribute_names, dataset = info.attribute_names, evaluation.dataset
        seconds[v.name] = time.perf_counter() - t0
        atomic_write_json(metrics_file, {"metrics": metrics[v.name], "attributes": attribute_names,
                                         "seconds": seconds[v.name], "overrides": list(v.overrides),
                                         "dataset": dataset})
        log.info("[%d/%d] %s: %s score %.4f in %.0f s", i, len(runs), v.name, split, evaluation.score, seconds[v.name])
    texts = []
    for grid, variants in per_grid.items():
        rows = {row_label(v, variants): metrics[v.name] for v in variants}
        texts.append(write_report_tables(out, f"ablation-{grid}", rows, attribute_names,
                                         title=f"{GRID_TITLES[grid]}, {split} split", extra=switch_columns(variants)))
    everything = {f"{v.name}": metrics[v.name] for v in runs}
    texts.append(write_report_tables(out, "ablation", everything, attribute_names, title=f"All runs, {split} split"))
    published = beside(dataset, everything, attribute_names)  # FashionAI, DeepFashion, Zappos50k only
    if published:
        texts.append(beside_text(dataset, everything, attribute_names))
        atomic_write_text(out / "ablation-published.md", f"# Measured and published, {split} split\n\n"
                          + markdown_table(*published) + "\n")
    total = time.perf_counter() - start
    # runs: each run's own training + test time (kept from when it ran); total_seconds: this call's
    # wall time (near 0 when every run was reused); runs_seconds: what the grid cost in all
    atomic_write_json(out / "ablation-times.json", {"total_seconds": total, "runs_seconds": sum(seconds.values()),
                                                    "runs": seconds})
    return AblationResult(out, metrics, "\n\n".join(texts), total, seconds, attribute_names)


def switch_columns(variants: list[Variant]) -> dict[str, list[str]]:
    """A grid's switch columns (e.g. hierarchical, classification): ``{column: [✓ or - per variant]}``."""
    return {c: [dict(v.switches)[c] for v in variants] for c, _ in variants[0].switches}


def row_label(v: Variant, variants: list[Variant]) -> str:
    """The row's name in its grid's table: the variant's label, or its run name where labels repeat."""
    labels = [x.label for x in variants]
    return v.label if labels.count(v.label) == 1 else v.name


def _device(config: RunConfig) -> str:
    from agman.engine.distributed import pick_device

    return str(pick_device(config.train.device))
