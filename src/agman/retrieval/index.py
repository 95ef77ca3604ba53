"""The catalog index: one FAISS index per attribute over a catalog's embeddings, plus item metadata.

A directory holds::

    index.json        checkpoint identity + model name, attributes, index type, D, count (searchable rows)
    items.jsonl       one item per line, in row order: {"id", "path", "labels": {attribute: value}}
    vectors/attr-NN.f32   exact float32 embeddings [count, D] of attribute NN (re-ranking, item queries)
    faiss/attr-NN.faiss   the FAISS index of attribute NN (row i of FAISS = row i of items.jsonl)
    progress.json     only while a run is unfinished: rows embedded so far and their shards
    shards/           only while a run is unfinished: embeddings [n, A, D] of rows not yet in vectors/

:func:`build_index` embeds every image for every attribute with the one-backbone-pass path
(``engine.embed.iter_embeddings`` -> ``model.embed_all``), writes a shard of embeddings every
``shard_size`` images and records it in ``progress.json`` (both atomically), so an interrupted run
continues at the first image without a shard.  When every planned image is embedded, the shards
are appended to the per-attribute vector files and FAISS indexes (exact ones and trained
approximate ones grow in place; an approximate index retrains once the catalog has doubled since it
was trained), ``index.json`` is updated, and the shards are removed.  Adding images later
(``add=True``) plans the images not yet indexed (same id or same file = already there) and runs the
same steps.  A run with a checkpoint whose weight identity differs from the index's is refused.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from agman.errors import AgmanError, InvalidValueError, UnknownNameError, UsageError
from agman.fileio import atomic_write, atomic_write_json
from agman.retrieval.sources import ImageSet

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

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


@dataclass
class IndexConfig:
    """The index type and its parameters (``None`` = chosen from the catalog size at build time).

    ``nprobe`` / ``ef_search`` / ``rerank`` are search-time settings and may be changed when the
    index is opened.  Approximate indexes are built with the L2 metric over the unit-norm
    embeddings (same ranking as the inner product, ``ip = 1 - l2^2 / 2``); their shortlist of
    ``k * rerank`` items per attribute is re-scored exactly from ``vectors/``.
    """

    kind: str = "flat"
    nlist: int | None = None
    nprobe: int = 32
    hnsw_m: int = 32
    ef_construction: int = 64
    ef_search: int = 128
    pq_m: int | None = None
    rerank: int = 10

    def __post_init__(self):
        if self.kind not in INDEX_TYPES:
            raise InvalidValueError(f"unknown index type {self.kind!r}; choose one of {', '.join(INDEX_TYPES)}")
        for name in ("nprobe", "hnsw_m", "ef_construction", "ef_search", "rerank"):
            if int(getattr(self, name)) < 1:
                raise InvalidValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("nlist", "pq_m"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise InvalidValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> IndexConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def auto_nlist(n: int) -> int:
    """Inverted-list count for ``n`` items: about 4*sqrt(n), with >= 39 training points per list."""
    return max(1, min(round(4 * math.sqrt(max(n, 1))), n // 39))


def auto_pq_m(d: int) -> int:
    """PQ sub-quantizers: one per 8 dimensions (a divisor of ``d``)."""
    m = max(1, d // 8)
    while d % m:
        m -= 1
    return m


def import_faiss():
    """``faiss``, with its loader's INFO lines about CPU-specific builds silenced."""
    loader = logging.getLogger("faiss.loader")
    if loader.level < logging.WARNING:
        loader.setLevel(logging.WARNING)
    import faiss

    return faiss


