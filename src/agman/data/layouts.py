"""Readers for the on-disk layouts users already have (ASEN, CSN/Zappos50k, catalog CSV) -> DatasetSpec,
and the ASEN writer.

Every malformed input raises :class:`DatasetError` naming the file, the 1-based line and what was
expected, when the dataset is opened (never mid-epoch).  What stops and what is skipped:

=====================================================  ==========================================
problem                                                behaviour
=====================================================  ==========================================
missing meta.json / YAML entry, unknown dataset key    stops (DatasetError)
line with the wrong number of fields / not integers    stops
attribute or value index out of range                  stops
image index past the filenames list                    stops
blank line inside a filenames list                     stops (it would shift every index after it)
blank lines in label/query/candidate/triplet files     skipped (they carry nothing)
same image+attribute given two different values        stops
train value with one image (cannot form a triplet)     stops; ``allow_singletons=True`` skips it
                                                       as an anchor (it stays a negative) and
                                                       records it in ``spec.warnings``
query attribute without any candidate                  stops; ``allow_singletons=True`` records it
missing or corrupt image files                         not checked here: ``agman data check``
                                                       finds them; training reports the path
=====================================================  ==========================================
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from agman.data.spec import (
    SPLIT_NAMES,
    UNLABELED,
    Attribute,
    DatasetError,
    DatasetSpec,
    Split,
)
from agman.errors import InvalidValueError
from agman.fileio import atomic_write_text

CSN_CONDITIONS = ("class", "closure", "gender", "heel")
"""Zappos50k conditions in the CSN layout, in index order (the triplet-list file name prefixes)."""

_CSN_SPLIT_FILES = {"train": "train", "valid": "val", "test": "test"}


# --------------------------------------------------------------------------- line parsing
def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path) from None


def _int_rows(path: Path, n_fields: int | None) -> Iterator[tuple[int, list[int]]]:
    """Yield (line number, integers) for each non-blank line.

    ``n_fields`` is the exact field count, or None for the label format
    ``img attr value [attr value ...]`` (an odd count of at least 3).
    """
    for lineno, raw in enumerate(_read_lines(path), start=1):
        fields = raw.split()
        if not fields:
            continue
        if n_fields is not None and len(fields) != n_fields:
            raise DatasetError(
                f"expected {n_fields} integer fields, got {len(fields)}: {raw.strip()!r}", path, lineno
            )
        if n_fields is None and (len(fields) < 3 or len(fields) % 2 == 0):
            raise DatasetError(
                "expected 'image attribute value [attribute value ...]' (an odd number of at least 3 "
                f"integer fields), got {len(fields)}: {raw.strip()!r}",
                path,
                lineno,
            )
        try:
            values = [int(f) for f in fields]
        except ValueError:
            bad = next(f for f in fields if not _is_int(f))
            raise DatasetError(f"expected integers, got {bad!r} in {raw.strip()!r}", path, lineno) from None
        yield lineno, values


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _read_filenames(path: Path) -> list[str]:
    lines = _read_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            raise DatasetError("blank line inside the filenames list (every line is one image path)", path, lineno)
    return [line.strip() for line in lines]


class _LabelTable:
    """Collects (image, attribute, value) facts for one split, checking ranges and consistency."""

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


def _read_pairs(path: Path, table: _LabelTable) -> np.ndarray:
    """Read a query/candidate file (``img attr value`` per line) into an int64 [n, 3] array."""
    rows = []
    for lineno, (image, attr, value) in _int_rows(path, 3):
        table.add(path, lineno, image, attr, value)
        rows.append((image, attr, value))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


# --------------------------------------------------------------------------- attribute sources
def _attributes_from_meta(meta_path: Path, dataset: str | None) -> list[Attribute]:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"invalid JSON ({exc.msg})", meta_path, exc.lineno) from None
    if not isinstance(meta, dict):
        raise DatasetError("expected a JSON object with ATTRIBUTES and ATTRIBUTES_NUM", meta_path)
    if "ATTRIBUTES" not in meta:
        # One object per dataset: pick the requested one.
        keys = sorted(k for k, v in meta.items() if isinstance(v, dict))
        if not keys:
            raise DatasetError("missing key 'ATTRIBUTES' (and no per-dataset objects)", meta_path)
        if dataset is None:
            if len(keys) == 1:
                dataset = keys[0]
            else:
                raise DatasetError(f"holds several datasets ({', '.join(keys)}): name one with --dataset", meta_path)
        match = [k for k in keys if k.lower() == dataset.lower()]
        if not match:
            raise DatasetError(f"has no dataset {dataset!r}; it has: {', '.join(keys)}", meta_path)
        meta = meta[match[0]]
        where = f"[{match[0]!r}]"
    else:
        where = ""
    names = meta.get("ATTRIBUTES")
    counts = meta.get("ATTRIBUTES_NUM")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
        raise DatasetError(f"{where}['ATTRIBUTES'] must be a non-empty list of attribute names", meta_path)
    if not isinstance(counts, dict):
        raise DatasetError(f"missing key {where}['ATTRIBUTES_NUM'] (attribute name -> number of values)", meta_path)
    value_names = meta.get("ATTRIBUTES_VALUES") or {}
    attributes = []
    for name in names:
        n = counts.get(name)
        if not isinstance(n, int) or n < 1:
            raise DatasetError(
                f"{where}['ATTRIBUTES_NUM'] has no positive integer count for attribute {name!r} (got {n!r})", meta_path
            )
        values = value_names.get(name)
        if values is None:
            values = [str(i) for i in range(n)]
        elif len(values) != n:
            raise DatasetError(
                f"{where}['ATTRIBUTES_VALUES'][{name!r}] lists {len(values)} names, ATTRIBUTES_NUM says {n}", meta_path
            )
        attributes.append(Attribute(name, tuple(str(v) for v in values)))
    return attributes


def _attributes_from_yaml(yaml_path: Path) -> tuple[list[Attribute], dict]:
    """ASEN++ per-dataset YAML: DATA.NUM_ATTRIBUTES, DATA.ATTRIBUTES.NAME / .NUM (DATA: optional)."""
    import yaml

    try:
        cfg = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise DatasetError(f"invalid YAML: {exc}", yaml_path, None if mark is None else mark.line + 1) from None
    data = cfg.get("DATA", cfg) if isinstance(cfg, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("ATTRIBUTES"), dict):
        raise DatasetError("missing entry DATA.ATTRIBUTES (with NAME and NUM lists)", yaml_path)
    names, nums = data["ATTRIBUTES"].get("NAME"), data["ATTRIBUTES"].get("NUM")
    if not isinstance(names, list) or not isinstance(nums, list):
        raise DatasetError("DATA.ATTRIBUTES.NAME and DATA.ATTRIBUTES.NUM must both be lists", yaml_path)
    if len(names) != len(nums):
        raise DatasetError(f"DATA.ATTRIBUTES.NAME has {len(names)} entries but NUM has {len(nums)}", yaml_path)
    declared = data.get("NUM_ATTRIBUTES", len(names))
    if declared != len(names):
        raise DatasetError(f"DATA.NUM_ATTRIBUTES is {declared} but DATA.ATTRIBUTES.NAME lists {len(names)}", yaml_path)
    attributes = []
    for name, n in zip(names, nums):
        if not isinstance(n, int) or n < 1:
            raise DatasetError(f"DATA.ATTRIBUTES.NUM for {name!r} must be a positive integer, got {n!r}", yaml_path)
        attributes.append(Attribute(str(name), tuple(str(i) for i in range(n))))
    return attributes, data


# --------------------------------------------------------------------------- ASEN layout
def _find_split_dir(root: Path, dataset: str | None) -> Path:
    if dataset:
        for child in root.iterdir() if root.is_dir() else []:
            if child.is_dir() and child.name.lower() == dataset.lower():
                return child
    return root


def _pick_image_root(split_dir: Path, first_paths: list[str]) -> Path:
    """Images are named relative to the split folder or to its parent (both occur in the wild)."""
    for candidate in (split_dir, split_dir.parent):
        if first_paths and all((candidate / p).exists() for p in first_paths[:3]):
            return candidate
    return split_dir


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
    files = {
        "filenames": "filenames_{split}.txt",
        "label": "label_{split}.txt",
        "query": "query_{split}.txt",
        "candidate": "candidate_{split}.txt",
    }
    if yaml_config is not None:
        attributes, data = _attributes_from_yaml(Path(yaml_config))
        source = str(yaml_config)
        files = _yaml_file_names(data, files)
    else:
        meta_path = Path(meta) if meta is not None else None
        if meta_path is None:
            for candidate in (split_dir / "meta.json", split_dir.parent / "meta.json", root / "meta.json"):
                if candidate.is_file():
                    meta_path = candidate
                    break
        if meta_path is None or not meta_path.is_file():
            raise DatasetError(
                "no meta.json found (looked in this folder and its parent); pass meta= / --meta, "
                "or an ASEN++ YAML with yaml_config= / --yaml",
                split_dir,
            )
        attributes = _attributes_from_meta(meta_path, dataset)
        source = str(meta_path)

    splits: dict[str, Split] = {}
    for split in SPLIT_NAMES:
        fn_path = split_dir / files["filenames"].format(split=split)
        if not fn_path.is_file():
            continue
        paths = _read_filenames(fn_path)
        table = _LabelTable(len(paths), attributes, fn_path)
        label_path = split_dir / files["label"].format(split=split)
        if label_path.is_file():
            for lineno, fields in _int_rows(label_path, None):
                image = fields[0]
                for k in range(1, len(fields), 2):
                    table.add(label_path, lineno, image, fields[k], fields[k + 1])
        q_path = split_dir / files["query"].format(split=split)
        c_path = split_dir / files["candidate"].format(split=split)
        queries = candidates = np.zeros((0, 3), dtype=np.int64)
        if q_path.is_file() or c_path.is_file():
            for path in (q_path, c_path):
                if not path.is_file():
                    raise DatasetError(f"missing: a {split} split with queries needs both query and candidate files", path)
            queries = _read_pairs(q_path, table)
            candidates = _read_pairs(c_path, table)
        elif not label_path.is_file():
            raise DatasetError(
                f"split {split!r} has a filenames list but neither {label_path.name} nor query/candidate files",
                fn_path,
            )
        splits[split] = Split(split, paths, table.labels, queries, candidates)
    if not splits:
        raise DatasetError(f"no filenames_<split>.txt files (expected one of {', '.join(SPLIT_NAMES)})", split_dir)

    if image_root is None:
        first = next(iter(splits.values())).paths[:3]
        image_root = _pick_image_root(split_dir, first)
    spec = DatasetSpec(
        name=dataset or split_dir.name, root=Path(image_root), attributes=attributes, splits=splits, source=source
    )
    validate_protocol(spec, split_dir, files, allow_singletons)
    return spec


def _yaml_file_names(data: dict, default: dict[str, str]) -> dict[str, str]:
    """Honour ASEN++'s PATH_FILE / GROUNDTRUTH entries where they follow the per-split pattern."""
    files = dict(default)
    path_file = data.get("PATH_FILE") or {}
    gt = data.get("GROUNDTRUTH") or {}
    train_fn = path_file.get("TRAIN") if isinstance(path_file, dict) else None
    if isinstance(train_fn, str) and "train" in train_fn:
        files["filenames"] = train_fn.replace("train", "{split}")
    train_label = gt.get("TRAIN") if isinstance(gt, dict) else None
    if isinstance(train_label, str) and "train" in train_label:
        files["label"] = train_label.replace("train", "{split}")
    for key, name in (("QUERY", "query"), ("CANDIDATE", "candidate")):
        entry = gt.get(key) if isinstance(gt, dict) else None
        valid = entry.get("VALID") if isinstance(entry, dict) else None
        if isinstance(valid, str) and "valid" in valid:
            files[name] = valid.replace("valid", "{split}")
    return files


