"""The FAISS-files backend, write side: committing embedded items to an index folder, deleting
items, and the folder lock that keeps two writers apart.

Every write ends with one atomic rewrite of ``index.json`` — the commit point.  Rows past its
``count`` that a crashed write left in ``items.jsonl`` or a vector file are dropped by the next
write; deletions are recorded as ``deleted`` rows in ``index.json`` (the files keep the rows, so
no FAISS index has to remove anything); an updated item is a fresh row, its old row deleted.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from agman.retrieval.backends.faiss.check import map_vectors, record_files
from agman.retrieval.backends.faiss.index import (
    factory_string,
    fill_faiss_index,
    new_faiss_index,
    read_faiss,
    write_faiss,
)
from agman.retrieval.backends.faiss.layout import IndexLayout
from agman.retrieval.info import CatalogIndexError, FaissFile, IndexBusyError, IndexInfo, now
from agman.retrieval.items import Item, read_items
from agman.retrieval.store import Blocks, Capabilities, Rows, deletion, readded


class IndexWriteError(CatalogIndexError):
    """A file of the index folder could not be written (disk full, quota, I/O error): nothing was
    committed, the rerun of the same command finishes the write."""


@contextlib.contextmanager
def writing(path: Path):
    """Turn an ``OSError`` while writing ``path`` into an :class:`IndexWriteError` naming it."""
    try:
        yield
    except OSError as exc:
        raise IndexWriteError(
            f"could not write {path}: {exc.strerror or exc}; nothing was committed (index.json is unchanged): "
            "make room and rerun the same command to finish"
        ) from None


def lock_folder(root: Path):
    """Take the index folder's write lock (``.lock``, released when the returned file is closed);
    another writer is refused at once."""
    root.mkdir(parents=True, exist_ok=True)
    f = open(root / ".lock", "a+b")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise IndexBusyError(
            f"another process is writing to index {root} (an `agman index` run, or a service deleting items): "
            "wait for it to finish"
        ) from None
    return f


class FaissWriter:
    """Writes to the index folder ``layout``, holding its write lock until :meth:`close`.  ``info``:
    its description (read now when None, after the lock is taken; kept up to date here)."""

    capabilities = Capabilities()

    def __init__(self, layout: IndexLayout, info: IndexInfo | None = None):
        self._lock = lock_folder(layout.root)
        self.layout = layout
        try:
            self.info = IndexInfo.read(layout.info) if info is None else info
        except BaseException:
            self.close()
            raise
        self.location = str(layout.root)

    def close(self) -> None:
        self._lock.close()

    def searchable(self) -> int:
        return self.info.searchable

    def known(self, ids: Iterable[str], paths: Iterable[str]) -> tuple[dict[str, tuple[int, Item]], set[str]]:
        """The searchable items among ``ids`` (``{id: (row, item)}``), and which of ``paths``
        (normalised absolute) are the images of searchable items."""
        deleted = set(self.info.deleted)
        live = {it.id: (row, it) for row, it in enumerate(self.stored_items()) if row not in deleted}
        stored_paths = {os.path.normpath(it.path) for _, it in live.values()}
        return {i: live[i] for i in ids if i in live}, {p for p in paths if os.path.normpath(p) in stored_paths}

    def stored_items(self) -> list[Item]:
        """Every written row's item (deleted ones included), paths resolved against the root."""
        return read_items(self.layout.items, limit=self.info.count, root=self.info.root, deleted=set(self.info.deleted))

    def live_ids(self, ids: Iterable[str]) -> dict[str, int]:
        return {i: row for i, (row, _) in self.known(ids, ())[0].items()}

    def reserve(self, n: int) -> int:
        """The first row ``n`` new items will get (rows are positions: nothing to record)."""
        return self.info.count

    def commit(self, items: Sequence[Item], blocks: Blocks, replaces: Rows, skipped: Sequence[int], first_row: int):
        """Append ``items`` (rows ``first_row ..``) and their embeddings, delete the rows they
        replace and the ``skipped`` ones (unreadable images: placeholders), then commit ``index.json``."""
        info = self.info
        if first_row != info.count:
            raise CatalogIndexError(f"{self.layout.info} counts {info.count} rows; the build planned row {first_row}")
        total = info.count + len(items)
        old_count, old_deleted, old_files, old_faiss = info.count, list(info.deleted), info.files, dict(info.faiss)
        old_removed = list(info.removed)
        try:
            with writing(self.layout.items):
                _append_items(self.layout.items, info.count, items, info.root)
            append_rows(self.layout, info, total, blocks)
            gone = [r for r in replaces if r is not None] + [first_row + i for i in skipped]
            info.count = total
            info.deleted = sorted(set(info.deleted) | set(gone))
            info.removed = readded(info.removed, items)
            record_files(self.layout, info)
            self._write_info()
        except BaseException:  # nothing committed: this writer's info says what index.json says
            info.count, info.deleted, info.files, info.faiss = old_count, old_deleted, old_files, old_faiss
            info.removed = old_removed
            raise

    def delete(self, ids: Sequence[str]) -> int:
        live = deletion(self, ids, f"index {self.layout.root}")
        self.info.deleted = sorted(set(self.info.deleted) | set(live.values()))
        self._write_info()
        return len(live)

    def record_files(self) -> None:
        """Record the sizes and hashes of a folder an older agman wrote without them."""
        record_files(self.layout, self.info)
        self._write_info()

    def _write_info(self) -> None:
        self.info.updated = now()
        with writing(self.layout.info):
            self.info.write(self.layout.info)


