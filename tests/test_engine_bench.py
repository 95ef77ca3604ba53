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
    result = load("gpu_train").main(["--tiny", "--device", "cpu", "--batches", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["device"].startswith("cpu") and not any(result["switches"].values())  # CPU: every switch off
    (train,) = result["training"]
    assert train["batch_triplets"] == 2
    for name in ("released", "agman_fp32", "agman"):
        assert train[name]["triplets_per_s"] > 0
    assert train["agman"]["speed_vs_released"] > 0
    embed = result["embed_all"]
    assert embed["output_shape"] == [8, 8, 512] and embed["agman"]["images_per_s"] > 0
    assert embed["max_abs_difference_vs_released"] < 1e-4  # same network, same weights, fp32 on CPU
    e2e = result["end_to_end"]
    assert e2e["images"] == 8 and e2e["train_triplets_per_s"] > 0 and e2e["loader_only_triplets_per_s"] > 0


def test_released_step_network_is_agman_official(tmp_path):
    """The benchmarks' released baseline computes what agman-official computes (same weights)."""
    import torch

    released = load("released_step")
    from agman.models.registry import build_model

    torch.manual_seed(0)
    official = build_model("agman-official", 5, backbone="resnet18").eval()
    net = released.ReleasedNet(5, "resnet18").eval()
    released.copy_from_agman_official(net, official)
    x, ids = torch.randn(3, 3, 64, 64), torch.tensor([0, 3, 4])
    with torch.no_grad():
        out = official(x, ids)
        emb, logits = net(x, ids)
    assert torch.allclose(emb, out.embedding, atol=1e-6) and torch.allclose(logits, out.attribute_logits, atol=1e-6)


def test_train_step_benchmark_races_released_and_agman():
    result = load("train_step").main(["--backbone", "resnet18", "--size", "32", "--batch", "2", "--rounds", "1"])
    steps = result["steps"]
    assert set(steps) == {"released", "agman", "agman_channels_last", "agman_channels_last_fused",
                          "agman_channels_last_fused_stacked"}
    assert steps["released"]["speed_vs_released_wall"] == 1.0
    assert all(s["triplets_per_s"] > 0 and s["speed_vs_released_cpu"] > 0 for s in steps.values())


def test_demo_step_benchmark_races_mains_path_and_the_presets(tmp_path):
    out = tmp_path / "demo_step.json"
    result = load("demo_step").main(["--images", "80", "--rounds", "1", "--threads", "1", "--dir", str(tmp_path),
                                     "--out", str(out), "data.input_size=32", "train.batch_size=4"])
    assert json.loads(out.read_text()) == result
    main, data, new = (result["figures"][k] for k in ("main", "data", "new"))
    assert all(v > 0 for v in (*main.values(), *data.values(), *new.values()))
    assert result["speedup_cpu"] == round(main["iteration_cpu_s"] / new["iteration_cpu_s"], 2)
    assert result["speedup_data_cpu"] == round(main["iteration_cpu_s"] / data["iteration_cpu_s"], 2)
    assert "bn_passes stacked, small_map_matmul True" in result["setting"]
    assert (tmp_path / "synthetic" / ".agman-cache").is_dir()  # the new path read the cache it filled


@needs_real_split
def test_eval_speed_benchmark_agrees_with_the_loop(tmp_path):
    result = load("eval_speed").main(["--dim", "8", "--queries", "120", "--repeat", "1"])
    assert result["queries"] == 120 and result["candidates"] == 14400
    assert result["max_abs_difference"] <= 1e-9 and result["speedup"] > 1
    assert result["score_products_seconds"] > 0 and "ranking_and_metrics_vs_products" in result


def test_input_pipeline_benchmark_runs_tiny(tmp_path):
    out = tmp_path / "input.json"
    result = load("input_pipeline").main(["--images", "12", "--image-side", "96", "--size", "32", "--batch", "2",
                                          "--seconds", "0.05", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    pipes = result["pipelines"]
    assert set(pipes) == {"files", "files_draft", "cache"}
    assert all(p["images"] >= 12 and p["images_per_cpu_s"] > 0 for p in pipes.values())
    assert result["cache_vs_files"] > 0 and result["draft_pixel_difference"]["max_abs"] >= 0
