"""bench/synth_speed.py runs at a tiny size in both kinds of garment and prints its rates."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "synth_speed.py"


@pytest.mark.parametrize("mode", ["all", "fashionai"])
def test_synth_speed_runs_tiny(mode, capsys):
    spec = importlib.util.spec_from_file_location("bench_synth_speed", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--size", "48", "--images", "6", "--repeats", "1", "--mode", mode])
    text = capsys.readouterr().out
    assert f"(mode {mode}): 48 px, 6 images" in text
    rates = [float(x) for x in re.findall(r":\s+(\d+) images/s", text)]
    assert len(rates) == 3 and min(rates) > 0