def _append_items(path: Path, keep: int, items: Sequence[Item], root: str | None) -> None:
    """Keep the first ``keep`` lines of ``items.jsonl`` (drop what a crashed write left after them)
    and append ``items``, synced to disk; ``index.json`` counts them afterwards."""
    offset = 0
    if path.is_file():
        with open(path, "rb") as f:
            for _, line in zip(range(keep), f):
                offset += len(line)
    with open(path, "ab") as f:
        f.truncate(offset)
    with open(path, "ab") as f:
        f.writelines((item.to_json(root) + "\n").encode() for item in items)
        f.flush()
        os.fsync(f.fileno())


def append_rows(layout: IndexLayout, info: IndexInfo, total: int, blocks: Blocks) -> None:
    """Append rows ``info.count .. total`` to every attribute's vector file (and, for approximate
    types, FAISS index).

    ``blocks()`` yields their embeddings ``[n, A, D]`` in row order (it is called once per
    attribute).  Rows a crashed earlier call appended past ``info.count`` are dropped first.  HNSW
    indexes grow in place; IVF indexes grow in place until the catalog has doubled since they were
    trained, then are retrained.  Exact (``flat``) indexes are their vector files.  Updates
    ``info.faiss``; the caller commits ``info``.
    """
    old = info.count
    d = info.dim
    config = info.config
    for a in range(len(info.attributes)):
        vpath = layout.vectors(a)
        with writing(vpath):
            vpath.parent.mkdir(parents=True, exist_ok=True)
            with open(vpath, "ab") as f:
                f.truncate(old * d * 4)
            with open(vpath, "ab") as f:
                for block in blocks():
                    f.write(np.ascontiguousarray(block[:, a, :], dtype=np.float32).tobytes())
                f.flush()
                os.fsync(f.fileno())
        if config.exact:  # the vector file is the index (an older agman also wrote a FAISS copy)
            info.faiss.pop(a, None)
            layout.faiss(a).unlink(missing_ok=True)
            continue
        vectors = map_vectors(vpath, total, d)
        fpath = layout.faiss(a)
        made = info.faiss.get(a)
        index = None
        if fpath.is_file() and old > 0:
            index = read_faiss(fpath)
            trained_on = made.trained_on if made is not None else old
            retrain = config.kind != "hnsw" and total > 2 * trained_on
            if index.ntotal != old or retrain:
                index = None
        if index is None:
            index = new_faiss_index(config, d, total)
            fill_faiss_index(index, vectors)
            made = FaissFile(factory_string(config, d, total)[0], total)
        else:
            fill_faiss_index(index, vectors[old:])
        with writing(fpath):
            write_faiss(fpath, index)
        info.faiss[a] = made or FaissFile("", old)
        del vectors