def validate_protocol(spec: DatasetSpec, split_dir: Path, files: dict[str, str], allow_singletons: bool) -> None:
    """Protocol-level checks: every train value can form a triplet; every query attribute has candidates."""
    train = spec.splits.get("train")
    if train is not None:
        label_path = split_dir / files["label"].format(split="train")
        for a, attr in enumerate(spec.attributes):
            col = train.labels[:, a]
            counts = np.bincount(col[col != UNLABELED], minlength=attr.n_values)
            present = np.flatnonzero(counts)
            if len(present) == 1:
                msg = (
                    f"attribute {a} ({attr.name}) has only one value ({present[0]}) in the train split: "
                    "no triplet can be formed (a negative needs another value)"
                )
                _protocol_problem(spec, msg, label_path, None, allow_singletons)
            for v in np.flatnonzero(counts == 1):
                image = int(np.flatnonzero(col == v)[0])
                msg = (
                    f"value {v} of attribute {a} ({attr.name}) has a single image (image {image}) in the train "
                    "split: it cannot form an anchor/positive pair (expected at least 2 images per value; "
                    "pass allow_singletons / --allow-singletons to skip such values as anchors)"
                )
                _protocol_problem(spec, msg, label_path, _label_line(label_path, image), allow_singletons)
    for name, split in spec.splits.items():
        if not len(split.queries):
            continue
        cand_attrs = set(np.unique(split.candidates[:, 1]).tolist())
        q_path = split_dir / files["query"].format(split=name)
        for a in np.unique(split.queries[:, 1]).tolist():
            if a not in cand_attrs:
                row = int(np.flatnonzero(split.queries[:, 1] == a)[0])
                msg = (
                    f"queries of attribute {a} ({spec.attributes[a].name}) have no candidate with that attribute "
                    f"in {files['candidate'].format(split=name)} (expected at least one)"
                )
                _protocol_problem(spec, msg, q_path, _nth_data_line(q_path, row), allow_singletons)


