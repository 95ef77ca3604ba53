"""Building an index: plan the new items, embed them in resumable shards, commit them to the store.

:func:`build_index` runs three steps:

1. **plan** (:func:`plan_items`): the images of the source not yet indexed (same id or same file =
   already there; an id reused for another file is an error) are appended to ``items.jsonl``;
2. **embed** (:class:`ShardWriter`): every image is embedded for every attribute with the
   one-backbone-pass path (``engine.embed.iter_embeddings`` -> ``model.embed_all``); every
   ``shard_size`` images become one shard file recorded in ``progress.json`` (both atomic), so an
   interrupted run continues at the first image without a shard;
3. **commit**: the shards are appended to the store (:func:`agman.retrieval.faiss_store.append_rows`
   for the FAISS-files backend), ``index.json`` counts the new rows, the shards are removed.

A run with a checkpoint whose weight identity differs from the index's is refused.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from agman.fileio import atomic_write, atomic_write_json
from agman.retrieval.faiss_store import append_rows, damage_message, folder_problems, record_files
from agman.retrieval.info import (
    CatalogIndexError,
    IndexConfig,
    IndexedCheckpoint,
    IndexExistsError,
    IndexInfo,
    IndexLayout,
    now,
)
from agman.retrieval.integrity import IndexDamagedError
from agman.retrieval.items import Item, read_items, write_items
from agman.retrieval.sources import ImageSet

log = logging.getLogger(__name__)


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


@dataclass
class Shard:
    """Embeddings ``[count, A, D]`` of rows ``start .. start + count`` in ``shards/<file>``."""

    file: str
    start: int
    count: int


@dataclass
class Progress:
    """``progress.json``: rows embedded so far (committed rows included) and the shards holding them."""

    embedded: int
    shards: list[Shard] = field(default_factory=list)
    planned: int = 0

    @classmethod
    def read(cls, path: Path) -> Progress:
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(int(d["embedded"]), [Shard(**s) for s in d["shards"]], int(d.get("planned", 0)))
        except (ValueError, KeyError, TypeError) as exc:
            raise CatalogIndexError(
                f"{path}: unreadable build progress ({exc}); remove it and shards/ to embed the images again"
            ) from None

    def write(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))


def plan_items(existing: list[Item], new: ImageSet) -> tuple[list[Item], int]:
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


class ShardWriter:
    """Collects embedding batches; every ``rows_per_shard`` rows become one shard file, recorded in
    ``progress.json`` right after (both atomic).  ``on_shard(rows_done, rows_total)`` follows each."""

    def __init__(self, layout: IndexLayout, progress: Progress, rows_per_shard: int, total: int, on_shard=None):
        self.layout, self.progress = layout, progress
        self.rows_per_shard, self.total, self.on_shard = rows_per_shard, total, on_shard
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.written = 0

    def add(self, block: np.ndarray) -> None:
        self.buffer.append(block)
        self.buffered += len(block)
        if self.buffered >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        first = self.progress.embedded
        block = np.concatenate(self.buffer).astype(np.float32, copy=False)
        name = f"shard-{first:010d}.npy"
        atomic_write(self.layout.shards / name, lambda f: np.save(f, block))
        self.progress.shards.append(Shard(name, first, len(block)))
        self.progress.embedded = first + len(block)
        self.progress.write(self.layout.progress)
        self.written += len(block)
        self.buffer, self.buffered = [], 0
        if self.on_shard is not None:
            self.on_shard(self.progress.embedded, self.total)


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
    must be omitted or of the same type.  An unfinished index (``progress.json`` present) is
    resumed; a finished one only grows with ``add=True``.  ``on_shard(rows_done, rows_total)`` is
    called after each shard is safely on disk.
    """
    started = time.perf_counter()
    if model is None or info is None:
        if checkpoint is None:
            raise ValueError("build_index needs a checkpoint path or a loaded model with its CheckpointInfo")
        from agman.engine.checkpoint import load_model

        model, info = load_model(checkpoint, device=device)
    layout = IndexLayout(out_dir)
    index, unfinished = _open_or_create(layout, info, int(model.embedding_dim), config, add)

    items = read_items(layout.items)
    if len(items) < index.count:
        raise CatalogIndexError(f"{layout.items} lists {len(items)} items but index.json counts {index.count}")
    new_items, skipped = plan_items(items, images)
    prog = Progress.read(layout.progress) if unfinished else Progress(embedded=index.count)
    resumed_from = prog.embedded
    if new_items:
        items = items + new_items
        write_items(layout.items, items)
        log.info("planned %d new images (%d already indexed)", len(new_items), skipped)

    def summary(embedded: int = 0, embed_seconds: float = 0.0) -> BuildSummary:
        seconds = time.perf_counter() - started
        return BuildSummary(layout.root, index.count, len(new_items), skipped, resumed_from, embedded, seconds,
                            index.config.kind, embed_seconds)

    if not unfinished and not new_items:
        if index.count and not index.files:  # written by an older agman: record its files' hashes now
            record_files(layout, index)
            index.write(layout.info)
            log.info("recorded the sizes and hashes of the files of %s", layout.root)
        return summary()
    prog.planned = len(items)
    prog.write(layout.progress)

    embed_started = time.perf_counter()
    batch_size = max(1, int(batch_size))
    shard_rows = max(batch_size, (int(shard_size) // batch_size) * batch_size)  # whole batches: resumes align
    writer = ShardWriter(layout, prog, shard_rows, len(items), on_shard)
    if prog.embedded < len(items):
        from agman.engine.embed import iter_embeddings

        expected = (len(index.attributes), index.dim)
        for first, emb in iter_embeddings(
            model,
            [it.path for it in items],
            None,
            input_size=info.input_size,
            crop_ratio=info.crop_ratio,
            batch_size=batch_size,
            device=device,
            workers=workers,
            start=prog.embedded,
            progress=progress,
        ):
            if emb.shape[1:] != expected:
                raise CatalogIndexError(f"model returned embeddings {emb.shape[1:]}, expected {expected}")
            finite = np.isfinite(emb).reshape(len(emb), -1).all(axis=1)
            if not finite.all():
                row = first + int(np.flatnonzero(~finite)[0])
                raise CatalogIndexError(
                    f"the model's embedding of {items[row].path} (row {row}) is not finite (NaN or infinity): "
                    "the checkpoint's weights are damaged"
                )
            writer.add(emb)
        writer.flush()
    embed_seconds = time.perf_counter() - embed_started

    _commit(layout, index, prog)
    return summary(writer.written, embed_seconds)


def _open_or_create(
    layout: IndexLayout, ckpt, dim: int, config: IndexConfig | None, add: bool
) -> tuple[IndexInfo, bool]:
    """The index at ``layout`` (checked against the checkpoint and ``config``), or a new one;
    and whether a previous run left it unfinished."""
    if layout.info.is_file():
        index = IndexInfo.read(layout.info)
        index.check_checkpoint(ckpt.identity, ckpt.path, layout.root)
        if config is not None and config.kind != index.config.kind:
            raise CatalogIndexError(
                f"index {layout.root} is of type {index.config.kind!r}, not {config.kind!r}: "
                "an index type is chosen when the index is created; build into another folder to change it"
            )
        unfinished = layout.progress.is_file()
        problems = [] if unfinished else folder_problems(layout, index, "sample")
        if problems:  # growing a damaged index would hide the damage under new rows
            raise IndexDamagedError(damage_message(layout, problems))
        if not unfinished and not add:
            raise IndexExistsError(
                f"{layout.root} already holds a complete index of {index.count} items; "
                "pass add=True (--add) to add images, or choose another output folder"
            )
        return index, unfinished
    if layout.root.exists() and any(layout.root.iterdir()):
        raise CatalogIndexError(f"{layout.root} exists and is not an agman index: choose an empty or new folder")
    index = IndexInfo(IndexedCheckpoint.of(ckpt), list(ckpt.attributes), dim, config or IndexConfig())
    layout.root.mkdir(parents=True, exist_ok=True)
    index.write(layout.info)
    return index, False


def _commit(layout: IndexLayout, index: IndexInfo, prog: Progress) -> None:
    """Append the embedded rows past ``index.count`` to the store, then count them in ``index.json``."""
    old, total = index.count, prog.embedded
    # a crash after the previous commit may leave shards of rows that are already in
    shards = [s for s in prog.shards if s.start + s.count > old]

    def blocks():
        for s in shards:
            block = np.load(layout.shards / s.file, mmap_mode="r")
            yield block[max(0, old - s.start) : s.count]

    append_rows(layout, index, total, blocks)
    index.count = total
    record_files(layout, index)
    index.updated = now()
    index.write(layout.info)
    layout.progress.unlink(missing_ok=True)
    shutil.rmtree(layout.shards, ignore_errors=True)
