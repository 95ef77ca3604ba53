"""The ASEN layout (FashionAI, DeepFashion, DARN, agman's synthetic set): reader and writer.

``filenames_<split>.txt`` (line number = image index), ``label_<split>.txt``
(``img attr value [attr value ...]``), ``query_<split>.txt`` / ``candidate_<split>.txt``
(``img attr value``); attribute names and counts from ``meta.json`` or an ASEN++ YAML
(:mod:`agman.data.meta`).  What stops and what is skipped is tabled in :mod:`agman.data.layouts`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agman.data.lines import int_rows, read_path_list
from agman.data.meta import attributes_from_meta, attributes_from_yaml, yaml_file_names
from agman.data.spec import SPLIT_NAMES, UNLABELED, Attribute, DatasetError, DatasetSpec, Split
from agman.fileio import atomic_write_text

FILE_PATTERNS = {
    "filenames": "filenames_{split}.txt",
    "label": "label_{split}.txt",
    "query": "query_{split}.txt",
    "candidate": "candidate_{split}.txt",
}
"""The split files' names; an ASEN++ YAML may rename them (:func:`agman.data.meta.yaml_file_names`)."""


class _LabelTable:
    """Collects (image, attribute, value) facts for one split, checking ranges and consistency, and
    remembers the file and line each fact was first read from (for later protocol errors)."""

    def __init__(self, n_images: int, attributes: list[Attribute], filenames: Path):
        self.labels = np.full((n_images, len(attributes)), UNLABELED, dtype=np.int32)
        self.attributes = attributes
        self.filenames = filenames
        self.first_seen: dict[tuple[int, int], tuple[Path, int]] = {}

    def check(self, path: Path, lineno: int, image: int, attr: int, value: int) -> None:
        n_images, n_attr = self.labels.shape
        if not 0 <= image < n_images:
            raise DatasetError(
                f"image index {image} is past the filenames list {self.filenames.name} "
                f"({n_images} images: expected 0..{n_images - 1})",
                path,
                lineno,
            )
        if not 0 <= attr < n_attr:
            raise DatasetError(f"attribute index {attr} out of range (expected 0..{n_attr - 1})", path, lineno)
        n_values = self.attributes[attr].n_values
        if not 0 <= value < n_values:
            raise DatasetError(
                f"value {value} out of range for attribute {attr} ({self.attributes[attr].name}: "
                f"expected 0..{n_values - 1})",
                path,
                lineno,
            )

    def add(self, path: Path, lineno: int, image: int, attr: int, value: int) -> None:
        self.check(path, lineno, image, attr, value)
        old = self.labels[image, attr]
        if old != UNLABELED and old != value:
            first_path, first_line = self.first_seen[(image, attr)]
            raise DatasetError(
                f"image {image} is given value {value} of attribute {attr} ({self.attributes[attr].name}), "
                f"but {first_path.name} line {first_line} gave it value {old}",
                path,
                lineno,
            )
        if old == UNLABELED:
            self.labels[image, attr] = value
            self.first_seen[(image, attr)] = (path, lineno)


@dataclass
class _PairFile:
    """A query or candidate file: rows ``(image, attribute, value)`` and the line of each row."""

    path: Path
    rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))
    lines: list[int] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path, table: _LabelTable) -> _PairFile:
        rows, lines = [], []
        for lineno, (image, attr, value) in int_rows(path, 3):
            table.add(path, lineno, image, attr, value)
            rows.append((image, attr, value))
            lines.append(lineno)
        return cls(path, np.asarray(rows, dtype=np.int64).reshape(-1, 3), lines)


@dataclass
class _ParsedSplit:
    """One split as read, with what the protocol checks need to name lines."""

    split: Split
    table: _LabelTable
    label_path: Path
    queries: _PairFile
    candidates: _PairFile


def _find_split_dir(root: Path, dataset: str | None) -> Path:
    if dataset:
        for child in root.iterdir() if root.is_dir() else []:
            if child.is_dir() and child.name.lower() == dataset.lower():
                return child
    return root


