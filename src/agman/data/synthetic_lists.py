"""The synthetic set's triplet lists (its CSN layout, ``triplets/``) and regions files, written from a
plan (:mod:`agman.data.synthetic`) and the regions read back."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from agman.data.spec import SPLIT_NAMES, Attribute
from agman.data.synthetic_plan import PlannedImage
from agman.fileio import atomic_write_text

CSN_SPLIT_NAMES = {"train": "train", "valid": "val", "test": "test"}


def _sample_triplets(rng: np.random.Generator, images: np.ndarray, values: np.ndarray, count: int) -> np.ndarray:
    """``count`` rows (anchor, far, close): close shares the anchor's value, far has another one."""
    order = np.argsort(values, kind="stable")
    images, values = images[order], values[order]
    n = len(images)
    anchor = rng.integers(0, n, count)
    first = np.searchsorted(values, values[anchor], side="left")
    group = np.searchsorted(values, values[anchor], side="right") - first
    close = first + (anchor - first + rng.integers(1, group)) % group
    r = rng.integers(0, n - group)
    far = r + (r >= first) * group
    return np.stack([images[anchor], images[far], images[close]], axis=1)


def write_triplets(plan: list[PlannedImage], key: list[int], counts: tuple[int, int, int], out: Path,
                   attributes: tuple[Attribute, ...]) -> dict[str, int]:
    """The CSN layout of the set in ``out/triplets``: ``counts`` triplets per attribute and split, drawn
    from the RNG stream ``key + [split, attribute]``; returns the triplets written per split."""
    tri = out / "triplets"
    (tri / "tripletlists").mkdir(parents=True, exist_ok=True)
    atomic_write_text(tri / "filenames.json", json.dumps([p.path for p in plan], indent=0) + "\n")
    shutil.copyfile(out / "meta.json", tri / "meta.json")
    written = {}
    for s, (split, count) in enumerate(zip(SPLIT_NAMES, counts)):
        items = [p for p in plan if p.split == split]
        for a, attr in enumerate(attributes):
            mine = [p for p in items if a in p.annotated]
            rng = np.random.default_rng([*key, s, a])
            rows = _sample_triplets(
                rng, np.array([p.number for p in mine], dtype=np.int64), np.array([p.values[a] for p in mine]), count
            )
            name = f"{attr.name}_tripletlist_{CSN_SPLIT_NAMES[split]}.txt"
            atomic_write_text(tri / "tripletlists" / name, "".join(f"{x} {y} {z}\n" for x, y, z in rows.tolist()))
        written[split] = count
    return written


def write_regions(plan: list[PlannedImage], records: list[dict], out: Path) -> None:
    """``regions_<split>.jsonl``: each image's rendering record, in the split's image order."""
    for split in SPLIT_NAMES:
        lines = [
            json.dumps(rec, separators=(",", ":")) + "\n" for item, rec in zip(plan, records) if item.split == split
        ]
        atomic_write_text(out / f"regions_{split}.jsonl", "".join(lines))


def read_regions(root: str | Path, split: str, *, parts: bool = False) -> np.ndarray | list[dict[str, list]]:
    """Ground-truth boxes of one split: int array [N, A, 4] of (x0, y0, x1, y1) in image pixels
    (x1, y1 exclusive; attributes in meta.json order; -1 for an attribute the image does not show,
    mode 'fashionai'), or with ``parts=True`` each image's ``{attribute: [box, ...]}`` (two arm
    boxes for sleeve_length)."""
    path = Path(root) / f"regions_{split}.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if parts:
        return [rec["parts"] for rec in records]
    names = json.loads((Path(root) / "meta.json").read_text(encoding="utf-8"))["ATTRIBUTES"]
    return np.array([[rec["regions"].get(n, [-1] * 4) for n in names] for rec in records],
                    dtype=np.int64).reshape(-1, len(names), 4)
