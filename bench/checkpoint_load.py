"""What verifying a checkpoint's weights hash adds to loading it (issue #12.3).

    python bench/checkpoint_load.py                      # AG-MAN on ResNet-50, 8 attributes (~108 MB)
    python bench/checkpoint_load.py --backbone resnet18 --repeat 3   # seconds: checks the script works

Saves a randomly initialised model with ``save_checkpoint`` in a temporary folder, then times (best of
``--repeat``, one torch thread) in the same run: ``torch.load`` alone, ``load_checkpoint`` without
and with verification, the hash alone, and ``load_model`` with its verification switched off (the
baseline) and on.  ``load_model`` hashes in a second thread while it builds the model, so its
``load_model_overhead`` (verified / unverified) is smaller than ``load_checkpoint_overhead``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="agman")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--attributes", type=int, default=8)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--out", help="write the JSON here too")
    args = p.parse_args(argv)

    import torch

    from agman.data.spec import Attribute
    from agman.engine import checkpoint
    from agman.engine.checkpoint import load_checkpoint, load_model, save_checkpoint, weights_identity
    from agman.fileio import atomic_write_json
    from agman.models.registry import build_model

    torch.set_num_threads(1)
    attrs = [Attribute(f"a{i}", ("x", "y", "z")) for i in range(args.attributes)]
    net = build_model(args.model, len(attrs), backbone=args.backbone)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(Path(tmp) / "model.pt", model=net, model_name=args.model, attributes=attrs,
                               input_size=224)
        state = torch.load(path, weights_only=True)["state_dict"]
        out = {
            "model": args.model, "backbone": args.backbone, "file_mb": round(path.stat().st_size / 1e6, 1),
            "torch_load_s": best_of(args.repeat, lambda: torch.load(path, map_location="cpu", weights_only=True)),
            "load_checkpoint_unverified_s": best_of(args.repeat, lambda: load_checkpoint(path, verify=False)),
            "load_checkpoint_verified_s": best_of(args.repeat, lambda: load_checkpoint(path)),
            "weights_identity_s": best_of(args.repeat, lambda: weights_identity(state)),
            "load_model_s": best_of(args.repeat, lambda: load_model(path)),
        }
        verify = checkpoint.verify_identity
        checkpoint.verify_identity = lambda ckpt, path: ckpt["identity"]  # the baseline: trust the recorded one
        try:
            out["load_model_unverified_s"] = best_of(args.repeat, lambda: load_model(path))
        finally:
            checkpoint.verify_identity = verify
    out = {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}
    out["load_checkpoint_overhead"] = round(out["load_checkpoint_verified_s"] / out["load_checkpoint_unverified_s"], 2)
    out["load_model_overhead"] = round(out["load_model_s"] / out["load_model_unverified_s"], 2)
    print(json.dumps(out, indent=2))
    if args.out:
        atomic_write_json(args.out, out, indent=2)
    return out


if __name__ == "__main__":
    main()