def pick_image_root(split_dir: Path, first_paths: list[str]) -> Path:
    """Images are named relative to the split folder or to its parent (both occur in the wild)."""
    for candidate in (split_dir, split_dir.parent):
        if first_paths and all((candidate / p).exists() for p in first_paths[:3]):
            return candidate
    return split_dir


def _find_meta(split_dir: Path, root: Path) -> Path:
    for candidate in (split_dir / "meta.json", split_dir.parent / "meta.json", root / "meta.json"):
        if candidate.is_file():
            return candidate
    raise DatasetError(
        "no meta.json found (looked in this folder and its parent); pass meta= / --meta, "
        "or an ASEN++ YAML with yaml_config= / --yaml",
        split_dir,
    )


def _read_split(split_dir: Path, split: str, files: dict[str, str], attributes: list[Attribute]) -> _ParsedSplit | None:
    fn_path = split_dir / files["filenames"].format(split=split)
    if not fn_path.is_file():
        return None
    paths = read_path_list(fn_path)
    table = _LabelTable(len(paths), attributes, fn_path)
    label_path = split_dir / files["label"].format(split=split)
    if label_path.is_file():
        for lineno, fields in int_rows(label_path, None):
            image = fields[0]
            for k in range(1, len(fields), 2):
                table.add(label_path, lineno, image, fields[k], fields[k + 1])
    q_path = split_dir / files["query"].format(split=split)
    c_path = split_dir / files["candidate"].format(split=split)
    queries, candidates = _PairFile(q_path), _PairFile(c_path)
    if q_path.is_file() or c_path.is_file():
        for path in (q_path, c_path):
            if not path.is_file():
                raise DatasetError(f"missing: a {split} split with queries needs both query and candidate files", path)
        queries = _PairFile.read(q_path, table)
        candidates = _PairFile.read(c_path, table)
    elif not label_path.is_file():
        raise DatasetError(
            f"split {split!r} has a filenames list but neither {label_path.name} nor query/candidate files",
            fn_path,
        )
    return _ParsedSplit(Split(split, paths, table.labels, queries.rows, candidates.rows), table, label_path,
                        queries, candidates)