def _protocol_problem(spec: DatasetSpec, msg: str, path: Path, line: int | None, allow: bool) -> None:
    err = DatasetError(msg, path, line)
    if not allow:
        raise err
    spec.warnings.append(str(err))


def _nth_data_line(path: Path, n: int) -> int | None:
    """1-based line number of the n-th (0-based) non-blank line of ``path``."""
    seen = -1
    for lineno, raw in enumerate(_read_lines(path), start=1):
        if raw.split():
            seen += 1
            if seen == n:
                return lineno
    return None


def _label_line(path: Path, image: int) -> int | None:
    if not path.is_file():
        return None
    for lineno, raw in enumerate(_read_lines(path), start=1):
        fields = raw.split()
        if fields and fields[0] == str(image):
            return lineno
    return None


def write_asen(spec: DatasetSpec, out_dir: str | Path) -> Path:
    """Write ``spec`` in the ASEN layout (meta.json + per-split files) so the split can be reused.

    Image paths are written relative to ``out_dir`` where possible (else absolute), so reading
    ``out_dir`` back finds the same files.
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




# --------------------------------------------------------------------------- CSN layout (Zappos50k)
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
            conditions = tuple(a.name for a in _attributes_from_meta(root / "meta.json", None))
    fn_path = root / "filenames.json"
    if not fn_path.is_file():
        raise DatasetError("missing filenames.json (a JSON list of image paths)", fn_path)
    try:
        paths = json.loads(fn_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"invalid JSON ({exc.msg})", fn_path, exc.lineno) from None
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        bad = next((i for i, p in enumerate(paths) if not (isinstance(p, str) and p)), None) if isinstance(paths, list) else None
        detail = f" (entry {bad} is {paths[bad]!r})" if bad is not None else ""
        raise DatasetError(f"expected a JSON list of non-empty image path strings{detail}", fn_path)
    n = len(paths)
    attributes = [Attribute(c, ()) for c in conditions]
    labels = np.full((n, len(attributes)), UNLABELED, dtype=np.int32)
    splits: dict[str, Split] = {}
    for split, suffix in _CSN_SPLIT_FILES.items():
        triplets: dict[int, np.ndarray] = {}
        for a, cond in enumerate(conditions):
            path = root / "tripletlists" / f"{cond}_tripletlist_{suffix}.txt"
            if not path.is_file():
                continue
            rows = []
            for lineno, row in _int_rows(path, 3):
                for idx in row:
                    if not 0 <= idx < n:
                        raise DatasetError(
                            f"image index {idx} is past filenames.json ({n} images: expected 0..{n - 1})", path, lineno
                        )
                rows.append(row)
            triplets[a] = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        if triplets:
            splits[split] = Split(split, paths, labels, triplets=triplets)
    if not splits:
        raise DatasetError(
            f"no triplet lists found (expected <condition>_tripletlist_<train|val|test>.txt, "
            f"conditions {', '.join(conditions)})",
            root / "tripletlists",
        )
    if image_root is None:
        image_root = _pick_image_root(root, paths[:3])
        if image_root == root and paths and not (root / paths[0]).exists() and (root / "ut-zap50k-images").is_dir():
            image_root = root / "ut-zap50k-images"
    return DatasetSpec(name="zappos50k", root=Path(image_root), attributes=attributes, splits=splits, source=str(fn_path))


# --------------------------------------------------------------------------- custom catalog CSV
def read_catalog_csv(
    csv_path: str | Path, *, seed: int = 0, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), query_share: float = 0.2
) -> DatasetSpec:
    """Read a catalog CSV ``path,<attr1>,<attr2>,...`` (empty cell = not annotated) and split it.

    Images are split train/valid/test by ``ratios`` (8:1:1) and, within valid and test, into
    query and candidate images 1:4 (``query_share``), reproducibly from ``seed``.  Value names
    are the distinct cell texts of each column, sorted.  Paths resolve relative to the CSV's folder.
    """
    csv_path = Path(csv_path)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError("catalog CSV not found", csv_path) from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", csv_path) from None
    try:
        rows = list(csv.reader(text.splitlines()))
    except csv.Error as exc:
        raise DatasetError(f"unreadable CSV: {exc}", csv_path) from None
    if not rows or not rows[0]:
        raise DatasetError("empty file: expected a header 'path,<attribute>,...'", csv_path, 1)
    header = [h.strip() for h in rows[0]]
    if header[0].lower() != "path" or len(header) < 2:
        raise DatasetError(f"header must be 'path,<attribute1>,<attribute2>,...', got {rows[0]!r}", csv_path, 1)
    attr_names = header[1:]
    if len(set(attr_names)) != len(attr_names) or any(not a for a in attr_names):
        raise DatasetError(f"attribute names in the header must be non-empty and distinct, got {attr_names!r}", csv_path, 1)
    paths: list[str] = []
    cells: list[list[str]] = []
    seen: dict[str, int] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DatasetError(f"expected {len(header)} comma-separated fields (as in the header), got {len(row)}", csv_path, lineno)
        path = row[0].strip()
        if not path:
            raise DatasetError("empty image path in the first column", csv_path, lineno)
        if path in seen:
            raise DatasetError(f"image {path!r} is listed twice (first on line {seen[path]})", csv_path, lineno)
        seen[path] = lineno
        paths.append(path)
        cells.append([c.strip() for c in row[1:]])
    if not paths:
        raise DatasetError("no image rows after the header", csv_path)
    attributes = []
    labels = np.full((len(paths), len(attr_names)), UNLABELED, dtype=np.int32)
    for a, name in enumerate(attr_names):
        names = sorted({r[a] for r in cells if r[a]})
        if not names:
            raise DatasetError(f"attribute column {name!r} has no annotated value", csv_path)
        index = {v: i for i, v in enumerate(names)}
        attributes.append(Attribute(name, tuple(names)))
        for i, r in enumerate(cells):
            if r[a]:
                labels[i, a] = index[r[a]]

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(paths))
    n_train = int(round(ratios[0] * len(paths)))
    n_valid = int(round(ratios[1] * len(paths)))
    parts = {"train": order[:n_train], "valid": order[n_train : n_train + n_valid], "test": order[n_train + n_valid :]}
    splits = {}
    for name, idx in parts.items():
        idx = np.sort(idx)
        split_paths = [paths[i] for i in idx]
        split_labels = labels[idx]
        queries = candidates = np.zeros((0, 3), dtype=np.int64)
        if name != "train":
            is_query = np.zeros(len(idx), dtype=bool)
            is_query[rng.permutation(len(idx))[: int(round(query_share * len(idx)))]] = True
            qs, cs = [], []
            for i in range(len(idx)):
                for a in range(len(attr_names)):
                    v = split_labels[i, a]
                    if v != UNLABELED:
                        (qs if is_query[i] else cs).append((i, a, int(v)))
            queries = np.asarray(qs, dtype=np.int64).reshape(-1, 3)
            candidates = np.asarray(cs, dtype=np.int64).reshape(-1, 3)
        splits[name] = Split(name, split_paths, split_labels, queries, candidates)
    return DatasetSpec(name=csv_path.stem, root=csv_path.parent, attributes=attributes, splits=splits, source=str(csv_path))


# --------------------------------------------------------------------------- dispatch
def detect_layout(root: str | Path) -> str:
    """'csv' for a .csv file, 'csn' where filenames.json exists, else 'asen'."""
    root = Path(root)
    if root.suffix.lower() == ".csv":
        return "csv"
    if (root / "filenames.json").is_file():
        return "csn"
    return "asen"


def open_dataset(
    root: str | Path,
    dataset: str | None = None,
    *,
    layout: str | None = None,
    allow_singletons: bool = False,
    seed: int = 0,
    meta: str | Path | None = None,
    yaml_config: str | Path | None = None,
    image_root: str | Path | None = None,
) -> DatasetSpec:
    """Open a dataset in any supported layout (auto-detected unless ``layout`` is given)."""
    layout = layout or detect_layout(root)
    if layout == "asen":
        return read_asen(
            root, dataset, meta=meta, yaml_config=yaml_config, image_root=image_root, allow_singletons=allow_singletons
        )
    if layout == "csn":
        return read_csn(root, image_root=image_root)
    if layout == "csv":
        return read_catalog_csv(root, seed=seed)
    raise InvalidValueError(f"unknown layout {layout!r}: expected 'asen', 'csn' or 'csv'")
