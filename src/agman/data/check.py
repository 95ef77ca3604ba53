"""`agman data check`: counts per split/attribute/value and every problem found in a dataset.

Problems: missing, unreadable or over-limit images; values with a single image in a split (no
relevant partner / no anchor-positive pair); queries whose attribute has no candidate; an evaluation
split with no queries or no candidates (and no triplet lists: ``agman eval`` refuses it); a train split
that cannot form a single triplet (e.g. no labels at all — ``agman train`` refuses it); and whatever
the reader skipped (``spec.warnings``).  Malformed files (bad lines, indices out of range) are raised
by the reader itself as :class:`DatasetError` when the dataset is opened.

:meth:`CheckReport.to_json` is the machine-readable form (``agman data check --json``); its schema
is documented in docs/data.md and validated in the tests.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from agman.data import decode
from agman.data.spec import UNLABELED, DatasetError, DatasetSpec, Split

JSON_SCHEMA_ID = "agman/data-check/1"
"""The ``schema`` field of ``--json`` output; the number changes when a field changes meaning."""

PROBLEM_KINDS = (
    "missing-image",
    "unreadable-image",
    "image-too-large",
    "single-image-value",
    "queries-without-candidates",
    "no-queries",
    "no-triplets",
    "reader",
)


@dataclass(frozen=True)
class Problem:
    """One finding: ``kind`` is one of :data:`PROBLEM_KINDS`; ``message`` says what and where."""

    kind: str
    message: str
    split: str | None = None
    path: str | None = None

    def __str__(self) -> str:
        return self.message


@dataclass
class AttributeCounts:
    values: list[str]  # value names, in index order
    images_per_value: list[int]
    queries: int = 0
    candidates: int = 0
    triplets: int = 0

    @property
    def labelled(self) -> int:
        return sum(self.images_per_value)


@dataclass
class SplitCounts:
    images: int
    queries: int
    candidates: int
    triplets: int
    attributes: dict[str, AttributeCounts]


@dataclass
class CheckReport:
    dataset: str
    root: str
    counts: dict[str, SplitCounts]
    problems: list[Problem] = field(default_factory=list)
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
            for attr, ac in c.attributes.items():
                parts = []
                if ac.values:
                    per_value = ", ".join(f"{v}={n}" for v, n in zip(ac.values, ac.images_per_value))
                    parts.append(f"{ac.labelled} labelled; per value {per_value}")
                if ac.queries or ac.candidates:
                    parts.append(f"queries {ac.queries}, candidates {ac.candidates}")
                if ac.triplets:
                    parts.append(f"{ac.triplets} triplets")
                lines.append(f"    {attr}: {'; '.join(parts) or 'no labels'}")
        if self.images_checked:
            lines.append(f"  image files checked: {self.images_checked}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p.message}" for p in self.problems[:max_problems]]
            if len(self.problems) > max_problems:
                lines.append(f"  ... and {len(self.problems) - max_problems} more")
        else:
            lines.append("no problems found")
        return "\n".join(lines)

    def to_json(self) -> dict:
        """The report as plain JSON types (schema ``agman/data-check/1``, docs/data.md)."""
        return {
            "schema": JSON_SCHEMA_ID,
            "dataset": self.dataset,
            "root": self.root,
            "ok": self.ok,
            "images_checked": self.images_checked,
            "splits": {
                name: {
                    "images": c.images,
                    "queries": c.queries,
                    "candidates": c.candidates,
                    "triplets": c.triplets,
                    "attributes": {
                        attr: {
                            "labelled": ac.labelled,
                            "values": [
                                {"index": i, "name": v, "images": n}
                                for i, (v, n) in enumerate(zip(ac.values, ac.images_per_value))
                            ],
                            "queries": ac.queries,
                            "candidates": ac.candidates,
                            "triplets": ac.triplets,
                        }
                        for attr, ac in c.attributes.items()
                    },
                }
                for name, c in self.counts.items()
            },
            "problems": [
                {"kind": p.kind, "message": p.message, "split": p.split, "path": p.path} for p in self.problems
            ],
            "notes": list(self.notes),
        }


CHECK_LIMITS = replace(decode.DEFAULT_LIMITS, max_pixels=64 * 64)
"""Training's limits, but decoded small (JPEG at 1/8 scale): every byte is still read."""


def check_image(path: Path, limits: decode.ImageLimits = CHECK_LIMITS) -> Problem | None:
    """None when ``path`` decodes within ``limits`` (the same decoder training uses), else the problem."""
    try:
        decode.decode_image(Path(path), limits)
    except decode.ImageNotFoundError:
        return Problem("missing-image", f"missing image file: {path}", path=str(path))
    except decode.ImageTooLargeError as exc:
        return Problem("image-too-large", f"image file over the limits: {exc}", path=str(path))
    except decode.ImageLoadError as exc:
        reason = str(exc).removeprefix(f"cannot read image {path}: ")
        return Problem("unreadable-image", f"unreadable image file: {path} ({reason})", path=str(path))
    return None


