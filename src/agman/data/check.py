"""`agman data check`: counts per split/attribute/value and every problem found in a dataset.

Problems: missing or unreadable images, values with a single image in a split (no relevant
partner / no anchor-positive pair), queries whose attribute has no candidate, and whatever the
reader skipped (``spec.warnings``).  Malformed files (bad lines, indices out of range) are raised by
the reader itself as :class:`DatasetError` when the dataset is opened.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from agman.data.spec import UNLABELED, DatasetSpec


@dataclass
class SplitCounts:
    images: int
    queries: int
    candidates: int
    triplets: int
    labelled: dict[str, list[int]]  # attribute name -> images per value
    queries_per_attribute: dict[str, int]
    candidates_per_attribute: dict[str, int]


@dataclass
class CheckReport:
    dataset: str
    counts: dict[str, SplitCounts]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    images_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_text(self, max_problems: int = 200) -> str:
        lines = [f"dataset {self.dataset}"]
        for name, c in self.counts.items():
            lines.append(
                f"  {name}: {c.images} images, {c.queries} queries, {c.candidates} candidates"
                + (f", {c.triplets} triplets" if c.triplets else "")
            )
            for attr, per_value in c.labelled.items():
                q = c.queries_per_attribute.get(attr, 0)
                cand = c.candidates_per_attribute.get(attr, 0)
                qc = f"  queries {q}, candidates {cand}" if (q or cand) else ""
                lines.append(f"    {attr}: {sum(per_value)} labelled, per value {per_value}{qc}")
        if self.images_checked:
            lines.append(f"  image files checked: {self.images_checked}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems[:max_problems]]
            if len(self.problems) > max_problems:
                lines.append(f"  ... and {len(self.problems) - max_problems} more")
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def check_image(path: Path) -> str | None:
    """None when ``path`` decodes as an image, else what is wrong with it."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still reads every byte
            im.load()
    except FileNotFoundError:
        return f"missing image file: {path}"
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a finding, not a crash
        return f"unreadable image file: {path} ({type(exc).__name__}: {exc})"
    return None


def _split_counts(spec: DatasetSpec, name: str) -> SplitCounts:
    split = spec.splits[name]
    labelled = {}
    for a, attr in enumerate(spec.attributes):
        col = split.labels[:, a]
        labelled[attr.name] = np.bincount(col[col != UNLABELED], minlength=attr.n_values).tolist()
    per_attr = lambda rows: {  # noqa: E731
        spec.attributes[a].name: int(n) for a, n in enumerate(np.bincount(rows[:, 1], minlength=spec.n_attributes)) if n
    }
    triplets = sum(len(t) for t in (split.triplets or {}).values())
    return SplitCounts(
        images=len(split),
        queries=len(split.queries),
        candidates=len(split.candidates),
        triplets=triplets,
        labelled=labelled,
        queries_per_attribute=per_attr(split.queries),
        candidates_per_attribute=per_attr(split.candidates),
    )


def check_dataset(spec: DatasetSpec, check_images: bool = True, workers: int = 8) -> CheckReport:
    """Count everything and list every problem (see the module docstring)."""
    report = CheckReport(spec.name, {name: _split_counts(spec, name) for name in spec.splits})
    report.problems.extend(spec.warnings)
    for name, split in spec.splits.items():
        counts = report.counts[name]
        for attr, per_value in counts.labelled.items():
            for v, n in enumerate(per_value):
                if n == 1:
                    report.problems.append(
                        f"{name}: value {v} of attribute {attr} has only one image (expected at least 2)"
                    )
        if len(split.queries):
            cand_attrs = set(np.unique(split.candidates[:, 1]).tolist())
            for a in np.unique(split.queries[:, 1]).tolist():
                if a not in cand_attrs:
                    n = int((split.queries[:, 1] == a).sum())
                    report.problems.append(
                        f"{name}: {n} queries of attribute {spec.attributes[a].name} have no candidate with that attribute"
                    )
            n_unmatched = _queries_without_relevant(split.queries, split.candidates)
            if n_unmatched:
                report.notes.append(
                    f"{name}: {n_unmatched} queries have no candidate of the same value (their AP is 0)"
                )
    if check_images:
        paths = sorted({p for split in spec.splits.values() for p in _referenced_paths(split)})
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            findings = list(pool.map(lambda p: check_image(spec.root / p), paths))
        report.images_checked = len(paths)
        report.problems.extend(f for f in findings if f)
    return report


def _referenced_paths(split) -> list[str]:
    if split.triplets:
        used = np.unique(np.concatenate([t.ravel() for t in split.triplets.values()]))
        return [split.paths[i] for i in used.tolist()]
    return list(split.paths)


def _queries_without_relevant(queries: np.ndarray, candidates: np.ndarray) -> int:
    have = {(a, v) for a, v in candidates[:, 1:].tolist()}
    return sum((a, v) not in have for a, v in queries[:, 1:].tolist())
