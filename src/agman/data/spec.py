"""DatasetSpec: the one in-memory description every dataset layout is read into."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agman.errors import AgmanError, UnknownNameError

UNLABELED = -1
"""Value stored in ``Split.labels`` where an image carries no value for an attribute."""

SPLIT_NAMES = ("train", "valid", "test")


class DatasetError(AgmanError, ValueError):
    """A dataset file is malformed.  The message names the file, the line and what was expected."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)


@dataclass(frozen=True)
class Attribute:
    """One attribute (e.g. neckline_design) and the names of its values, in index order."""

    name: str
    values: tuple[str, ...]

    @property
    def n_values(self) -> int:
        return len(self.values)


@dataclass
class Split:
    """One split (train/valid/test) of a dataset.

    ``paths[i]`` is image i's path relative to ``DatasetSpec.root``.
    ``labels[i, a]`` is image i's value of attribute a, or ``UNLABELED``.
    ``queries`` / ``candidates`` are int64 arrays of rows ``(image, attribute, value)``.
    ``triplets`` (triplet-list datasets such as Zappos50k) maps an attribute index to an
    int64 array of rows ``(anchor, far, close)``: anchor is more similar to close.
    """

    name: str
    paths: list[str]
    labels: np.ndarray
    queries: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))
    candidates: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))
    triplets: dict[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def labels_of(self, index: int) -> dict[int, int]:
        """Image ``index``'s labels as ``{attribute: value}`` (annotated attributes only)."""
        row = self.labels[index]
        return {int(a): int(v) for a, v in enumerate(row) if v != UNLABELED}

    def images_with(self, attribute: int, value: int | None = None) -> np.ndarray:
        """Indices of images annotated with ``attribute`` (and ``value`` when given)."""
        col = self.labels[:, attribute]
        mask = col != UNLABELED if value is None else col == value
        return np.flatnonzero(mask)


@dataclass
class DatasetSpec:
    """A dataset: its attributes and its splits.  Image paths resolve against ``root``."""

    name: str
    root: Path
    attributes: list[Attribute]
    splits: dict[str, Split]
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    """Problems that were skipped rather than raised (e.g. with ``allow_singletons``)."""

    @property
    def n_attributes(self) -> int:
        return len(self.attributes)

    @property
    def attribute_names(self) -> list[str]:
        return [a.name for a in self.attributes]

    @property
    def value_counts(self) -> list[int]:
        return [a.n_values for a in self.attributes]

    def attribute_index(self, name: str) -> int:
        """Index of the attribute called ``name`` (a clear error listing the known names otherwise)."""
        for i, a in enumerate(self.attributes):
            if a.name == name:
                return i
        raise UnknownNameError(f"unknown attribute {name!r}; known: {', '.join(self.attribute_names)}")

    def split(self, name: str) -> Split:
        try:
            return self.splits[name]
        except KeyError:
            raise UnknownNameError(f"dataset {self.name!r} has no split {name!r}; it has: {', '.join(self.splits)}") from None

    def image_path(self, split: str, index: int) -> Path:
        return self.root / self.split(split).paths[index]