def _split_counts(spec: DatasetSpec, split: Split) -> SplitCounts:
    q_per_attr = np.bincount(split.queries[:, 1], minlength=spec.n_attributes)
    c_per_attr = np.bincount(split.candidates[:, 1], minlength=spec.n_attributes)
    attributes = {}
    for a, attr in enumerate(spec.attributes):
        col = split.labels[:, a]
        per_value = np.bincount(col[col != UNLABELED], minlength=attr.n_values).tolist()
        triplets = len((split.triplets or {}).get(a, ()))
        attributes[attr.name] = AttributeCounts(
            list(attr.values), per_value, int(q_per_attr[a]), int(c_per_attr[a]), triplets
        )
    return SplitCounts(
        images=len(split),
        queries=len(split.queries),
        candidates=len(split.candidates),
        triplets=sum(len(t) for t in (split.triplets or {}).values()),
        attributes=attributes,
    )


def _train_problems(spec: DatasetSpec, split: Split) -> list[Problem]:
    """A train split must yield triplets: the sampler training uses decides (one rule, one place)."""
    from agman.data.triplets import make_sampler

    try:
        make_sampler(split, n_triplets=1)
    except DatasetError as exc:
        labelled = int((split.labels != UNLABELED).any(axis=1).sum())
        return [Problem(
            "no-triplets",
            f"{split.name}: {exc} ({labelled} of {len(split)} images labelled); `agman train` refuses this split",
            split=split.name,
        )]
    return []


def check_dataset(
    spec: DatasetSpec, check_images: bool = True, workers: int = 8, limits: decode.ImageLimits = CHECK_LIMITS
) -> CheckReport:
    """Count everything and list every problem (see the module docstring)."""
    report = CheckReport(spec.name, str(spec.root), {name: _split_counts(spec, s) for name, s in spec.splits.items()})
    report.problems.extend(Problem("reader", w) for w in spec.warnings)
    for name, split in spec.splits.items():
        counts = report.counts[name]
        if name == "train":
            report.problems.extend(_train_problems(spec, split))
            unlabelled = [a for a, ac in counts.attributes.items() if ac.values and not ac.labelled]
            if unlabelled and counts.attributes and len(unlabelled) < len(counts.attributes):
                report.notes.append(f"train: no image is labelled with {', '.join(unlabelled)}: they are not trained")
        for attr, ac in counts.attributes.items():
            for v, n in enumerate(ac.images_per_value):
                if n == 1:
                    report.problems.append(Problem(
                        "single-image-value",
                        f"{name}: value {v} of attribute {attr} has only one image (expected at least 2)",
                        split=name,
                    ))
        if name != "train" and not (len(split.queries) and len(split.candidates)) and not split.triplets:
            report.problems.append(Problem(
                "no-queries",
                f"{name}: {len(split.queries)} queries and {len(split.candidates)} candidates, and no triplet lists: "
                "nothing to evaluate (`agman eval` refuses this split)",
                split=name,
            ))
        if len(split.queries):
            cand_attrs = set(np.unique(split.candidates[:, 1]).tolist())
            for a in np.unique(split.queries[:, 1]).tolist():
                if a not in cand_attrs:
                    n = int((split.queries[:, 1] == a).sum())
                    report.problems.append(Problem(
                        "queries-without-candidates",
                        f"{name}: {n} queries of attribute {spec.attributes[a].name} have no candidate "
                        "with that attribute",
                        split=name,
                    ))
            n_unmatched = _queries_without_relevant(split.queries, split.candidates)
            if n_unmatched:
                report.notes.append(
                    f"{name}: {n_unmatched} queries have no candidate of the same value (their AP is 0)"
                )
    if check_images:
        paths = sorted({p for split in spec.splits.values() for p in _referenced_paths(split)})
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            findings = list(pool.map(lambda p: check_image(spec.root / p, limits), paths))
        report.images_checked = len(paths)
        report.problems.extend(f for f in findings if f)
    return report


def _referenced_paths(split: Split) -> list[str]:
    if split.triplets:
        used = np.unique(np.concatenate([t.ravel() for t in split.triplets.values()]))
        return [split.paths[i] for i in used.tolist()]
    return list(split.paths)


def _queries_without_relevant(queries: np.ndarray, candidates: np.ndarray) -> int:
    have = {(a, v) for a, v in candidates[:, 1:].tolist()}
    return sum((a, v) not in have for a, v in queries[:, 1:].tolist())