def read_asen(
    root: str | Path,
    dataset: str | None = None,
    *,
    meta: str | Path | None = None,
    yaml_config: str | Path | None = None,
    image_root: str | Path | None = None,
    allow_singletons: bool = False,
) -> DatasetSpec:
    """Read the ASEN layout (FashionAI, DeepFashion, DARN, agman's synthetic set).

    ``root`` is the folder holding ``filenames_<split>.txt`` etc., or its parent when ``dataset``
    names a sub-folder.  Attribute names and counts come from ``meta.json`` (in that folder or its
    parent; one object, or one per dataset), or from an ASEN++ YAML given as ``yaml_config``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError("dataset folder not found", root)
    split_dir = _find_split_dir(root, dataset)
    files = dict(FILE_PATTERNS)
    if yaml_config is not None:
        attributes, data = attributes_from_yaml(Path(yaml_config))
        source = str(yaml_config)
        files = yaml_file_names(data, files)
    else:
        meta_path = Path(meta) if meta is not None else _find_meta(split_dir, root)
        attributes = attributes_from_meta(meta_path, dataset)
        source = str(meta_path)

    parsed = {}
    for split in SPLIT_NAMES:
        one = _read_split(split_dir, split, files, attributes)
        if one is not None:
            parsed[split] = one
    if not parsed:
        raise DatasetError(f"no filenames_<split>.txt files (expected one of {', '.join(SPLIT_NAMES)})", split_dir)

    if image_root is None:
        image_root = pick_image_root(split_dir, next(iter(parsed.values())).split.paths[:3])
    spec = DatasetSpec(
        name=dataset or split_dir.name,
        root=Path(image_root),
        attributes=attributes,
        splits={name: p.split for name, p in parsed.items()},
        source=source,
    )
    _validate_protocol(spec, parsed, allow_singletons)
    return spec


def _validate_protocol(spec: DatasetSpec, parsed: dict[str, _ParsedSplit], allow_singletons: bool) -> None:
    """Protocol-level checks: every train value can form a triplet; every query attribute has candidates.
    Each problem names the line the parser read the offending fact from."""
    train = parsed.get("train")
    if train is not None:
        for a, attr in enumerate(spec.attributes):
            col = train.split.labels[:, a]
            counts = np.bincount(col[col != UNLABELED], minlength=attr.n_values)
            present = np.flatnonzero(counts)
            if len(present) == 1:
                msg = (
                    f"attribute {a} ({attr.name}) has only one value ({present[0]}) in the train split: "
                    "no triplet can be formed (a negative needs another value)"
                )
                _protocol_problem(spec, msg, train.label_path, None, allow_singletons)
            for v in np.flatnonzero(counts == 1):
                image = int(np.flatnonzero(col == v)[0])
                path, line = train.table.first_seen[(image, a)]
                msg = (
                    f"value {v} of attribute {a} ({attr.name}) has a single image (image {image}) in the train "
                    "split: it cannot form an anchor/positive pair (expected at least 2 images per value; "
                    "pass allow_singletons / --allow-singletons to skip such values as anchors)"
                )
                _protocol_problem(spec, msg, path, line, allow_singletons)
    for name, one in parsed.items():
        queries, candidates = one.queries, one.candidates
        if not len(queries.rows):
            continue
        cand_attrs = set(np.unique(candidates.rows[:, 1]).tolist())
        for a in np.unique(queries.rows[:, 1]).tolist():
            if a not in cand_attrs:
                row = int(np.flatnonzero(queries.rows[:, 1] == a)[0])
                msg = (
                    f"queries of attribute {a} ({spec.attributes[a].name}) have no candidate with that attribute "
                    f"in {candidates.path.name} (expected at least one)"
                )
                _protocol_problem(spec, msg, queries.path, queries.lines[row], allow_singletons)


def _protocol_problem(spec: DatasetSpec, msg: str, path: Path, line: int | None, allow: bool) -> None:
    err = DatasetError(msg, path, line)
    if not allow:
        raise err
    spec.warnings.append(str(err))


def write_asen(spec: DatasetSpec, out_dir: str | Path) -> Path:
    """Write ``spec`` in the ASEN layout (meta.json + per-split files) so the split can be reused.

    Image paths are written relative to ``out_dir`` where possible (else absolute), so reading
    ``out_dir`` back finds the same files.  Every file is written atomically.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "ATTRIBUTES": spec.attribute_names,
        "ATTRIBUTES_NUM": {a.name: a.n_values for a in spec.attributes},
        "ATTRIBUTES_VALUES": {a.name: list(a.values) for a in spec.attributes},
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    root = Path(spec.root).resolve()
    out_resolved = out.resolve()
    for name, split in spec.splits.items():
        lines = []
        for p in split.paths:
            full = root / p
            try:
                rel = os.path.relpath(full, out_resolved)
            except ValueError:  # different drives (Windows)
                rel = str(full)
            lines.append(rel.replace(os.sep, "/"))
        atomic_write_text(out / f"filenames_{name}.txt", "".join(f"{line}\n" for line in lines))
        label_lines = []
        for i in range(len(split)):
            pairs = [f"{a} {v}" for a, v in split.labels_of(i).items()]
            if pairs:
                label_lines.append(f"{i} {' '.join(pairs)}\n")
        atomic_write_text(out / f"label_{name}.txt", "".join(label_lines))
        if len(split.queries) or len(split.candidates):
            for kind, rows in (("query", split.queries), ("candidate", split.candidates)):
                atomic_write_text(out / f"{kind}_{name}.txt", "".join(f"{i} {a} {v}\n" for i, a, v in rows.tolist()))
    return out
