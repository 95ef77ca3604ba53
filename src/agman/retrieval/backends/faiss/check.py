"""The FAISS index folder's files and their integrity: which files an index reads, what is wrong with
them (sizes always, the hashes ``index.json`` records sampled or in full:
:mod:`agman.retrieval.backends.faiss.integrity`), recording their hashes when the folder is written, and watching them under a running server.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agman.retrieval.backends.faiss.integrity import (
    IndexDamagedError,
    check_file,
    check_size,
    record_file,
    stat_key,
)
from agman.retrieval.backends.faiss.layout import IndexLayout
from agman.retrieval.info import CatalogIndexError, IndexInfo


def map_vectors(path: Path, count: int, dim: int) -> np.ndarray:
    """The first ``count`` rows ``[count, D]`` of a vector file, memory-mapped read-only (the file
    must hold them)."""
    if count == 0:
        return np.zeros((0, dim), np.float32)
    need = count * dim * 4
    size = os.path.getsize(path) if path.is_file() else -1
    if size < need:
        found = "missing" if size < 0 else f"{size} bytes"
        raise IndexDamagedError(f"{path}: {found}, but {count} items x {dim} dimensions x 4 bytes need {need}")
    return np.memmap(path, dtype=np.float32, mode="r", shape=(count, dim))


def read_vectors(path: Path, count: int, dim: int) -> np.ndarray:
    """The first ``count`` rows ``[count, D]`` of a vector file, read into memory: unlike a
    memory map, nothing that happens to the file later (truncated, overwritten in place) can reach
    the copy or crash the process.  A file shorter than the rows is an :class:`IndexDamagedError`."""
    out = np.empty((count, dim), np.float32)
    need = count * dim * 4
    try:
        with open(path, "rb") as f:
            got = f.readinto(memoryview(out).cast("B")) if need else 0
            while got and got < need:  # readinto may stop short on some files: read on
                more = f.readinto(memoryview(out).cast("B")[got:])
                if not more:
                    break
                got += more
    except FileNotFoundError:
        got = -1
    if got < need:
        found = "missing" if got < 0 else f"{got} bytes"
        raise IndexDamagedError(f"{path}: {found}, but {count} items x {dim} dimensions x 4 bytes need {need}")
    return out


# --------------------------------------------------------------------------- integrity
def folder_files(layout: IndexLayout, info: IndexInfo) -> list[tuple[Path, bool]]:
    """``(path, grows)`` of every file an index of ``info`` reads: items.jsonl and the vector files
    only grow (checked over their recorded first bytes), FAISS files are rewritten whole."""
    files = [(layout.items, True)]
    for a in range(len(info.attributes)):
        files.append((layout.vectors(a), True))
        if not info.config.exact:  # a flat index is its vector files
            files.append((layout.faiss(a), False))
    return files


def folder_problems(layout: IndexLayout, info: IndexInfo, level: str, name: Callable[[Path], str] = str) -> list[str]:
    """What is wrong with the files of the index ``info`` describes (empty when nothing), checking
    the recorded hashes at ``level``; the item count and ids are checked by :func:`read_items`.  A
    folder without recorded hashes (older agman) gets the size checks only.  ``name`` shows a path."""
    if info.count == 0:
        return []
    problems = []
    vector_bytes = info.count * info.dim * 4
    for path, grows in folder_files(layout, info):
        is_vectors = path.parent.name == "vectors"
        if info.files:
            record = info.files.get(layout.name(path))
            if record is None:
                problems.append(f"{name(path)}: index.json records no size or hash for it")
                continue
            if is_vectors and record.size != vector_bytes:
                problems.append(
                    f"{name(layout.info)} records {record.size} bytes for {layout.name(path)}, but count x dim x 4 = "
                    f"{info.count} x {info.dim} x 4 = {vector_bytes} (count or dim was edited)"
                )
                continue
            wrong = check_file(path, record, level, grows=grows)
        else:
            wrong = _size_needed(path, info)
        if wrong:
            problems.append(f"{name(path)}: {wrong}")
    return problems


def _size_needed(path: Path, info: IndexInfo) -> str | None:
    """The size check of a folder without recorded hashes: vector files hold count x dim floats,
    FAISS files are not empty."""
    if path.parent.name == "vectors":
        need = info.count * info.dim * 4
        return check_size(path, need, grows=True, expected=f"{info.count} items x {info.dim} dimensions x 4 bytes =")
    return check_size(path, 1, grows=True, expected="at least")


def damage_message(layout: IndexLayout, problems: list[str]) -> str:
    if layout.progress.is_file():
        hint = "an `agman index` run on this folder was interrupted: rerun it to finish the index"
    else:
        hint = "rebuild it (`agman index --out NEW_FOLDER ...`)"
    return f"index {layout.root} is damaged: {'; '.join(problems)}; {hint}"


@dataclass
class FolderHealth:
    """What ``FaissStore.health`` found: ``damage`` (files a search reads that no longer match what
    is served or recorded: searches answer 503), ``degraded`` (the folder on disk is damaged or half
    written, but the store answers from its in-memory copy of the version it loaded, which nothing
    on disk can reach) and ``notes`` (an update on disk the server does not serve yet, a build in
    progress)."""

    damage: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damage


class FolderWatch:
    """Notices the files of an open store changing under it and re-checks them.

    Every :meth:`check` stats the folder's files (size, mtime, inode); while nothing changed it
    answers the last verdict.  When something changed: the vector files the store read must still
    hold the served rows' bytes (their recorded hash, in full; sizes only for a folder without
    hashes), FAISS files not yet loaded likewise, and the folder as it now is on disk must verify
    against its own ``index.json`` (sampled hashes) unless a build is running; an index grown on
    disk is a note, not damage.  What is wrong is damage only where a search still reads the file
    (:meth:`FaissStore.files_read_per_search`: memory-mapped vectors, an approximate type's rows,
    anything not loaded yet) or, for the folder as a whole, where a search reads any file.  A store
    that reads none (a loaded ``flat`` index: items and vectors in memory) is only ``degraded`` by
    a damaged or half-written folder, and a complete new version written over it (``cp -r``) is a
    note until the reload.  Paths are shown relative to the folder.
    """

    def __init__(self, store):
        self.store = store
        layout = store.layout
        self.paths = [layout.info, layout.progress] + [p for p, _ in folder_files(layout, store.info)]
        opened = store._opened  # the files as the store read them: any change since is rechecked
        self.seen = {p: opened[p] if p in opened else stat_key(p) for p in self.paths}
        self.verdict = FolderHealth()
        self._lock = threading.Lock()

    def check(self) -> FolderHealth:
        now = {p: stat_key(p) for p in self.paths}
        if now == self.seen:
            return self.verdict
        with self._lock:
            changed = [p for p in self.paths if now[p] != self.seen.get(p)]
            self.verdict = self._recheck(changed)
            self.seen = now
        return self.verdict

    def _recheck(self, changed: list[Path]) -> FolderHealth:
        store, layout, info = self.store, self.store.layout, self.store.info
        health = FolderHealth()
        served = {layout.vectors(a) for a in range(len(info.attributes))}
        if not info.config.exact:
            served |= {layout.faiss(a) for a in range(len(info.attributes)) if a not in store._faiss}
        reads = store.files_read_per_search()
        for path in changed:
            if path not in served or not info.count:
                continue
            record = info.files.get(layout.name(path))
            if record is None:  # no hashes recorded: the size the served rows need
                wrong = _size_needed(path, info)
            else:
                wrong = check_file(path, record, "full", grows=path.parent.name == "vectors")
            if wrong and path in reads:
                health.damage.append(f"{layout.name(path)}: {wrong} (the server reads this file at each search)")
            elif wrong:
                health.degraded.append(f"{layout.name(path)}: {wrong} (the server answers from its in-memory copy)")
        if layout.progress.is_file():
            health.notes.append("an `agman index` run is writing to the folder (progress.json)")
            return health
        try:
            on_disk = IndexInfo.read(layout.info)
            problems = folder_problems(layout, on_disk, "sample", name=layout.name)
        except CatalogIndexError as exc:
            problems = [str(exc).replace(str(layout.root), "<index>")]
        if not problems:  # a complete new version on disk: an in-memory copy still serves the old one
            health.degraded = []
        (health.damage if reads else health.degraded).extend(f"on disk: {p}" for p in problems)
        if health.degraded:
            health.notes.append(
                "searches answer from the server's in-memory copy of the version it loaded (index.serving); it "
                "takes up the folder once a complete, self-consistent version is on disk"
            )
        if not problems and (on_disk.count, on_disk.updated) != (info.count, info.updated):
            health.notes.append(
                f"the index on disk was updated ({on_disk.searchable} items): the server takes it up at its next "
                "reload check"
            )
        return health


def record_files(layout: IndexLayout, info: IndexInfo) -> None:
    """Record in ``info.files`` the sizes and hashes of the folder's files as ``info`` counts them
    (the caller writes ``info``)."""
    files = {}
    for path, _ in folder_files(layout, info) if info.count else []:
        if path == layout.items:
            size = _prefix_bytes(path, info.count)
        elif path.parent.name == "vectors":
            size = info.count * info.dim * 4
        else:
            size = None
        files[layout.name(path)] = record_file(path, size)
    info.files = files


def _prefix_bytes(path: Path, lines: int) -> int:
    """Bytes of the first ``lines`` lines of ``path``."""
    size = 0
    with open(path, "rb") as f:
        for _, line in zip(range(lines), f):
            size += len(line)
    return size
