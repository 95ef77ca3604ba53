"""What reading an index folder's vectors into memory costs, against memory-mapping them (#19.3).

A served folder overwritten in place (``cp -r rebuilt/. served/``) killed ``agman serve`` with
SIGBUS through its memory-mapped vector files, so ``FaissStore`` now reads them into memory.  This
writes a folder of ``--items`` random unit vectors (``bench/index_integrity.py``'s writer: no
model) and measures, in the same run on the same files, each way of holding them — ``mmap``
(``FaissStore(mmap=True)``, the old path) and ``copy`` (the default) — in a fresh process each,
one after the other, ``--rounds`` times alternating:

* open: ``FaissStore(folder, verify="size", load=True)`` with the files in the page cache;
* search: median ms of an exact scan of every row of one attribute + top 10 (``shortlist``), over
  ``--queries`` queries after one warm-up;
* memory: the process's anonymous and file-backed resident bytes after the searches.

    python bench/vector_copy.py --items 200000 --attributes 4 --dim 256
    python bench/vector_copy.py --quick
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def measure(folder: Path, mmap: bool, queries: int) -> dict:
    """One process's figures for one way of holding the vectors."""
    from agman.retrieval.backends.faiss.store import FaissStore

    started = time.perf_counter()
    store = FaissStore(folder, verify="size", load=True, mmap=mmap)
    open_s = time.perf_counter() - started
    rng = np.random.default_rng(1)
    selection = store.select()
    times = []
    for i in range(queries + 1):
        q = rng.standard_normal(store.info.dim).astype(np.float32)
        t = time.perf_counter()
        store.shortlist(i % len(store.info.attributes), q / np.linalg.norm(q), 10, selection)
        if i:
            times.append(time.perf_counter() - t)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kib = {k: int(status[k].split()[0]) for k in ("RssAnon", "RssFile")}
    return {"open_s": open_s, "search_ms": 1000 * statistics.median(times),
            "anon_mb": kib["RssAnon"] / 1024, "file_mb": kib["RssFile"] / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--attributes", type=int, default=4)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="20,000 items, 2 attributes, 1 round")
    p.add_argument("--child", nargs=2, metavar=("FOLDER", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child[0]), args.child[1] == "mmap", args.queries)))
        return
    if args.quick:
        args.items, args.attributes, args.rounds = 20_000, 2, 1
    from index_integrity import write_folder

    with tempfile.TemporaryDirectory(prefix="agman-vector-copy-") as tmp:
        folder = Path(tmp) / "index"
        write_folder(folder, args.items, args.attributes, args.dim)
        vector_mb = args.items * args.attributes * args.dim * 4 / 2**20
        print(f"{args.items} items x {args.attributes} attributes x {args.dim} dims: {vector_mb:.0f} MB of vectors")
        runs: dict[str, list[dict]] = {"mmap": [], "copy": []}
        for _ in range(args.rounds):
            for mode in runs:
                out = subprocess.run([sys.executable, __file__, "--child", str(folder), mode,
                                      "--queries", str(args.queries)], check=True, capture_output=True, text=True)
                runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'':6} {'open s':>8} {'search ms':>10} {'anon MB':>9} {'file MB':>9}   (medians of {args.rounds} runs)")
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
    for mode, figures in med.items():
        print(f"{mode:6} {figures['open_s']:8.3f} {figures['search_ms']:10.2f} {figures['anon_mb']:9.0f} "
              f"{figures['file_mb']:9.0f}")
    m, c = med["mmap"], med["copy"]
    print(f"copy / mmap: open {c['open_s'] / m['open_s']:.2f}x, search {c['search_ms'] / m['search_ms']:.2f}x, "
          f"resident {(c['anon_mb'] + c['file_mb']) / (m['anon_mb'] + m['file_mb']):.2f}x")


if __name__ == "__main__":
    main()
