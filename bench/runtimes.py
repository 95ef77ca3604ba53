"""Benchmark: images/s for every attribute at once on this CPU — PyTorch fp32, PyTorch bf16, ONNX Runtime fp32,
ONNX Runtime INT8 — and the released code's per-attribute loop, interleaved in one run; optionally each
runtime's MAP on a dataset split.

    python bench/runtimes.py                        # ResNet-50 agman-official, 224 px, 8 attributes, batch 8
    python bench/runtimes.py --checkpoint agman-demo/run/best.pt --data data/synthetic --split test
                                                    # a trained checkpoint: speed and MAP per runtime

Every runtime embeds the same batch in each round, round after round (interleaved, so a busy machine
slows all of them alike); the median and best images/s per runtime are printed with the ratio to the
released loop (A backbone passes per image, as the released evaluation embeds one attribute at a time)
and the largest |difference| of its embeddings from PyTorch fp32.  The INT8 graph is calibrated on
``--calibration`` images (the split's train images with --data, else random images: the speed does not
depend on them, the MAP does).  The load average is printed: the machine may be shared.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from agman.data.spec import Attribute
from agman.engine.checkpoint import load_model, save_checkpoint
from agman.engine.onnx_export import export_onnx
from agman.engine.onnx_runtime import OnnxModel
from agman.engine.quantize import calibration_batches, quantize_onnx
from agman.models import build_model


def synthetic_checkpoint(folder: Path, args) -> Path:
    """A randomly initialised model (seed 0) saved as a checkpoint: speed does not depend on the weights."""
    torch.manual_seed(0)
    model = build_model(args.model, args.attributes, backbone=args.backbone)
    attributes = [Attribute(f"attribute{a}", ("0", "1")) for a in range(args.attributes)]
    return save_checkpoint(folder / "model.pt", model=model, model_name=args.model, attributes=attributes,
                           input_size=args.size, crop_ratio=1.0)


def runtimes(model, fp32: OnnxModel, int8: OnnxModel, released: bool) -> dict:
    """Name -> ``images -> [B, A, D]`` float32."""
    def bf16(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.embed_all(x).float()

    def per_attribute(x):  # the released evaluation: one forward pass per (image, attribute)
        return torch.stack([model(x, torch.full((len(x),), a, dtype=torch.long)).embedding
                            for a in range(model.n_attributes)], dim=1)

    out = {"pytorch fp32": model.embed_all, "pytorch bf16": bf16, "onnxruntime fp32": fp32.embed_all,
           "onnxruntime int8": int8.embed_all}
    if released:
        out["released per-attribute loop (fp32)"] = per_attribute
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a trained agman checkpoint (default: a random agman-official ResNet-50)")
    parser.add_argument("--model", default="agman-official")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--attributes", type=int, default=8, help="attributes (default 8, FashionAI)")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels (default 224)")
    parser.add_argument("--batch", type=int, default=8, help="images per batch (default 8)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for torch and ORT (default: all)")
    parser.add_argument("--no-released", action="store_true", help="skip the per-attribute loop (A passes)")
    parser.add_argument("--data", help="dataset root: also measure each runtime's MAP on --split")
    parser.add_argument("--split", default="test")
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--work", help="folder for the exports (default: a temporary folder)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    os.environ["AGMAN_ORT_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        ckpt = Path(args.checkpoint) if args.checkpoint else synthetic_checkpoint(work, args)
        model, info = load_model(ckpt)
        size = info.input_size
        spec = None
        if args.data:
            from agman.data.layouts import open_dataset

            spec = open_dataset(args.data)
            train = spec.split("train")
            calib = calibration_batches([str(Path(spec.root) / p) for p in train.paths], input_size=size,
                                        crop_ratio=info.crop_ratio, count=args.calibration_images)
        else:
            g = torch.Generator().manual_seed(1)
            calib = (torch.randn(8, 3, size, size, generator=g).numpy() for _ in range(args.calibration_images // 8))
        t = time.perf_counter()
        fp32_path = export_onnx(ckpt, work / "model.onnx")
        export_s = time.perf_counter() - t
        t = time.perf_counter()
        int8_path = quantize_onnx(fp32_path, work / "model.int8.onnx", calib)
        quant_s = time.perf_counter() - t
        fp32, int8 = OnnxModel(fp32_path, info.identity), OnnxModel(int8_path, info.identity)
        ways = runtimes(model, fp32, int8, released=not args.no_released)

        x = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        times: dict[str, list[float]] = {name: [] for name in ways}
        diffs = {}
        with torch.inference_mode():
            reference = model.embed_all(x)
            for name, fn in ways.items():  # warm-up, and each way's difference from PyTorch fp32
                diffs[name] = (fn(x) - reference).abs().max().item()
            for _ in range(args.rounds):
                for name, fn in ways.items():
                    start = time.perf_counter()
                    fn(x)
                    times[name].append(time.perf_counter() - start)

        load = os.getloadavg()
        print(f"{info.model_name} ({model.config.get('backbone')}), {size} px, {model.n_attributes} attributes, "
              f"D={model.embedding_dim}, batch {args.batch}, {args.threads} thread(s), {args.rounds} interleaved rounds; "
              f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(f"export {export_s:.1f} s, INT8 quantization {quant_s:.1f} s; file sizes fp32 "
              f"{fp32_path.stat().st_size / 2**20:.1f} MiB, int8 {int8_path.stat().st_size / 2**20:.1f} MiB")
        base_name = "released per-attribute loop (fp32)"
        base = statistics.median(times[base_name]) if base_name in times else None
        print(f"{'runtime':38s} {'median img/s':>12s} {'best img/s':>10s} {'x released':>10s} {'max|diff|':>10s}")
        for name, ts in times.items():
            med, best = args.batch / statistics.median(ts), args.batch / min(ts)
            ratio = f"{base / statistics.median(ts):10.1f}" if base else f"{'-':>10s}"
            print(f"{name:38s} {med:12.2f} {best:10.2f} {ratio} {diffs[name]:10.1e}")

        if spec is not None:
            from agman.engine.evaluate import evaluate_model

            print(f"\nMAP on {args.split} of {spec.name} ({len(spec.split(args.split).queries)} queries):")
            options = {"input_size": size, "crop_ratio": info.crop_ratio, "batch_size": 64}
            for name, way, amp in (("pytorch fp32", model, False), ("pytorch bf16", model, True),
                                   ("onnxruntime fp32", fp32, False), ("onnxruntime int8", int8, False)):
                result = evaluate_model(way, spec, args.split, amp=amp, **options)
                print(f"  {name:20s} MAP {100 * result.score:.2f}%")


if __name__ == "__main__":
    main()
