"""Building an index: plan the items, embed them in resumable shards (on one process or sharded
across ``torchrun`` ranks), commit them to the store.

:func:`build_index` runs three steps, for every backend (the registry,
:mod:`agman.retrieval.backends`, opens the FAISS folder or the Milvus collection behind a
:class:`~agman.retrieval.store.CatalogWriter`):

1. **plan** (rank 0, :func:`plan_items`): the items of the source to write — new ones (same id or
   same file as a stored item = already there; an id reused for another file is an error), or with
   ``update`` the stored ones again (re-embedded, each replacing its row) — recorded in the work
   folder (``progress.json`` + ``shards/plan.jsonl``);
2. **embed** (every rank): the plan's batches of ``batch_size`` images are split into contiguous
   runs, one per rank; each image is embedded for every attribute with the one-backbone-pass
   path (``engine.embed.iter_embeddings`` -> ``model.embed_all``); every ``shard_size`` images
   become a shard file recorded in the rank's ``shards/rank-NNN.json`` (both atomic), so an
   interrupted run — on any number of ranks — embeds only the batches no shard holds.  Batches
   are those of a one-process run, so the embeddings are the same bits;
3. **commit** (rank 0): the shards are appended to the store in plan order as fresh rows, the rows
   they replace and the images that could not be read (``on_error="skip"``: listed with their
   reasons in ``skipped.jsonl``) are made unsearchable, the work folder is removed.  Into a Milvus
   server under torchrun, every rank upserts its own shards straight into the collection (rows
   reserved by rank 0 first; each shard written is recorded, so a rerun writes only the rest) and
   rank 0 only deletes the replaced rows and commits the description — no vector travels to rank 0.

A run with a checkpoint whose weight identity differs from the index's is refused.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agman.errors import InvalidValueError
from agman.fileio import atomic_write_text
from agman.retrieval.backends import open_for_build, open_writer, parallel_writes
from agman.retrieval.embedder import Embedder
from agman.retrieval.info import CatalogIndexError, IndexConfig
from agman.retrieval.items import Item
from agman.retrieval.query import UnknownItemError
from agman.retrieval.ranks import all_ranks_ok, broadcast_text, single_process
from agman.retrieval.reindex import commit_reindexed
from agman.retrieval.imagesets import ImageSet
from agman.retrieval.store import CatalogWriter
from agman.retrieval.work import Progress, ShardWriter, Work, batch_runs

log = logging.getLogger(__name__)

ON_ERROR = ("stop", "skip")


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
    updated: int = 0
    unreadable: int = 0
    location: str = ""
    deleted_skipped: int = 0  # source items deleted earlier (--delete / DELETE) and not added again

    @property
    def images_per_second(self) -> float:
        """Images embedded per second of embedding (model loading and FAISS building excluded)."""
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0


def plan_items(
    live: dict[str, tuple[int, Item]], stored_paths: set[str], new: ImageSet, *, add: bool, update: bool,
    removed: set[str] | frozenset = frozenset(),
) -> tuple[list[Item], list[int | None], int, int]:
    """What to write for source ``new``, given its ids' ``live`` (searchable) items (``{id: (row,
    item)}``) and which of its paths are ``stored_paths`` of searchable items: ``(items, replaces,
    already there, left out as deleted)``.

    New ids are added when ``add``, except the ``removed`` ones (deleted on purpose: a delete
    sticks; ids whose rows were replaced or skipped as unreadable are added again); a stored id is re-indexed
    (its row replaced) when ``update``, else counted as already there.  Without ``update`` an image
    already stored under another id is the same item (not added again), and an id stored for
    another file is an error.  With ``update`` alone an id that is not stored is an
    :class:`UnknownItemError` (nothing is planned)."""
    items, replaces, there, gone = [], [], 0, 0
    unknown = []
    seen_paths = {os.path.normpath(p) for p in stored_paths}
    for item_id, path, labels, metadata in zip(new.ids, new.paths, new.labels, new.metadata):
        norm = os.path.normpath(path)
        row, stored = live.get(item_id, (None, None))
        item = Item(item_id, path, dict(labels), dict(metadata))
        if stored is not None and update:
            items.append(item)
            replaces.append(row)
        elif stored is not None:
            if os.path.normpath(stored.path) != norm:
                raise CatalogIndexError(
                    f"item id {item_id!r} is already in the index for {stored.path}, "
                    f"and {new.description or 'the new images'} uses it for {path}: ids must be unique "
                    "(--update re-indexes an item with its new file)"
                )
            there += 1
        elif not add:
            unknown.append(item_id)
        elif item_id in removed:
            gone += 1
        elif norm in seen_paths:
            there += 1
        else:
            seen_paths.add(norm)
            items.append(item)
            replaces.append(None)
    if unknown:
        raise UnknownItemError.of(unknown, "the index", "--update re-indexes stored items (add new ones with --add); "
                                  "nothing was changed")
    return items, replaces, there, gone


def build_index(
    out,
    images: ImageSet | None,
    checkpoint: str | Path | None = None,
    *,
    model=None,
    info=None,
    config: IndexConfig | None = None,
    add: bool = False,
    update: bool = False,
    include_deleted: bool = False,
    batch_size: int = 32,
    shard_size: int = 1024,
    workers: int = 0,
    device: str = "cpu",
    progress: bool = False,
    on_shard: Callable[[int, int], None] | None = None,
    on_error: str = "stop",
    root: str | Path | None = None,
    work: str | Path | None = None,
    distributed=None,
) -> BuildSummary:
    """Embed ``images`` with a checkpoint and write (or grow, update, resume) the index at ``out``.

    ``out``: an index folder (FAISS files), a Milvus URI (``catalog.db`` for Milvus Lite,
    ``http://host:19530``) or a ``MilvusTarget``.  Give ``checkpoint`` (a path) or an already
    loaded ``model`` with its ``info`` (``CheckpointInfo``).  ``config`` picks the index type for a
    new index; for an existing one it must be omitted or of the same type.  An unfinished build is
    resumed; a finished index only changes with ``add`` (new items) and/or ``update`` (stored items
    re-embedded; an unknown id is an error); an id deleted earlier (``delete``, the service's
    DELETE) is not added again unless ``include_deleted``.  ``on_error``: ``stop`` at an unreadable image (it is
    named), or ``skip`` it and list it in ``skipped.jsonl``.  ``root``: the catalog root image paths
    are stored relative to (a new index; default the source's folder).  ``work``: the work folder
    of a Milvus build.  ``distributed``: an ``engine.distributed.DistributedContext`` (torchrun):
    every rank embeds its share, rank 0 plans and commits.  ``on_shard(rows_done, rows_total)`` is
    called after each shard is safely on disk.
    """
    started = time.perf_counter()
    if on_error not in ON_ERROR:
        raise InvalidValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    ctx = distributed or single_process()
    if model is None or info is None:
        model, info = _load(checkpoint, device if ctx.world_size == 1 else ctx.device)
    meta = images.metadata_types if images is not None else {}
    catalog_root = root if root is not None else (images.root if images is not None else None)

    plan_error = None
    writer: CatalogWriter | None = None
    work_folder, work = work, None  # ``work`` names the folder; ``work`` becomes its Work once opened
    counts = {"there": 0, "added": 0, "updated": 0, "resumed": 0, "gone": 0}
    if ctx.is_main:
        try:
            dim = int(model.embedding_dim)
            writer, work = open_for_build(out, info, dim, config, meta, catalog_root, add or update, work_folder)
            counts = _plan(writer, work, images, add=add, update=update, batch_size=batch_size, shard_size=shard_size,
                           include_deleted=include_deleted)
        except BaseException as exc:  # every rank must hear that the plan failed, not wait for it
            plan_error = exc
    try:
        work = _work_of_every_rank(work, plan_error, ctx)
        embedded, embed_seconds, failure = 0, 0.0, None
        try:
            if work.unfinished:
                embedded, embed_seconds = _embed(work, model, info, ctx, workers, device, progress, on_shard, on_error)
        except Exception as exc:  # the other ranks must not wait for this one at the commit
            failure = exc
        if not all_ranks_ok(failure is None, ctx):
            raise failure or CatalogIndexError(
                "another process of this torchrun failed while embedding (its error is in its output); the shards "
                "written so far are kept: rerun the same command to continue"
            )
        summary = BuildSummary(Path(str(out)), 0, counts["added"], counts["there"], counts["resumed"], embedded,
                               0.0, "", embed_seconds, counts["updated"], deleted_skipped=counts["gone"])
        _store(out, writer, work, ctx, summary)
    finally:
        if writer is not None:
            writer.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _load(checkpoint, device: str):
    """``(model, CheckpointInfo)`` of the checkpoint a build embeds with."""
    if checkpoint is None:
        raise ValueError("build_index needs a checkpoint path or a loaded model with its CheckpointInfo")
    from agman.engine.checkpoint import load_model

    return load_model(checkpoint, device=device)


def _work_of_every_rank(work: Work | None, plan_error: BaseException | None, ctx) -> Work:
    """Rank 0's work folder on every rank: rank 0 tells the others whether it planned and where the
    folder is; a failed plan is raised on every rank."""
    if ctx.enabled:
        folder = broadcast_text("" if plan_error is not None or work is None else str(work.root), ctx)
        if plan_error is not None:
            raise plan_error
        if not folder:
            raise CatalogIndexError("rank 0 could not plan the build (its error is in its output)")
        return work or Work(Path(folder))
    if plan_error is not None:
        raise plan_error
    return work


def _store(out, writer: CatalogWriter | None, work: Work, ctx, summary: BuildSummary) -> None:
    """Every rank: the embedded shards into the index — upserted by every rank where the backend
    takes parallel writes (rank 0 then only commits the description), else committed by rank 0;
    ``summary`` gets the index's count, type and location."""
    failure = None
    parallel = ctx.enabled and work.unfinished and parallel_writes(out)
    if parallel:
        _write_in_parallel(out, writer, work, ctx)
    if ctx.is_main:
        try:
            if work.unfinished:
                summary.unreadable = _commit(writer, work, written=parallel)
            summary.count = writer.searchable()
            summary.index_type = writer.info.config.kind
            summary.location = writer.location
        except Exception as exc:
            failure = exc
    if not all_ranks_ok(failure is None, ctx):
        raise failure or CatalogIndexError("rank 0 could not commit the index (its error is in its output)")


def _plan(writer: CatalogWriter, work: Work, images: ImageSet | None, *, add, update, batch_size, shard_size,
          include_deleted=False) -> dict:
    """Rank 0: extend the work folder's plan with what ``images`` asks for."""
    counts = {"there": 0, "added": 0, "updated": 0, "resumed": 0, "gone": 0}
    planned, replaces = work.read_plan() if work.unfinished else ([], [])
    prog = Progress.read(work.progress_path) if work.unfinished else Progress(0, batch_size, 0)
    if prog.first_row is not None:  # the commit began: finish it (what this call commits) before planning more
        counts["added"] = sum(r is None for r in replaces)
        counts["updated"] = len(replaces) - counts["added"]
        return counts
    counts["resumed"] = sum(s.count for s in work.all_shards())
    if images is not None:
        live, stored_paths = writer.known(images.ids, images.paths)
        removed = frozenset() if include_deleted else frozenset(writer.info.removed)
        new, rows_replaced, there, counts["gone"] = plan_items(live, stored_paths, images, add=add or not update,
                                                               update=update, removed=removed)
        planned_ids = {it.id for it in planned}
        fresh = [(it, r) for it, r in zip(new, rows_replaced) if it.id not in planned_ids]
        counts["there"] = there
        if fresh:
            planned += [it for it, _ in fresh]
            replaces += [r for _, r in fresh]
            log.info("planned %d items (%d already indexed, %d planned by an unfinished run)", len(fresh), there,
                     len(new) - len(fresh))
    # what this call commits: the whole plan, an unfinished run's part included
    counts["added"] = sum(r is None for r in replaces)
    counts["updated"] = len(replaces) - counts["added"]
    if not planned:
        return counts
    prog.planned = len(planned)
    b = prog.batch_size
    prog.shard_rows = prog.shard_rows or max(b, (int(shard_size) // b) * b)  # whole batches: resumes align
    work.write_plan(planned, replaces, prog)
    return counts


def _embed(work: Work, model, info, ctx, workers, device, progress, on_shard, on_error) -> tuple[int, float]:
    """Every rank: embed this rank's share of the batches no shard holds yet."""
    started = time.perf_counter()
    prog = Progress.read(work.progress_path)
    if prog.first_row is not None:
        return 0, 0.0
    items, _ = work.read_plan()
    b = prog.batch_size
    covered = np.zeros(prog.planned, dtype=bool)
    for s in work.all_shards():
        covered[s.start : s.start + s.count] = True
    n_batches = -(-prog.planned // b)
    todo = [i for i in range(n_batches) if not covered[i * b : (i + 1) * b].all()]
    runs = batch_runs(todo, ctx.world_size, ctx.rank)
    done = int(covered.sum())
    writer = ShardWriter(work, ctx.rank, prog.shard_rows, prog.planned, done, on_shard)
    embedder = Embedder(info.path, info.input_size, info.crop_ratio, model=model, info=info)
    expected = (len(info.attributes), int(model.embedding_dim))
    paths = [it.path for it in items]
    for first, end in runs:
        lo, hi = first * b, min(prog.planned, end * b)
        writer.flush()
        writer.start(lo)
        failures: dict[int, str] | None = {} if on_error == "skip" else None
        for pos, emb in embedder.embed_files(
            paths[:hi], batch_size=b, start=lo, workers=workers, progress=progress and ctx.is_main,
            failures=failures, device=ctx.device if ctx.enabled else device,
        ):
            if emb.shape[1:] != expected:
                raise CatalogIndexError(f"model returned embeddings {emb.shape[1:]}, expected {expected}")
            finite = np.isfinite(emb).reshape(len(emb), -1).all(axis=1)
            if not finite.all():
                bad = pos + int(np.flatnonzero(~finite)[0])
                raise CatalogIndexError(
                    f"the model's embedding of {items[bad].path} (plan position {bad}) is not finite (NaN or "
                    "infinity): the checkpoint's weights are damaged"
                )
            failed = {}
            if failures:
                failed = {i: failures.pop(i) for i in list(failures) if pos <= i < pos + len(emb)}
            writer.add(emb, failed)
        writer.flush()
    return writer.written, time.perf_counter() - started


def _reserve(writer: CatalogWriter, work: Work) -> int:
    """Rank 0: the first row of the plan's rows, taken from the store once and kept in progress.json."""
    prog = Progress.read(work.progress_path)
    if prog.first_row is None:
        prog.first_row = writer.reserve(prog.planned)
        prog.write(work.progress_path)
    return prog.first_row


def _write_in_parallel(out, writer, work: Work, ctx) -> None:
    """Every rank: upsert the shards of every ``world``-th rank file (its own in a run of the same
    size) into the Milvus server as rows ``first_row + position``, recording each shard written
    (``shards/written-NNN.json``) so a rerun, on any number of ranks, writes only the rest."""
    failure, first_row = None, ""
    if ctx.is_main:
        try:
            first_row = str(_reserve(writer, work))
        except Exception as exc:
            failure = exc
    first_row = broadcast_text(first_row, ctx)
    if first_row:
        try:
            items, _ = work.read_plan()
            store = open_writer(out)
            try:
                rank_files = sorted(work.shards.glob("rank-*.json"))
                for path in rank_files[ctx.rank :: ctx.world_size]:
                    _write_rank_shards(store, work, int(path.stem.split("-")[1]), items, int(first_row))
            finally:
                store.close()
        except Exception as exc:
            failure = exc
    if not all_ranks_ok(failure is None and bool(first_row), ctx):
        raise failure or CatalogIndexError(
            "another process of this torchrun failed while writing to Milvus (its error is in its output); the "
            "shards written so far are recorded: rerun the same command to continue"
        )


def _write_rank_shards(store, work: Work, rank: int, items: list[Item], first_row: int) -> None:
    record = work.shards / f"written-{rank:03d}.json"
    done = set(json.loads(record.read_text(encoding="utf-8"))) if record.is_file() else set()
    for shard in work.shards_of(rank):
        if shard.file in done:
            continue
        block = np.load(work.shards / shard.file, mmap_mode="r")
        store.write_block(items, shard.start, block, [int(p) for p in shard.failed], first_row)
        done.add(shard.file)
        atomic_write_text(record, json.dumps(sorted(done)))


def _commit(writer: CatalogWriter, work: Work, written: bool = False) -> int:
    """Rank 0: append every shard to the store in plan order (``written``: the ranks upserted them
    already — only finish the commit); returns how many images were unreadable."""
    prog = Progress.read(work.progress_path)
    items, replaces = work.read_plan()
    shards = work.all_shards()
    covered = np.zeros(prog.planned, dtype=bool)
    for s in shards:
        covered[s.start : s.start + s.count] = True
    if not covered.all():
        first = int(np.flatnonzero(~covered)[0])
        raise CatalogIndexError(
            f"{work.shards}: no shard holds plan position {first} ({items[first].path}): "
            "rerun `agman index` to embed it"
        )
    skipped = {int(p): reason for s in shards for p, reason in s.failed.items()}
    prog.first_row = _reserve(writer, work)

    def blocks():
        end = 0  # shards of several runs may overlap where a rank re-embedded a batch: take each position once
        for s in shards:
            if s.start + s.count <= end:
                continue
            block = np.load(work.shards / s.file, mmap_mode="r")
            yield block[max(0, end - s.start) : s.count]
            end = s.start + s.count

    if written:
        writer.finish(items, replaces, prog.first_row)
    else:
        commit_reindexed(writer, items, blocks, replaces, sorted(skipped), prog.first_row)
    if skipped:
        _record_skipped(writer, work, items, skipped)
    work.clear()
    return len(skipped)


def _record_skipped(writer, work: Work, items: list[Item], skipped: dict[int, str]) -> None:
    """``skipped.jsonl`` (in the index folder, or the Milvus work folder): the images of this run that
    could not be read, with the reasons; a later ``--add`` of the same source retries them."""
    path = work.root / "skipped.jsonl"
    lines = [
        json.dumps({"id": items[p].id, "path": items[p].path, "reason": reason}, ensure_ascii=False)
        for p, reason in sorted(skipped.items())
    ]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    log.warning("%d images could not be read and were skipped: see %s", len(skipped), path)