def factory_string(config: IndexConfig, d: int, n: int) -> tuple[str, int]:
    """``(faiss.index_factory description, metric)`` for ``n`` items of dimension ``d``."""
    faiss = import_faiss()

    if config.kind == "flat":
        return "Flat", faiss.METRIC_INNER_PRODUCT
    if config.kind == "hnsw":
        return f"HNSW{config.hnsw_m},Flat", faiss.METRIC_L2
    nlist = config.nlist or auto_nlist(n)
    if config.kind == "ivf":
        return f"IVF{nlist},Flat", faiss.METRIC_L2
    if config.kind == "ivf-sq8":
        return f"IVF{nlist},SQ8", faiss.METRIC_L2
    m = config.pq_m or auto_pq_m(d)
    if d % m:
        raise InvalidValueError(f"pq_m={m} must divide the embedding size {d}")
    nbits = 8 if n >= 256 * 39 else max(1, min(8, int(math.log2(max(n // 39, 2)))))
    return f"IVF{nlist},PQ{m}x{nbits}", faiss.METRIC_L2


def new_faiss_index(config: IndexConfig, d: int, n: int):
    """An empty FAISS index of ``config``'s type for ``n`` items (approximate ones still untrained)."""
    faiss = import_faiss()

    description, metric = factory_string(config, d, n)
    index = faiss.index_factory(d, description, metric)
    inner = faiss.downcast_index(index)
    if config.kind == "hnsw":
        inner.hnsw.efConstruction = config.ef_construction
    if hasattr(inner, "cp"):  # small catalogs: fewer than 39 points per cell is fine, say nothing
        inner.cp.min_points_per_centroid = 1
    if hasattr(inner, "pq"):
        inner.pq.cp.min_points_per_centroid = 1
    return index


def configure_search(index, config: IndexConfig, k: int = 10) -> None:
    """Apply the search-time settings (nprobe, efSearch) to a FAISS index."""
    faiss = import_faiss()

    inner = faiss.downcast_index(index)
    if hasattr(inner, "nprobe"):
        inner.nprobe = min(config.nprobe, inner.nlist)
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = max(config.ef_search, k)


def train_sample(vectors: np.ndarray, n_max: int, seed: int = 0) -> np.ndarray:
    """At most ``n_max`` rows of ``vectors`` (a random subset in row order), as a float32 copy."""
    n = len(vectors)
    if n <= n_max:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, n_max, replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def fill_faiss_index(index, vectors: np.ndarray, *, chunk: int = 65536, train_max: int = 256 * 1024) -> None:
    """Train ``index`` where needed (on a sample of at most ``train_max`` rows) and add ``vectors``."""
    if not index.is_trained:
        index.train(train_sample(vectors, train_max))
    for lo in range(0, len(vectors), chunk):
        index.add(np.ascontiguousarray(vectors[lo : lo + chunk], dtype=np.float32))


# --------------------------------------------------------------------------- atomic files
def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array))


def atomic_write_faiss(path: Path, index) -> None:
    faiss = import_faiss()
    atomic_write(path, lambda f: faiss.write_index(index, faiss.PyCallbackIOWriter(f.write)))


# --------------------------------------------------------------------------- items
@dataclass
class Item:
    """One catalog item: its id, absolute image path and known labels (attribute name -> value name)."""

    id: str
    path: str
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "path": self.path, "labels": self.labels}, ensure_ascii=False)


def read_items(path: Path, limit: int | None = None) -> list[Item]:
    items = []
    if not path.is_file():
        return items
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if limit is not None and len(items) >= limit:
                break
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                items.append(Item(str(d["id"]), str(d["path"]), dict(d.get("labels") or {})))
            except (ValueError, KeyError, TypeError) as exc:
                raise CatalogIndexError(f"{path}, line {lineno}: not an item record ({exc})") from None
    return items


def write_items(path: Path, items: list[Item]) -> None:
    atomic_write(path, lambda f: f.writelines((item.to_json() + "\n").encode() for item in items))


# --------------------------------------------------------------------------- layout
def _attr_file(i: int) -> str:
    return f"attr-{i:02d}"


class IndexLayout:
    """File names inside an index directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.meta = self.root / "index.json"
        self.items = self.root / "items.jsonl"
        self.progress = self.root / "progress.json"
        self.shards = self.root / "shards"

    def vectors(self, a: int) -> Path:
        return self.root / "vectors" / f"{_attr_file(a)}.f32"

    def faiss(self, a: int) -> Path:
        return self.root / "faiss" / f"{_attr_file(a)}.faiss"


def read_meta(root: str | Path) -> dict:
    layout = IndexLayout(root)
    if not layout.meta.is_file():
        raise IndexNotFoundError(f"no index at {layout.root} (index.json missing): build one with `agman index`")
    try:
        meta = json.loads(layout.meta.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CatalogIndexError(f"{layout.meta}: unreadable index metadata ({exc})") from None
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CatalogIndexError(f"{layout.meta} has format version {meta['format_version']}; upgrade agman to read it")
    return meta


def check_identity(meta: dict, identity: str, checkpoint: str | Path, where: str | Path) -> None:
    """Refuse a checkpoint whose weights differ from the ones that built the index."""
    built = meta["checkpoint"]["identity"]
    if built != identity:
        raise IndexMismatchError(
            f"index {where} was built with checkpoint {meta['checkpoint'].get('path')} (identity {built}), "
            f"but {checkpoint} has identity {identity}: embeddings of different checkpoints cannot be mixed; "
            "use the checkpoint that built the index, or build a new index into another folder"
        )


# --------------------------------------------------------------------------- building
@dataclass
class BuildSummary:
    """What one :func:`build_index` call did."""

    root: Path
    count: int
    added: int
    skipped: int
    resumed_from: int
    embedded: int
    seconds: float
    index_type: str
    embed_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Images embedded per second of embedding (model loading and FAISS building excluded)."""
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0


def _plan_items(existing: list[Item], new: ImageSet) -> tuple[list[Item], int]:
    """Items of ``new`` not already in ``existing`` (same id or same file); ``(to add, skipped)``."""
    by_id = {it.id: it for it in existing}
    by_path = {os.path.normpath(it.path) for it in existing}
    add, skipped = [], 0
    for item_id, path, labels in zip(new.ids, new.paths, new.labels):
        norm = os.path.normpath(path)
        if item_id in by_id:
            if os.path.normpath(by_id[item_id].path) != norm:
                raise CatalogIndexError(
                    f"item id {item_id!r} is already in the index for {by_id[item_id].path}, "
                    f"and {new.description or 'the new images'} uses it for {path}: ids must be unique"
                )
            skipped += 1
        elif norm in by_path:
            skipped += 1
        else:
            item = Item(item_id, path, dict(labels))
            by_id[item_id] = item
            by_path.add(norm)
            add.append(item)
    return add, skipped


def build_index(
    out_dir: str | Path,
    images: ImageSet,
    checkpoint: str | Path | None = None,
    *,
    model=None,
    info=None,
    config: IndexConfig | None = None,
    add: bool = False,
    batch_size: int = 32,
    shard_size: int = 1024,
    workers: int = 0,
    device: str = "cpu",
    progress: bool = False,
    on_shard: Callable[[int, int], None] | None = None,
) -> BuildSummary:
    """Embed ``images`` with a checkpoint and write (or grow, or resume) the index at ``out_dir``.

    Give ``checkpoint`` (a path) or an already loaded ``model`` with its ``info``
    (``CheckpointInfo``).  ``config`` picks the index type for a new index; for an existing one it
    must be omitted or equal.  An unfinished index (``progress.json`` present) is resumed; a
    finished one only grows with ``add=True``.  ``on_shard(rows_done, rows_total)`` is called after
    each shard is safely on disk.
    """
    started = time.perf_counter()
    if model is None or info is None:
        if checkpoint is None:
            raise ValueError("build_index needs a checkpoint path or a loaded model with its CheckpointInfo")
        from agman.engine.checkpoint import load_model

        model, info = load_model(checkpoint, device=device)
    layout = IndexLayout(out_dir)
    names = info.attribute_names
    d = int(model.embedding_dim)

    if layout.meta.is_file():
        meta = read_meta(layout.root)
        check_identity(meta, info.identity, info.path, layout.root)
        existing_config = IndexConfig.from_dict(meta["index"])
        if config is not None and config.kind != existing_config.kind:
            raise CatalogIndexError(
                f"index {layout.root} is of type {existing_config.kind!r}, not {config.kind!r}: "
                "an index type is chosen when the index is created; build into another folder to change it"
            )
        config = existing_config
        unfinished = layout.progress.is_file()
        if not unfinished and not add:
            raise IndexExistsError(
                f"{layout.root} already holds a complete index of {meta['count']} items; "
                "pass add=True (--add) to add images, or choose another output folder"
            )
    else:
        if layout.root.exists() and any(layout.root.iterdir()):
            raise CatalogIndexError(f"{layout.root} exists and is not an agman index: choose an empty or new folder")
        config = config or IndexConfig()
        meta = {
            "format_version": FORMAT_VERSION,
            "checkpoint": {
                "identity": info.identity,
                "path": str(Path(info.path).resolve()),
                "model_name": info.model_name,
                "model_config": info.model_config,
                "input_size": info.input_size,
                "crop_ratio": info.crop_ratio,
                "epoch": info.epoch,
            },
            "model_name": info.model_name,
            "attributes": [{"name": a.name, "values": list(a.values)} for a in info.attributes],
            "dim": d,
            "index": config.to_dict(),
            "faiss": {},
            "count": 0,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        layout.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(layout.meta, meta)
        unfinished = False

    items = read_items(layout.items)
    if len(items) < meta["count"]:
        raise CatalogIndexError(f"{layout.items} lists {len(items)} items but index.json counts {meta['count']}")
    new_items, skipped = _plan_items(items, images)
    prog = (
        json.loads(layout.progress.read_text(encoding="utf-8"))
        if unfinished
        else {"embedded": meta["count"], "shards": []}
    )
    resumed_from = prog["embedded"] if unfinished else meta["count"]
    if new_items:
        items = items + new_items
        write_items(layout.items, items)
        log.info("planned %d new images (%d already indexed)", len(new_items), skipped)
    if not unfinished and not new_items:
        return BuildSummary(layout.root, meta["count"], 0, skipped, resumed_from, 0, time.perf_counter() - started, config.kind)
    prog["planned"] = len(items)
    atomic_write_json(layout.progress, prog)

    # ---- embed the rows without a shard, a shard at a time
    batch_size = max(1, int(batch_size))
    shard_rows = max(batch_size, (int(shard_size) // batch_size) * batch_size)
    start = int(prog["embedded"])
    embedded_now = 0
    embed_started = time.perf_counter()
    if start < len(items):
        from agman.engine.embed import iter_embeddings

        paths = [it.path for it in items]
        buffer: list[np.ndarray] = []
        buffered = 0

        def flush():
            nonlocal buffer, buffered, embedded_now
            first = int(prog["embedded"])
            block = np.concatenate(buffer).astype(np.float32, copy=False)
            name = f"shard-{first:010d}.npy"
            atomic_save_npy(layout.shards / name, block)
            prog["shards"].append({"file": name, "start": first, "count": len(block)})
            prog["embedded"] = first + len(block)
            atomic_write_json(layout.progress, prog)
            embedded_now += len(block)
            buffer, buffered = [], 0
            if on_shard is not None:
                on_shard(prog["embedded"], len(items))

        for _, emb in iter_embeddings(
            model,
            paths,
            None,
            input_size=info.input_size,
            crop_ratio=info.crop_ratio,
            batch_size=batch_size,
            device=device,
            workers=workers,
            start=start,
            progress=progress,
        ):
            if emb.shape[1:] != (len(names), d):
                raise CatalogIndexError(f"model returned embeddings {emb.shape[1:]}, expected ({len(names)}, {d})")
            buffer.append(emb)
            buffered += len(emb)
            if buffered >= shard_rows:
                flush()
        if buffer:
            flush()

    embed_seconds = time.perf_counter() - embed_started
    _finalize(layout, meta, prog, config, d, len(names))
    elapsed = time.perf_counter() - started
    return BuildSummary(
        layout.root, meta["count"], len(new_items), skipped, resumed_from, embedded_now, elapsed, config.kind, embed_seconds
    )


def _finalize(layout: IndexLayout, meta: dict, prog: dict, config: IndexConfig, d: int, n_attr: int) -> None:
    """Append the shards to the vector files and FAISS indexes, then commit the new count."""
    faiss = import_faiss()

    old = int(meta["count"])
    total = int(prog["embedded"])
    shards = [(layout.shards / s["file"], int(s["start"]), int(s["count"])) for s in prog["shards"]]
    shards = [s for s in shards if s[1] + s[2] > old]  # a crash after the commit may leave done shards
    faiss_meta = dict(meta.get("faiss", {}))
    for a in range(n_attr):
        vpath = layout.vectors(a)
        vpath.parent.mkdir(parents=True, exist_ok=True)
        row_bytes = d * 4
        with open(vpath, "ab") as f:  # drop rows a crashed finalize appended past the committed count
            f.truncate(old * row_bytes)
        with open(vpath, "ab") as f:
            for path, first, count in shards:
                block = np.load(path, mmap_mode="r")
                skip = max(0, old - first)
                f.write(np.ascontiguousarray(block[skip:count, a, :], dtype=np.float32).tobytes())
            f.flush()
            os.fsync(f.fileno())
        vectors = np.memmap(vpath, dtype=np.float32, mode="r", shape=(total, d)) if total else np.zeros((0, d), np.float32)

        fpath = layout.faiss(a)
        info = faiss_meta.get(str(a), {})
        index = None
        if fpath.is_file() and old > 0:
            index = faiss.read_index(str(fpath))
            trained_on = int(info.get("trained_on", old))
            stale = index.ntotal != old or (not config.exact and config.kind != "hnsw" and total > 2 * trained_on)
            if stale:
                index = None
        if index is None:
            index = new_faiss_index(config, d, total)
            fill_faiss_index(index, vectors)
            info = {"trained_on": total, "factory": factory_string(config, d, total)[0]}
        else:
            fill_faiss_index(index, vectors[old:])
        atomic_write_faiss(fpath, index)
        faiss_meta[str(a)] = info
        del vectors
    meta["faiss"] = faiss_meta
    meta["count"] = total
    meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_json(layout.meta, meta)
    layout.progress.unlink(missing_ok=True)
    shutil.rmtree(layout.shards, ignore_errors=True)


# --------------------------------------------------------------------------- reading
class CatalogIndex:
    """An index directory opened for search: items, exact vectors (memory-mapped) and FAISS indexes
    (loaded on first use).  Only the ``count`` committed rows are visible while a run is unfinished.
    """

    def __init__(self, root: str | Path, config: IndexConfig | None = None):
        self.layout = IndexLayout(root)
        self.root = self.layout.root
        self.meta = read_meta(self.root)
        self.config = config or IndexConfig.from_dict(self.meta["index"])
        if self.config.kind != self.meta["index"]["kind"]:
            raise CatalogIndexError(f"index {self.root} is of type {self.meta['index']['kind']!r}, not {self.config.kind!r}")
        self.count = int(self.meta["count"])
        self.dim = int(self.meta["dim"])
        self.attribute_names = [a["name"] for a in self.meta["attributes"]]
        self.attribute_values = {a["name"]: list(a["values"]) for a in self.meta["attributes"]}
        self.items = read_items(self.layout.items, limit=self.count)
        if len(self.items) != self.count:
            raise CatalogIndexError(f"{self.layout.items} has {len(self.items)} items; index.json counts {self.count}")
        self.row_of_id = {it.id: i for i, it in enumerate(self.items)}
        self.row_of_path = {os.path.normpath(it.path): i for i, it in enumerate(self.items)}
        self.unfinished = self.layout.progress.is_file()
        self._vectors: dict[int, np.ndarray] = {}
        self._faiss: dict[int, object] = {}
        self._labelled: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def identity(self) -> str:
        return self.meta["checkpoint"]["identity"]

    @property
    def kind(self) -> str:
        return self.config.kind

    def __len__(self) -> int:
        return self.count

    def attribute_index(self, name: str) -> int:
        try:
            return self.attribute_names.index(name)
        except ValueError:
            raise UnknownNameError(f"unknown attribute {name!r}; this index has: {', '.join(self.attribute_names)}") from None

    def vectors(self, a: int) -> np.ndarray:
        """Exact embeddings ``[count, D]`` float32 of attribute ``a`` (memory-mapped, read-only)."""
        with self._lock:
            if a not in self._vectors:
                if self.count == 0:
                    self._vectors[a] = np.zeros((0, self.dim), np.float32)
                else:
                    self._vectors[a] = np.memmap(
                        self.layout.vectors(a), dtype=np.float32, mode="r", shape=(self.count, self.dim)
                    )
            return self._vectors[a]

    def faiss_index(self, a: int):
        """Attribute ``a``'s FAISS index (read once, then shared; FAISS searches are thread-safe)."""
        faiss = import_faiss()

        with self._lock:
            if a not in self._faiss:
                index = faiss.read_index(str(self.layout.faiss(a)))
                if index.ntotal != self.count:
                    raise CatalogIndexError(
                        f"{self.layout.faiss(a)} holds {index.ntotal} vectors; index.json counts {self.count}: "
                        "rerun `agman index` on this folder to finish it"
                    )
                configure_search(index, self.config)
                self._faiss[a] = index
            return self._faiss[a]

    def labelled_rows(self, attribute: str) -> np.ndarray:
        """Rows of the items annotated with ``attribute`` (ascending; computed once per attribute)."""
        with self._lock:
            if attribute not in self._labelled:
                rows = [i for i, it in enumerate(self.items) if attribute in it.labels]
                self._labelled[attribute] = np.asarray(rows, dtype=np.int64)
            return self._labelled[attribute]

    def memory_bytes(self) -> dict[str, int]:
        """On-disk bytes per attribute: FAISS index and exact vectors (for the trade-off table)."""
        out = {"faiss": 0, "vectors": 0}
        for a in range(len(self.attribute_names)):
            out["faiss"] += self.layout.faiss(a).stat().st_size if self.layout.faiss(a).is_file() else 0
            out["vectors"] += self.layout.vectors(a).stat().st_size if self.layout.vectors(a).is_file() else 0
        return {k: v // max(1, len(self.attribute_names)) for k, v in out.items()}
