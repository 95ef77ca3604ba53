"""MAP at FashionAI validation scale: the vectorised evaluation against the per-query loop reference.

    python bench/eval_speed.py                       # 3,600 queries x 14,400 candidates, D = 1024, one core
    python bench/eval_speed.py --dim 16 --queries 200   # seconds: checks the script works

Shapes come from the real FashionAI validation split files (``../shared/data/fashionai_split``
or ``--split-dir``); embeddings are random (on a grid that makes float32 dot products exact).
Both implementations must agree to 1e-9 on every query's AP; the figures are best-of-``--repeat``
wall times on one thread.  ``score_products_seconds`` times the float32 score products alone (what
no ranking method avoids), and ``ranking_and_metrics_vs_products`` the rest of the evaluation
(ranking, AP, R@k, P@k) in units of it.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core, before numpy loads
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPLIT = REPO.parent / "shared" / "data" / "fashionai_split"


def loop_map(embeddings: np.ndarray, split, reference_ap) -> np.ndarray:
    """AP of every query, one query at a time: scores, Python sort, the test suite's reference AP."""
    ap = np.zeros(len(split.queries))
    for row, (img, a, value) in enumerate(split.queries):
        cands = split.candidates[split.candidates[:, 1] == a]
        scores = embeddings[cands[:, 0], a] @ embeddings[img, a]
        ap[row] = reference_ap(scores, cands[:, 2] == value)
    return ap


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split-dir", default=str(DEFAULT_SPLIT))
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--queries", type=int, default=0, help="keep only the first N queries (0: all)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--skip-loop", action="store_true", help="time the vectorised evaluation only")
    p.add_argument("--out", help="write the JSON here too")
    args = p.parse_args(argv)

    sys.path.insert(0, str(REPO / "tests"))
    from test_engine_metrics import (
        reference_ap,  # the loop + sort reference the tests check against
    )

    from agman.data.layouts import open_dataset
    from agman.engine.evaluate import QUERY_CHUNK, attribute_rows, evaluate_asfr
    from agman.fileio import atomic_write_json

    split = open_dataset(args.split_dir, allow_singletons=True).split("valid")
    if args.queries:
        split.queries = split.queries[: args.queries]
    # Random embeddings on a 1/16 grid: every dot product (and partial sum) is exact in float32, so
    # the loop's one-query products and the vectorised chunked products give identical scores
    # (with some exact ties), and the two AP computations can be compared to 1e-9.
    rng = np.random.default_rng(0)
    emb = (rng.integers(-8, 9, (len(split), split.labels.shape[1], args.dim)) / 16).astype(np.float32)

    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        result = evaluate_asfr(emb, split)
        times.append(time.perf_counter() - t)
    times_mm = []  # the score products alone: the part no ranking method avoids
    for _ in range(args.repeat):
        t = time.perf_counter()
        for a in np.unique(split.queries[:, 1]):
            q_rows, c_rows = attribute_rows(split, int(a))
            cands = np.ascontiguousarray(emb[split.candidates[c_rows, 0], a])
            for start in range(0, len(q_rows), QUERY_CHUNK):
                np.ascontiguousarray(emb[split.queries[q_rows[start:start + QUERY_CHUNK], 0], a]) @ cands.T
        times_mm.append(time.perf_counter() - t)
    out = {
        "queries": int(len(split.queries)), "candidates": int(len(split.candidates)), "dim": args.dim,
        "attributes": int(split.labels.shape[1]), "threads": os.environ.get("OMP_NUM_THREADS"),
        "vectorised_seconds": round(min(times), 4), "score_products_seconds": round(min(times_mm), 4),
        "map": result.overall_map,
    }
    out["ranking_and_metrics_vs_products"] = round((min(times) - min(times_mm)) / min(times_mm), 2)
    if not args.skip_loop:
        t = time.perf_counter()
        ref = loop_map(emb, split, reference_ap)
        out["loop_seconds"] = round(time.perf_counter() - t, 3)
        out["max_abs_difference"] = float(np.abs(ref - result.ap).max())
        out["speedup"] = round(out["loop_seconds"] / out["vectorised_seconds"], 1)
        if out["max_abs_difference"] > 1e-9:
            raise SystemExit(f"vectorised and loop AP differ by {out['max_abs_difference']}")
    if args.out:
        atomic_write_json(args.out, out, indent=2)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
