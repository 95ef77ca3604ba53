"""What an index is: its type (:class:`IndexConfig`), its description ``index.json`` as a typed
:class:`IndexInfo` (read and validated here, and only here), the file names of an index folder
(:class:`IndexLayout`), and the index errors.

``index.json`` (format version 2; version 1, which also stored ``model_name`` at the top level,
is read as well)::

    {"format_version": 2,
     "checkpoint": {"identity", "path", "model_name", "model_config", "input_size", "crop_ratio", "epoch"},
     "attributes": [{"name", "values": [...]}, ...],
     "dim": D, "index": {IndexConfig fields}, "count": searchable rows,
     "faiss": {"<attribute>": {"factory", "trained_on"}}, "created", "updated"}
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from agman.data.spec import Attribute
from agman.errors import AgmanError, InvalidValueError, UsageError
from agman.fileio import atomic_write_json

FORMAT_VERSION = 2
"""2: ``model_name`` only inside ``checkpoint`` (1 stored it twice)."""

INDEX_TYPES = {
    "flat": "exact: brute-force inner product over every item (FAISS IndexFlatIP)",
    "hnsw": "approximate: HNSW graph over the full vectors (no training; fast, +~M*8 bytes/item)",
    "ivf": "approximate: inverted file over k-means cells, full vectors in the lists (nprobe cells searched)",
    "ivf-sq8": "approximate, compressed 4x: inverted file + 8-bit scalar quantizer, re-ranked exactly",
    "ivf-pq": "approximate, compressed 32x (D=512): inverted file + product quantizer, re-ranked exactly",
}


class CatalogIndexError(AgmanError, ValueError):
    """An index directory is missing, malformed, or cannot take what was asked."""


class IndexMismatchError(UsageError, CatalogIndexError):
    """The index was built by another checkpoint (different weight identity): embeddings cannot mix."""


class IndexExistsError(UsageError, CatalogIndexError):
    """The output folder already holds a complete index and no images were asked to be added."""


class IndexNotFoundError(UsageError, CatalogIndexError):
    """No index in the folder (no index.json)."""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass(frozen=True)
class IndexConfig:
    """The index type and its parameters (``None`` = chosen from the catalog size at build time).

    ``nprobe`` / ``ef_search`` / ``rerank`` are search-time settings and may be changed when the
    index is opened (:meth:`tuned`).  Approximate indexes are built with the L2 metric over the
    unit-norm embeddings (same ranking as the inner product, ``ip = 1 - l2^2 / 2``); their
    shortlist of ``k * rerank`` items per attribute is re-scored exactly.
    """

    kind: str = "flat"
    nlist: int | None = None
    nprobe: int = 32
    hnsw_m: int = 32
    ef_construction: int = 64
    ef_search: int = 128
    pq_m: int | None = None
    rerank: int = 10

    SEARCH_SETTINGS = ("nprobe", "ef_search", "rerank")

    def __post_init__(self):
        if self.kind not in INDEX_TYPES:
            raise InvalidValueError(f"unknown index type {self.kind!r}; choose one of {', '.join(INDEX_TYPES)}")
        for name in ("nprobe", "hnsw_m", "ef_construction", "ef_search", "rerank", "nlist", "pq_m"):
            value = getattr(self, name)
            if value is None and name in ("nlist", "pq_m"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidValueError(f"{name} must be an integer of at least 1, got {value!r}")

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def tuned(self, **settings: int | None) -> IndexConfig:
        """This config with the given search-time settings (``None`` = keep) replaced."""
        unknown = set(settings) - set(self.SEARCH_SETTINGS)
        if unknown:
            raise InvalidValueError(
                f"{', '.join(sorted(unknown))}: not a search-time setting ({', '.join(self.SEARCH_SETTINGS)})"
            )
        return replace(self, **{k: v for k, v in settings.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> IndexConfig:
        """Known keys only (an index written by a newer agman may carry more)."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class IndexedCheckpoint:
    """The checkpoint that embedded an index: an image query must be embedded by the same weights."""

    identity: str
    path: Path
    model_name: str
    input_size: int
    crop_ratio: float
    model_config: dict = field(default_factory=dict)
    epoch: int = 0

    @classmethod
    def of(cls, info) -> IndexedCheckpoint:
        """From an ``engine.checkpoint.CheckpointInfo``."""
        return cls(
            identity=info.identity,
            path=Path(info.path).resolve(),
            model_name=info.model_name,
            input_size=int(info.input_size),
            crop_ratio=float(info.crop_ratio),
            model_config=dict(info.model_config),
            epoch=int(info.epoch),
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


@dataclass(frozen=True)
class FaissFile:
    """How one attribute's FAISS file was made: its factory string and the rows it was trained on."""

    factory: str
    trained_on: int


@dataclass
class IndexInfo:
    """``index.json``: which checkpoint built the index, its attributes, D, type and row count."""

    checkpoint: IndexedCheckpoint
    attributes: list[Attribute]
    dim: int
    config: IndexConfig
    count: int = 0
    faiss: dict[int, FaissFile] = field(default_factory=dict)
    created: str = field(default_factory=now)
    updated: str | None = None

    @property
    def model_name(self) -> str:
        return self.checkpoint.model_name

    @property
    def attribute_names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def check_checkpoint(self, identity: str, path: str | Path, where: str | Path) -> None:
        """Refuse a checkpoint whose weights differ from the ones that built the index at ``where``."""
        built = self.checkpoint
        if identity != built.identity:
            raise IndexMismatchError(
                f"index {where} was built with checkpoint {built.path} (identity {built.identity}), "
                f"but {path} has identity {identity}: embeddings of different checkpoints cannot be mixed; "
                "use the checkpoint that built the index, or build a new index into another folder"
            )

    # ------------------------------------------------------------------ file
    def to_dict(self) -> dict:
        d = {
            "format_version": FORMAT_VERSION,
            "checkpoint": self.checkpoint.to_dict(),
            "attributes": [{"name": a.name, "values": list(a.values)} for a in self.attributes],
            "dim": self.dim,
            "index": self.config.to_dict(),
            "faiss": {str(a): asdict(f) for a, f in sorted(self.faiss.items())},
            "count": self.count,
            "created": self.created,
        }
        if self.updated is not None:
            d["updated"] = self.updated
        return d

    def write(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> IndexInfo:
        """Read and validate ``index.json``; any problem names the file and the key."""
        path = Path(path)
        if not path.is_file():
            raise IndexNotFoundError(f"no index at {path.parent} (index.json missing): build one with `agman index`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CatalogIndexError(f"{path}: unreadable index metadata ({exc})") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: Any, path: str | Path = "index.json") -> IndexInfo:
        f = _Fields(data, path)
        version = f.integer("format_version", minimum=0, default=0)
        if version > FORMAT_VERSION:
            raise CatalogIndexError(f"{path} has format version {version}; upgrade agman to read it")
        ck = f.section("checkpoint")
        checkpoint = IndexedCheckpoint(
            identity=ck.text("identity"),
            path=Path(ck.text("path")),
            model_name=ck.text("model_name"),
            input_size=ck.integer("input_size", minimum=1),
            crop_ratio=ck.number("crop_ratio"),
            model_config=ck.object("model_config", default={}),
            epoch=ck.integer("epoch", minimum=0, default=0),
        )
        attributes = []
        for i, a in enumerate(f.array("attributes")):
            af = _Fields(a, path, f"attributes[{i}].")
            values = af.array("values")
            if not all(isinstance(v, str) for v in values):
                raise af.error("values", "a list of value names")
            attributes.append(Attribute(af.text("name"), tuple(values)))
        if not attributes:
            raise f.error("attributes", "at least one attribute")
        try:
            config = IndexConfig.from_dict(f.object("index"))
        except (InvalidValueError, TypeError) as exc:
            raise CatalogIndexError(f"{path}: 'index' is not a valid index configuration ({exc})") from None
        faiss = {}
        for key, value in f.object("faiss", default={}).items():
            ff = _Fields(value, path, f"faiss.{key}.")
            if not key.isdigit() or int(key) >= len(attributes):
                raise CatalogIndexError(f"{path}: faiss.{key}: not an attribute number of this index")
            faiss[int(key)] = FaissFile(ff.text("factory", default=""), ff.integer("trained_on", minimum=0))
        return cls(
            checkpoint=checkpoint,
            attributes=attributes,
            dim=f.integer("dim", minimum=1),
            config=config,
            count=f.integer("count", minimum=0),
            faiss=faiss,
            created=f.text("created", default=""),
            updated=f.text("updated", default=None),
        )


_REQUIRED = object()


class _Fields:
    """Typed access to one JSON object of ``index.json``; a wrong or missing value names file and key."""

    def __init__(self, data: Any, path: str | Path, prefix: str = ""):
        self.path, self.prefix = path, prefix
        if not isinstance(data, dict):
            raise CatalogIndexError(
                f"{path}: {prefix.rstrip('.') or 'the file'} must be a JSON object, got {type(data).__name__}"
            )
        self.data = data

    def error(self, key: str, expected: str) -> CatalogIndexError:
        return CatalogIndexError(f"{self.path}: {self.prefix}{key} must be {expected}, got {self.data.get(key)!r}")

    def _get(self, key: str, default, ok, expected: str):
        if key not in self.data:
            if default is _REQUIRED:
                raise CatalogIndexError(f"{self.path}: {self.prefix}{key} is missing")
            return default
        value = self.data[key]
        if not ok(value):
            raise self.error(key, expected)
        return value

    def integer(self, key: str, minimum: int, default=_REQUIRED) -> int:
        ok = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum  # noqa: E731
        return self._get(key, default, ok, f"an integer >= {minimum}")

    def number(self, key: str, default=_REQUIRED) -> float:
        ok = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0  # noqa: E731
        return float(self._get(key, default, ok, "a positive number"))

    def text(self, key: str, default=_REQUIRED) -> str:
        return self._get(key, default, lambda v: isinstance(v, str), "a string")

    def array(self, key: str, default=_REQUIRED) -> list:
        return self._get(key, default, lambda v: isinstance(v, list), "a list")

    def object(self, key: str, default=_REQUIRED) -> dict:
        return self._get(key, default, lambda v: isinstance(v, dict), "a JSON object")

    def section(self, key: str) -> _Fields:
        return _Fields(self.object(key), self.path, f"{self.prefix}{key}.")


class IndexLayout:
    """File names inside an index directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.info = self.root / "index.json"
        self.items = self.root / "items.jsonl"
        self.progress = self.root / "progress.json"
        self.shards = self.root / "shards"

    def vectors(self, a: int) -> Path:
        return self.root / "vectors" / f"attr-{a:02d}.f32"

    def faiss(self, a: int) -> Path:
        return self.root / "faiss" / f"attr-{a:02d}.faiss"
