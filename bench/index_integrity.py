"""What checking an index folder's integrity costs at open, for a catalog-sized index.

Writes an index folder of ``--items`` random unit vectors for ``--attributes`` attributes of
dimension ``--dim`` (vector files and FAISS flat indexes: what ``agman index`` writes, without a
model), records its files' sizes and hashes, then times, in the same run and on the same files,
``FaissStore(folder, verify=...)`` (opening: index.json, items.jsonl, the checks) at each level:

* ``size``    the baseline: what an open did before hashes (index.json, items, a stat per file);
* ``sample``  + 16 blocks of 64 KiB hashed per file (the default of search / attention / compare);
* ``full``    + every byte hashed (the default of ``agman serve``, once at start).

Each time is the median of ``--repeats`` opens with the files in the page cache (a cold read is
bound by the disk instead: size / bandwidth).  Also prints the cost of recording the hashes.

    python bench/index_integrity.py --items 100000 --attributes 8 --dim 1024 --out /tmp/idx100k
    python bench/index_integrity.py --quick
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from agman.data.spec import Attribute
from agman.retrieval.backends.faiss.check import record_files
from agman.retrieval.backends.faiss.index import import_faiss, write_faiss
from agman.retrieval.backends.faiss.layout import IndexLayout
from agman.retrieval.backends.faiss.store import FaissStore
from agman.retrieval.info import IndexConfig, IndexedCheckpoint, IndexInfo
from agman.retrieval.items import Item, write_items


def write_folder(root: Path, items: int, attributes: int, dim: int) -> float:
    """An index folder of random vectors; returns the seconds spent recording the hashes."""
    faiss = import_faiss()
    layout = IndexLayout(root)
    root.mkdir(parents=True, exist_ok=True)
    attrs = [Attribute(f"attr{a}", tuple(f"v{v}" for v in range(5))) for a in range(attributes)]
    write_items(layout.items, [Item(f"images/{i:07d}.jpg", f"/data/catalog/images/{i:07d}.jpg",
                                    {a.name: "v1" for a in attrs[:3]}) for i in range(items)])
    rng = np.random.default_rng(0)
    for a in range(attributes):
        vectors = np.empty((items, dim), np.float32)
        for lo in range(0, items, 16384):
            block = rng.standard_normal((min(16384, items - lo), dim), dtype=np.float32)
            vectors[lo:lo + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
        layout.vectors(a).parent.mkdir(parents=True, exist_ok=True)
        vectors.tofile(layout.vectors(a))
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        write_faiss(layout.faiss(a), index)
        del vectors, index
    checkpoint = IndexedCheckpoint("bench", Path("/nonexistent/bench.pt"), "agman", 224, 0.875)
    info = IndexInfo(checkpoint, attrs, dim, IndexConfig(), count=items)
    started = time.perf_counter()
    record_files(layout, info)
    seconds = time.perf_counter() - started
    info.write(layout.info)
    return seconds


def time_open(root: Path, level: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        FaissStore(root, verify=level)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--attributes", type=int, default=8)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="index folder to write (default: a temporary one); reused if it exists")
    parser.add_argument("--quick", action="store_true", help="10,000 items, 4 attributes, D=256")
    args = parser.parse_args()
    if args.quick:
        args.items, args.attributes, args.dim = 10_000, 4, 256
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or Path(tmp) / "index")
        if not (root / "index.json").is_file():
            print(f"writing {args.items} items x {args.attributes} attributes x D={args.dim} to {root} ...", flush=True)
            recorded = write_folder(root, args.items, args.attributes, args.dim)
            print(f"recording the hashes at build: {recorded:.2f} s")
        total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        print(f"folder: {total / 2**30:.2f} GiB; opens, median of {args.repeats} (page cache warm):")
        base = time_open(root, "size", args.repeats)
        for level in ("size", "sample", "full"):
            seconds = base if level == "size" else time_open(root, level, args.repeats)
            print(f"  verify={level:<7} {seconds:7.3f} s  ({seconds / base:5.2f} x the size-only open, "
                  f"+{seconds - base:.3f} s)")


if __name__ == "__main__":
    main()
