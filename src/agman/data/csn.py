"""The CSN layout (Zappos50k): ``filenames.json`` + ``tripletlists/<cond>_tripletlist_<split>.txt``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from agman.data.asen import pick_image_root
from agman.data.lines import int_rows, read_json
from agman.data.meta import attributes_from_meta, show
from agman.data.spec import UNLABELED, Attribute, DatasetError, DatasetSpec, Split

CSN_CONDITIONS = ("class", "closure", "gender", "heel")
"""Zappos50k conditions in the CSN layout, in index order (the triplet-list file name prefixes)."""

_CSN_SPLIT_FILES = {"train": "train", "valid": "val", "test": "test"}


def _read_paths(fn_path: Path) -> list[str]:
    if not fn_path.is_file():
        raise DatasetError("missing filenames.json (a JSON list of image paths)", fn_path)
    paths = read_json(fn_path)
    if not isinstance(paths, list):
        raise DatasetError(f"expected a JSON list of non-empty image path strings, got {type(paths).__name__}", fn_path)
    bad = next((i for i, p in enumerate(paths) if not (isinstance(p, str) and p)), None)
    if bad is not None:
        raise DatasetError(
            f"expected a JSON list of non-empty image path strings (entry {bad} is {show(paths[bad])})", fn_path
        )
    return paths


def _read_triplets(path: Path, n: int) -> np.ndarray:
    rows = []
    for lineno, row in int_rows(path, 3):
        for idx in row:
            if not 0 <= idx < n:
                raise DatasetError(
                    f"image index {idx} is past filenames.json ({n} images: expected 0..{n - 1})", path, lineno
                )
        rows.append(row)
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def read_csn(
    root: str | Path, *, image_root: str | Path | None = None, conditions: tuple[str, ...] | None = None
) -> DatasetSpec:
    """Read the CSN layout: ``filenames.json`` + ``tripletlists/<cond>_tripletlist_<split>.txt``.

    Each triplet line ``a b c`` says image a is more similar to c than to b under that condition;
    they are stored as rows ``(anchor=a, far=b, close=c)``.  Zappos50k has no value labels in this
    layout, so every attribute has zero named values and ``labels`` is all ``UNLABELED``.
    The conditions are Zappos50k's (class, closure, gender, heel) unless ``conditions`` is given or
    a ``meta.json`` beside ``filenames.json`` lists ``ATTRIBUTES`` (as agman's synthetic set does).
    """
    root = Path(root)
    if conditions is None:
        conditions = CSN_CONDITIONS
        if (root / "meta.json").is_file():
            conditions = tuple(a.name for a in attributes_from_meta(root / "meta.json", None))
    fn_path = root / "filenames.json"
    paths = _read_paths(fn_path)
    n = len(paths)
    attributes = [Attribute(c, ()) for c in conditions]
    labels = np.full((n, len(attributes)), UNLABELED, dtype=np.int32)
    splits: dict[str, Split] = {}
    for split, suffix in _CSN_SPLIT_FILES.items():
        triplets: dict[int, np.ndarray] = {}
        for a, cond in enumerate(conditions):
            path = root / "tripletlists" / f"{cond}_tripletlist_{suffix}.txt"
            if path.is_file():
                triplets[a] = _read_triplets(path, n)
        if triplets:
            splits[split] = Split(split, paths, labels, triplets=triplets)
    if not splits:
        raise DatasetError(
            f"no triplet lists found (expected <condition>_tripletlist_<train|val|test>.txt, "
            f"conditions {', '.join(conditions)})",
            root / "tripletlists",
        )
    if image_root is None:
        image_root = pick_image_root(root, paths[:3])
        if image_root == root and paths and not (root / paths[0]).exists() and (root / "ut-zap50k-images").is_dir():
            image_root = root / "ut-zap50k-images"
    return DatasetSpec(
        name="zappos50k", root=Path(image_root), attributes=attributes, splits=splits, source=str(fn_path)
    )
