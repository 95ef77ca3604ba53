"""`agman ablate --seeds`: the grids repeated over seeds, shown as mean ± sd."""
from __future__ import annotations

import csv

import pytest
from test_engine_cli import TINY

from agman.cli import main
from agman.engine.seeds import mean_sd, parse_seeds, seed_table


def _metrics(maps: dict[str, float], pointing: float | None = None) -> dict:
    m = {"map": sum(maps.values()) / len(maps), "map_per_attribute": maps}
    if pointing is not None:
        m["localization"] = {"available": True, "all": {"pointing": {"mean": pointing},
                                                        "pointing_chance": {"mean": 0.1},
                                                        "energy": {"mean": pointing / 2},
                                                        "energy_chance": {"mean": 0.05}}}
    return m


def test_seed_table_means_spreads_and_firsts():
    per_seed = {
        0: {"a": _metrics({"x": 0.80, "y": 0.60}, 0.3), "b": _metrics({"x": 0.70, "y": 0.60})},
        1: {"a": _metrics({"x": 0.60, "y": 0.60}, 0.5), "b": _metrics({"x": 0.70, "y": 0.70})},
        2: {"a": _metrics({"x": 0.70, "y": 0.90}, 0.4), "b": _metrics({"x": 0.70, "y": 0.80})},
    }
    header, rows = seed_table(per_seed, ["a", "b"], ["A", "B"], ["x", "y"])
    assert header == ["method", "x", "y", "MAP", "MAP range", "first (of 3)", "pointing / chance",
                      "energy / chance"]
    a, b = rows
    # x of A: 80, 60, 70 -> mean 70, sample sd 10
    assert a[:2] == ["A", "70.00 ± 10.00"] and b[1] == "70.00 ± 0.00"
    # MAP of A per seed 70, 60, 80; of B 65, 70, 75: A first in seeds 0 and 2, B in seed 1
    assert a[3] == "70.00 ± 10.00" and a[4] == "60.00-80.00" and (a[5], b[5]) == ("2", "1")
    assert a[6] == "40.00 ± 10.00 / 10.00" and b[6] == "n/a"  # B has no maps (CSN-like)
    assert a[7] == "20.00 ± 5.00 / 5.00" and b[7] == "n/a"
    # a grid's switch columns follow the method
    header, rows = seed_table(per_seed, ["a", "b"], ["A", "B"], ["x", "y"], {"ASA": ["✓", "-"]})
    assert header[:3] == ["method", "ASA", "x"] and rows[1][:3] == ["B", "-", "70.00 ± 0.00"]


def test_mean_sd_and_seed_parsing():
    assert mean_sd([1.0, 3.0]) == "2.00 ± 1.41" and mean_sd([1.0, None]) == "n/a"
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    for bad in ("0", "0,0", "a,b", "-1,2"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_ablate_over_seeds_writes_each_seed_and_the_spread(tmp_path, capsys):
    from agman.data.synthetic import generate

    root = generate(tmp_path / "s", n_images=120, size=48, seed=1, progress=False)
    out = tmp_path / "ab"
    args = ["ablate", "--config", "configs/synthetic/agman.yaml", "--grid", "models", "--seeds", "3,4",
            "--out", str(out), f"data.root={root}", "data.synthetic=null", "output.progress=false", *TINY]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "mean ± sd over seeds 3, 4" in printed and "first (of 2)" in printed
    for seed in (3, 4):
        assert (out / f"seed-{seed}" / "ablation-models.csv").is_file()
    with open(out / "ablation-seeds-models.csv", newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"CSN", "ASENet_V2", "AttnFashion", "AG-MAN"}
    assert sum(int(r["first (of 2)"]) for r in rows.values()) == 2
    assert rows["CSN"]["pointing / chance"] == "n/a" and "±" in rows["AG-MAN"]["pointing / chance"]
    assert rows["CSN"]["energy / chance"] == "n/a" and "±" in rows["AG-MAN"]["energy / chance"]
    # the seeds really differ (train.seed reached the runs): AG-MAN's two MAPs are not the same
    seed_maps = []
    for seed in (3, 4):
        with open(out / f"seed-{seed}" / "ablation-models.csv", newline="") as f:
            seed_maps.append({r["method"]: r["MAP"] for r in csv.DictReader(f)}["AG-MAN"])
    assert seed_maps[0] != seed_maps[1]
    assert (out / "ablation-seeds-models.md").read_text().startswith("# Comparison of models")


def test_bad_seeds_are_refused_before_any_training(tmp_path, capsys):
    assert main(["ablate", "--config", "configs/synthetic/agman.yaml", "--seeds", "1", "--out", str(tmp_path)]) == 2
    assert "at least two distinct" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
