"""What an index is: its type (:class:`IndexConfig`), its description ``index.json`` as a typed
:class:`IndexInfo` (read and validated here, and only here), the file names of an index folder
(:class:`IndexLayout`), and the index errors.

``index.json`` (format version 3; versions 1 and 2 are read as well)::

    {"format_version": 3,
     "checkpoint": {"identity", "path", "model_name", "model_config", "input_size", "crop_ratio", "epoch"},
     "attributes": [{"name", "values": [...]}, ...],
     "metadata": {"<column>": "string" | "number" | "bool", ...},
     "root": "/catalog/root" | null, "dim": D, "index": {IndexConfig fields},
     "count": rows written, "deleted": [rows no longer searchable],
     "removed": [ids deleted with --delete / DELETE: `agman index --add` does not add them again],
     "faiss": {"<attribute>": {"factory", "trained_on"}},
     "files": {"<relative path>": {"size", "hash", "sample"}}, "created", "updated"}

``root`` is the catalog root the items' image paths are relative to (``null``: absolute paths, as
formats 1 and 2 stored them); it can be overridden when the index is opened, so a folder can move.
The same description is kept in a Milvus collection's properties (:meth:`IndexInfo.to_json` /
:meth:`IndexInfo.parse`).

``files`` (written since the index files carry hashes; a folder without it still opens, its sizes
checked only) records, for ``items.jsonl`` and every vector and FAISS file, the bytes the index
counts and their xxh3-128 hashes (:mod:`agman.retrieval.backends.faiss.integrity`).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter, ValidationError

from agman.data.spec import Attribute
from agman.errors import AgmanError, InvalidValueError, UsageError
from agman.fileio import atomic_write_text

FORMAT_VERSION = 3
"""3: item paths relative to ``root``, the metadata schema, deleted rows (older agman would misread
them); 2: ``model_name`` only inside ``checkpoint`` (1 stored it twice)."""

INDEX_TYPES = {
    "flat": "exact: brute-force inner product over every item (FAISS IndexFlatIP)",
    "hnsw": "approximate: HNSW graph over the full vectors (no training; fast, +~M*8 bytes/item)",
    "ivf": "approximate: inverted file over k-means cells, full vectors in the lists (nprobe cells searched)",
    "ivf-sq8": "approximate, compressed 4x: inverted file + 8-bit scalar quantizer, re-ranked exactly",
    "ivf-pq": "approximate, compressed 32x (D=512): inverted file + product quantizer, re-ranked exactly",
}


class CatalogIndexError(AgmanError, ValueError):
    """An index directory is missing, malformed, or cannot take what was asked."""


class IndexBusyError(CatalogIndexError):
    """Another process is writing to the index (an index folder's lock is held)."""


class StoreUnavailableError(AgmanError):
    """The database behind a store refused or failed an operation (unreachable, timed out)."""


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


@dataclass(frozen=True)
class IndexedCheckpoint:
    """The checkpoint that embedded an index: an image query must be embedded by the same weights."""

    identity: str
    path: Path
    model_name: str
    input_size: Annotated[int, Field(ge=16)]
    crop_ratio: Annotated[float, Field(gt=0, le=1)]
    model_config: dict = field(default_factory=dict)
    epoch: Annotated[int, Field(ge=0)] = 0

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


@dataclass(frozen=True)
class FaissFile:
    """How one attribute's FAISS file was made: its factory string and the rows it was trained on."""

    factory: str
    trained_on: Annotated[int, Field(ge=0)]


HASH_PATTERN = r"^xxh3-128:[0-9a-f]{32}$"


@dataclass(frozen=True)
class FileRecord:
    """One file of an index folder as the index counts it: its first ``size`` bytes (the whole file,
    or the part a later unfinished build has not yet committed past), their hash, and the hash of a
    fixed sample of blocks of them (cheap enough to check at every open)."""

    size: Annotated[int, Field(ge=0)]
    hash: Annotated[str, Field(pattern=HASH_PATTERN)]
    sample: Annotated[str, Field(pattern=HASH_PATTERN)]


@dataclass
class IndexInfo:
    """``index.json``: which checkpoint built the index, its attributes, D, type and row count."""

    checkpoint: IndexedCheckpoint
    attributes: Annotated[list[Attribute], Field(min_length=1)]
    dim: Annotated[int, Field(ge=1)]
    config: Annotated[IndexConfig, Field(alias="index")]
    count: Annotated[int, Field(ge=0)] = 0
    faiss: dict[int, FaissFile] = field(default_factory=dict)
    files: dict[str, FileRecord] = field(default_factory=dict)
    created: str = field(default_factory=now)
    updated: str | None = None
    metadata: dict[str, Literal["string", "number", "bool"]] = field(default_factory=dict)
    root: str | None = None
    deleted: list[Annotated[int, Field(ge=0)]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # tombstones: ids deleted on purpose
    # written by `agman index --extend` (retrieval/extend.py): each attribute's weight identity, and the
    # identities of the earlier checkpoints whose vectors the index's older attributes keep
    attribute_identities: dict[str, str] = field(default_factory=dict)
    lineage: list[str] = field(default_factory=list)
    # Milvus: the attribute count its primary keys were laid out for (row x count + attribute); attributes
    # added later by --extend key their entities in bands of their own (milvus_store._pk).  None: all of them
    pk_attributes: Annotated[int, Field(ge=1)] | None = None

    def __post_init__(self):
        stray = sorted(a for a in self.faiss if not 0 <= a < len(self.attributes))
        if stray:
            raise ValueError(f"faiss: attribute {stray[0]} does not exist ({len(self.attributes)} attributes)")
        clash = sorted(set(self.metadata) & {a.name for a in self.attributes})
        if clash:
            raise ValueError(f"metadata: {clash[0]!r} is also an attribute's name")
        self.deleted = sorted(set(self.deleted))
        if self.deleted and self.deleted[-1] >= self.count:
            raise ValueError(f"deleted: row {self.deleted[-1]} is past count {self.count}")

    @property
    def searchable(self) -> int:
        """Rows that can be found (written and not deleted)."""
        return self.count - len(self.deleted)

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
    def to_json(self) -> str:
        """The description as JSON text (what ``index.json`` holds; a database backend may keep it
        in its collection's properties and read it back with :meth:`parse`)."""
        fields = _SCHEMA.dump_python(self, mode="json", by_alias=True)
        return json.dumps({"format_version": FORMAT_VERSION, **fields}, indent=1) + "\n"

    def write(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def read(cls, path: str | Path) -> IndexInfo:
        """Read and validate ``index.json``; any problem names the file and the key."""
        path = Path(path)
        if not path.is_file():
            raise IndexNotFoundError(f"no index at {path.parent} (index.json missing): build one with `agman index`")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CatalogIndexError(f"{path}: unreadable index metadata ({exc})") from None
        return cls.parse(text, path)

    @classmethod
    def parse(cls, text: str, where: str | Path) -> IndexInfo:
        """Validate a description (pydantic, strict types); errors name ``where`` and the key."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise CatalogIndexError(f"{where}: unreadable index metadata ({type(exc).__name__}: {exc})") from None
        version = data.get("format_version", 0) if isinstance(data, dict) else 0
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise CatalogIndexError(f"{where} has format version {version}; upgrade agman to read it")
        try:
            return _SCHEMA.validate_json(text, strict=True)
        except ValidationError as exc:
            problems = []
            for e in exc.errors(include_url=False):
                message = e["msg"].removeprefix("Value error, ")
                key = ".".join(str(p) for p in e["loc"])
                if e["type"] == "missing":
                    problems.append(f"{key} is missing")
                else:
                    problems.append(f"{key}: {message} (got {e.get('input')!r:.60})" if key else message)
            raise CatalogIndexError(f"{where}: not a valid index description: {'; '.join(problems)}") from None


_SCHEMA = TypeAdapter(IndexInfo)
