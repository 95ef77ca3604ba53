"""The ablation grid over several seeds: the same runs repeated with ``train.seed`` = each seed, and
each grid's table as mean ± standard deviation over the seeds.

One seed cannot rank models whose MAPs lie a point apart (a seed moves the warm-up trunk, the
initial weights and every sampled triplet), so :func:`run_ablation_seeds` runs
:func:`agman.engine.ablate.run_ablation` once per seed into ``<out>/seed-<s>/`` (each resumable on
its own) and writes ``<out>/ablation-seeds-<grid>.md/.csv``: per row the mean ± sample standard
deviation of each attribute's MAP and of the overall MAP, the overall MAP's range, how many seeds
ranked the row first in its grid, and, where the data has regions, the attention's pointing-game
accuracy and energy share, each beside its chance level.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agman.engine.ablate import GRID_TITLES, plan, row_label, run_ablation, switch_columns
from agman.engine.report import LOCALIZATION_COLUMNS, format_table, localization_cells, markdown_table, write_csv
from agman.errors import InvalidValueError
from agman.fileio import atomic_write_text

#: (column, score, chance) of the attention measures: the score's mean ± sd over seeds / its mean chance level.
_MEASURES = (("pointing / chance", LOCALIZATION_COLUMNS.index("pointing"), LOCALIZATION_COLUMNS.index("pointing chance")),
             ("energy / chance", LOCALIZATION_COLUMNS.index("energy"), LOCALIZATION_COLUMNS.index("energy chance")))


@dataclass
class SeedsResult:
    out_dir: Path
    seeds: list[int]
    tables: str
    seconds: float


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; at least two distinct non-negative integers."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InvalidValueError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise InvalidValueError(f"--seeds {text!r}: expected at least two distinct non-negative integers, e.g. 0,1,2")
    return seeds


def mean_sd(values: list[float]) -> str:
    """``"86.76 ± 0.41"`` (percent, sample standard deviation); ``"n/a"`` when any value is missing."""
    if not values or any(v is None or math.isnan(v) for v in values):
        return "n/a"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{float(np.mean(values)):.2f} ± {sd:.2f}"


def seed_table(per_seed: dict[int, dict[str, dict]], names: list[str], labels: list[str],
               attribute_names: list[str],
               switches: dict[str, list[str]] | None = None) -> tuple[list[str], list[list]]:
    """Header and rows of one grid over the seeds: ``per_seed[seed][run name]`` is that run's test
    metrics (``EvaluationResult.to_dict``); ``names[i]`` is shown as ``labels[i]``, followed by the
    grid's switch columns (``switches[column][i]``, e.g. ✓ / -)."""
    switches = switches or {}
    seeds = sorted(per_seed)
    firsts = {name: 0 for name in names}
    for s in seeds:
        best = max(names, key=lambda n: per_seed[s][n]["map"])
        firsts[best] += 1
    located = any("localization" in per_seed[s][n] for s in seeds for n in names)  # as in asfr_table
    header = ["method", *switches, *attribute_names, "MAP", "MAP range", f"first (of {len(seeds)})",
              *([column for column, _, _ in _MEASURES] if located else [])]
    rows = []
    for i, (name, label) in enumerate(zip(names, labels)):
        runs = [per_seed[s][name] for s in seeds]
        maps = [100 * r["map"] for r in runs]
        row = [label, *(values[i] for values in switches.values()),
               *(mean_sd([100 * r["map_per_attribute"][a] for r in runs]) for a in attribute_names),
               mean_sd(maps), f"{min(maps):.2f}-{max(maps):.2f}", str(firsts[name])]
        if located:  # "n/a" for a model without maps (CSN) or a run where nothing was scored
            cells = [localization_cells(r.get("localization")) for r in runs]
            for _, score, chance in _MEASURES:
                values, chances = [c[score] for c in cells], [c[chance] for c in cells]
                scored = all(isinstance(v, float) and not math.isnan(v) for v in values)
                row.append(f"{mean_sd(values)} / {float(np.mean(chances)):.2f}" if scored else "n/a")
        rows.append(row)
    return header, rows


def run_ablation_seeds(config_path: str | Path, out_dir: str | Path, seeds: list[int], *,
                       grids: list[str] = ("models", "hierarchy", "aga"), overrides: list[str] | tuple[str, ...] = (),
                       quick: bool = False, split: str = "test") -> SeedsResult:
    """Run the grids once per seed (``<out>/seed-<s>/``, ``train.seed=<s>`` after ``overrides``) and
    write ``<out>/ablation-seeds-<grid>.{md,csv}``: mean ± sd over the seeds."""
    start = time.perf_counter()
    out = Path(out_dir)
    per_grid, _ = plan(list(grids))
    per_seed: dict[int, dict[str, dict]] = {}
    attribute_names: list[str] = []
    for seed in seeds:
        result = run_ablation(config_path, out / f"seed-{seed}", grids=list(grids),
                              overrides=[*overrides, f"train.seed={seed}"], quick=quick, split=split)
        per_seed[seed], attribute_names = result.metrics, result.attribute_names
    texts = []
    for grid, variants in per_grid.items():
        title = f"{GRID_TITLES[grid]}, {split} split: mean ± sd over seeds {', '.join(map(str, seeds))}"
        header, rows = seed_table(per_seed, [v.name for v in variants], [row_label(v, variants) for v in variants],
                                  attribute_names, switch_columns(variants))
        write_csv(out / f"ablation-seeds-{grid}.csv", header, rows)
        atomic_write_text(out / f"ablation-seeds-{grid}.md", f"# {title}\n\n{markdown_table(header, rows)}\n")
        texts.append(f"{title}\n{format_table(header, rows)}")
    return SeedsResult(out, list(seeds), "\n\n".join(texts), time.perf_counter() - start)
