"""The benchmark scripts run (tiny sizes on CPU) and report what they promise."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from conftest import needs_real_split

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_train_benchmark_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    result = load("gpu_train").main(["--tiny", "--device", "cpu", "--batches", "2", "--dtypes", "fp32",
                                     "--out", str(out)])
    assert json.loads(out.read_text()) == result
    (train,) = result["training"]
    assert train["batch_triplets"] == 2 and train["dtype"] == "fp32" and train["triplets_per_s"] > 0
    (embed,) = result["embed_all"]
    assert embed["output_shape"] == [8, 8, 32] and embed["images_per_s"] > 0
    assert result["device"].startswith("cpu")


@needs_real_split
def test_eval_speed_benchmark_agrees_with_the_loop(tmp_path):
    result = load("eval_speed").main(["--dim", "8", "--queries", "120", "--repeat", "1"])
    assert result["queries"] == 120 and result["candidates"] == 14400
    assert result["max_abs_difference"] <= 1e-9 and result["speedup"] > 1


def test_input_pipeline_benchmark_runs_tiny(tmp_path):
    out = tmp_path / "input.json"
    result = load("input_pipeline").main(["--images", "12", "--image-side", "96", "--size", "32", "--batch", "2",
                                          "--seconds", "0.05", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    pipes = result["pipelines"]
    assert set(pipes) == {"files", "files_draft", "cache"}
    assert all(p["images"] >= 12 and p["images_per_cpu_s"] > 0 for p in pipes.values())
    assert result["cache_vs_files"] > 0 and result["draft_pixel_difference"]["max_abs"] >= 0
