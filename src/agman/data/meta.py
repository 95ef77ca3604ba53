"""Attribute names and value counts from the files that declare them: ``meta.json`` and the ASEN++ YAML."""
from __future__ import annotations

import reprlib
from pathlib import Path

from agman.data.lines import positive_int, read_json, read_text
from agman.data.spec import Attribute, DatasetError

MAX_VALUES = 100_000
"""Most values one attribute may declare (DeepFashion's largest has 230); a bigger count is a typo."""

_show = reprlib.Repr()
_show.maxstring = _show.maxother = 60
_show.maxlist = _show.maxdict = 6


def show(value) -> str:
    """A short repr of a value read from a file, for error messages (bounded however big the value)."""
    return _show.repr(value)


def _check_count(n, what: str, path: Path) -> int:
    if not positive_int(n) or n > MAX_VALUES:
        raise DatasetError(f"{what} must be a positive integer up to {MAX_VALUES}, got {show(n)}", path)
    return n


def attributes_from_meta(meta_path: Path, dataset: str | None) -> list[Attribute]:
    """``meta.json``: ``ATTRIBUTES`` (names in index order), ``ATTRIBUTES_NUM`` (name -> value count),
    optionally ``ATTRIBUTES_VALUES`` (name -> value names); a single object, or one per dataset."""
    meta = read_json(meta_path)
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
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names) or not names:
        raise DatasetError(f"{where}['ATTRIBUTES'] must be a non-empty list of attribute names", meta_path)
    if len(set(names)) != len(names):
        raise DatasetError(f"{where}['ATTRIBUTES'] names an attribute twice: {show(names)}", meta_path)
    if not isinstance(counts, dict):
        raise DatasetError(f"missing key {where}['ATTRIBUTES_NUM'] (attribute name -> number of values)", meta_path)
    value_names = meta.get("ATTRIBUTES_VALUES") or {}
    if not isinstance(value_names, dict):
        raise DatasetError(f"{where}['ATTRIBUTES_VALUES'] must be an object (attribute name -> value names)", meta_path)
    attributes = []
    for name in names:
        n = counts.get(name)
        if not positive_int(n) or n > MAX_VALUES:
            raise DatasetError(
                f"{where}['ATTRIBUTES_NUM'] has no positive integer count for attribute {name!r} (got {show(n)}; "
                f"expected 1..{MAX_VALUES})",
                meta_path,
            )
        values = value_names.get(name)
        if values is None:
            values = [str(i) for i in range(n)]
        elif not isinstance(values, list) or not all(isinstance(v, (str, int, float)) for v in values):
            raise DatasetError(f"{where}['ATTRIBUTES_VALUES'][{name!r}] must be a list of value names", meta_path)
        elif len(values) != n:
            raise DatasetError(
                f"{where}['ATTRIBUTES_VALUES'][{name!r}] lists {len(values)} names, ATTRIBUTES_NUM says {n}", meta_path
            )
        attributes.append(Attribute(name, tuple(str(v) for v in values)))
    return attributes


def attributes_from_yaml(yaml_path: Path) -> tuple[list[Attribute], dict]:
    """ASEN++ per-dataset YAML: DATA.NUM_ATTRIBUTES, DATA.ATTRIBUTES.NAME / .NUM (DATA: optional).
    Returns the attributes and the DATA mapping (for :func:`yaml_file_names`)."""
    import yaml

    text = read_text(yaml_path)
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise DatasetError(f"invalid YAML: {exc}", yaml_path, None if mark is None else mark.line + 1) from None
    except RecursionError:
        raise DatasetError("invalid YAML (nested too deeply)", yaml_path) from None
    data = cfg.get("DATA", cfg) if isinstance(cfg, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("ATTRIBUTES"), dict):
        raise DatasetError("missing entry DATA.ATTRIBUTES (with NAME and NUM lists)", yaml_path)
    names, nums = data["ATTRIBUTES"].get("NAME"), data["ATTRIBUTES"].get("NUM")
    if not isinstance(names, list) or not isinstance(nums, list):
        raise DatasetError("DATA.ATTRIBUTES.NAME and DATA.ATTRIBUTES.NUM must both be lists", yaml_path)
    if len(names) != len(nums):
        raise DatasetError(f"DATA.ATTRIBUTES.NAME has {len(names)} entries but NUM has {len(nums)}", yaml_path)
    if not names or not all(isinstance(n, (str, int)) and not isinstance(n, bool) and str(n) for n in names):
        raise DatasetError(f"DATA.ATTRIBUTES.NAME must list attribute names, got {show(names)}", yaml_path)
    if len({str(n) for n in names}) != len(names):
        raise DatasetError(f"DATA.ATTRIBUTES.NAME names an attribute twice: {show(names)}", yaml_path)
    declared = data.get("NUM_ATTRIBUTES", len(names))
    if declared != len(names):
        raise DatasetError(
            f"DATA.NUM_ATTRIBUTES is {show(declared)} but DATA.ATTRIBUTES.NAME lists {len(names)}", yaml_path
        )
    attributes = []
    for name, n in zip(names, nums):
        _check_count(n, f"DATA.ATTRIBUTES.NUM for {str(name)!r}", yaml_path)
        attributes.append(Attribute(str(name), tuple(str(i) for i in range(n))))
    return attributes, data


def yaml_file_names(data: dict, default: dict[str, str]) -> dict[str, str]:
    """Honour ASEN++'s PATH_FILE / GROUNDTRUTH entries where they follow the per-split pattern."""
    files = dict(default)
    path_file = data.get("PATH_FILE") or {}
    gt = data.get("GROUNDTRUTH") or {}
    train_fn = path_file.get("TRAIN") if isinstance(path_file, dict) else None
    if isinstance(train_fn, str) and "train" in train_fn:
        files["filenames"] = _split_pattern(train_fn, "train")
    train_label = gt.get("TRAIN") if isinstance(gt, dict) else None
    if isinstance(train_label, str) and "train" in train_label:
        files["label"] = _split_pattern(train_label, "train")
    for key, name in (("QUERY", "query"), ("CANDIDATE", "candidate")):
        entry = gt.get(key) if isinstance(gt, dict) else None
        valid = entry.get("VALID") if isinstance(entry, dict) else None
        if isinstance(valid, str) and "valid" in valid:
            files[name] = _split_pattern(valid, "valid")
    return files


def _split_pattern(file_name: str, split: str) -> str:
    """``label_train.txt`` -> ``label_{split}.txt`` (braces in the name kept literally)."""
    return file_name.replace("{", "{{").replace("}", "}}").replace(split, "{split}")
