"""The FAISS-files backend: an index folder of plain files, read for search (:class:`FaissStore`,
the first :class:`~agman.retrieval.store.VectorStore`) and grown by the builder (:func:`append_rows`).

A folder holds::

    index.json            IndexInfo: checkpoint, attributes, D, index type, count (searchable rows),
                          sizes and hashes of the files below
    items.jsonl           one Item per line, in row order
    vectors/attr-NN.f32   exact float32 embeddings [count, D] of attribute NN (memory-mapped)
    faiss/attr-NN.faiss   the FAISS index of attribute NN (FAISS row i = row i of items.jsonl)
    progress.json, shards/   only while a build is unfinished (see agman.retrieval.build)

Only the ``count`` committed rows are visible: a folder whose build is unfinished answers for
the items of its last completed run.  Opening checks the folder (:func:`folder_problems`: sizes
always, the recorded hashes sampled or in full) and refuses a damaged one naming the file; a
running server asks :meth:`FaissStore.health` whether the files changed under it.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agman.retrieval.faiss_index import (
    factory_string,
    fill_faiss_index,
    new_faiss_index,
    read_faiss,
    search_params,
    similarities,
    write_faiss,
)
from agman.retrieval.info import CatalogIndexError, FaissFile, IndexInfo, IndexLayout
from agman.retrieval.integrity import LEVELS, IndexDamagedError, check_file, check_size, record_file, stat_key
from agman.retrieval.items import Item, read_items

log = logging.getLogger(__name__)


class FaissStore:
    """An index folder opened for search: items in memory, exact vectors memory-mapped, FAISS
    indexes read on first use (all at once with ``load``).  ``nprobe`` / ``ef_search`` / ``rerank``
    override the settings the index was built with.  ``verify`` is how the recorded file hashes are
    checked at open (``size``, ``sample`` or ``full``: see :mod:`agman.retrieval.integrity`); a
    damaged folder is an :class:`IndexDamagedError` naming the file.  Safe to share between threads."""

    def __init__(
        self,
        root: str | Path,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        rerank: int | None = None,
        verify: str = "sample",
        load: bool = False,
    ):
        if verify not in LEVELS:
            raise ValueError(f"verify must be one of {', '.join(LEVELS)}, got {verify!r}")
        self.layout = IndexLayout(root)
        self.root = self.layout.root
        self.location = str(self.root)
        self.info = IndexInfo.read(self.layout.info)
        self.config = self.info.config.tuned(nprobe=nprobe, ef_search=ef_search, rerank=rerank)
        self.count = self.info.count
        self.items = read_items(self.layout.items, limit=self.count)
        if len(self.items) != self.count:
            raise CatalogIndexError(f"{self.layout.items} has {len(self.items)} items; index.json counts {self.count}")
        self._row_of_id = {it.id: i for i, it in enumerate(self.items)}
        self._row_of_path = {os.path.normpath(it.path): i for i, it in enumerate(self.items)}
        self.unfinished = self.layout.progress.is_file()
        self.verified = verify
        problems = folder_problems(self.layout, self.info, verify)
        if problems:
            raise IndexDamagedError(damage_message(self.layout, problems))
        if self.count and not self.info.files:
            log.warning(
                "%s records no file hashes (written by an older agman): only file sizes are checked; "
                "`agman index --add` on this folder records them", self.layout.info,
            )
        self._vectors: dict[int, np.ndarray] = {}
        self._faiss: dict[int, object] = {}
        self._labelled: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._watch: FolderWatch | None = None
        if load:
            for a in range(len(self.info.attributes)):
                self.faiss_index(a)

    @property
    def kind(self) -> str:
        return self.config.kind

    def __len__(self) -> int:
        return self.count

    def rows(self) -> np.ndarray:
        return np.arange(self.count, dtype=np.int64)

    # ------------------------------------------------------------------ items
    def item(self, row: int) -> Item:
        return self.items[row]

    def row_of_id(self, item_id: str) -> int | None:
        return self._row_of_id.get(item_id)

    def row_of_path(self, path: str) -> int | None:
        return self._row_of_path.get(os.path.normpath(path))

    def labelled_rows(self, attribute: str) -> np.ndarray:
        with self._lock:
            if attribute not in self._labelled:
                rows = [i for i, it in enumerate(self.items) if attribute in it.labels]
                self._labelled[attribute] = np.asarray(rows, dtype=np.int64)
            return self._labelled[attribute]

    # ------------------------------------------------------------------ vectors
    def vectors(self, attribute: int, rows: np.ndarray | None = None) -> np.ndarray:
        with self._lock:
            if attribute not in self._vectors:
                self._vectors[attribute] = _map_vectors(self.layout.vectors(attribute), self.count, self.info.dim)
            every = self._vectors[attribute]
        return every if rows is None else every[rows]

    def shortlist(
        self, attribute: int, query: np.ndarray, n: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        index = self.faiss_index(attribute)
        params = search_params(index, self.config, n, allowed)
        distances, rows = index.search(np.asarray(query, dtype=np.float32)[None], n, params=params)
        listed = rows[0] >= 0
        return rows[0][listed].astype(np.int64), similarities(index, distances[0][listed])

    def faiss_index(self, attribute: int):
        """Attribute ``attribute``'s FAISS index (read once, then shared; FAISS searches are thread-safe)."""
        with self._lock:
            if attribute not in self._faiss:
                path = self.layout.faiss(attribute)
                try:
                    index = read_faiss(path)
                except RuntimeError as exc:  # FAISS's I/O errors: missing, truncated, not an index
                    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
                    problem = f"{path}: not a readable FAISS index ({reason})"
                    raise IndexDamagedError(damage_message(self.layout, [problem])) from None
                if index.d != self.info.dim:
                    problem = f"{path} holds vectors of dimension {index.d}; index.json says dim {self.info.dim}"
                    raise IndexDamagedError(damage_message(self.layout, [problem]))
                if index.ntotal != self.count:
                    raise CatalogIndexError(
                        f"{path} holds {index.ntotal} vectors; index.json counts {self.count}: "
                        "rerun `agman index` on this folder to finish it"
                    )
                self._faiss[attribute] = index
            return self._faiss[attribute]

    def health(self) -> FolderHealth:
        """Whether the folder's files changed under this open store, and if so whether it is damaged
        (cheap while nothing changed: one ``stat`` per file; see :class:`FolderWatch`)."""
        with self._lock:
            if self._watch is None:
                self._watch = FolderWatch(self)
        return self._watch.check()

    def memory_bytes(self) -> dict[str, int]:
        """On-disk bytes per attribute: FAISS index and exact vectors (for the trade-off table)."""
        n = len(self.info.attributes)
        out = {"faiss": 0, "vectors": 0}
        for a in range(n):
            for kind, path in (("faiss", self.layout.faiss(a)), ("vectors", self.layout.vectors(a))):
                out[kind] += path.stat().st_size if path.is_file() else 0
        return {k: v // max(1, n) for k, v in out.items()}


def _map_vectors(path: Path, count: int, dim: int) -> np.ndarray:
    if count == 0:
        return np.zeros((0, dim), np.float32)
    need = count * dim * 4
    size = os.path.getsize(path) if path.is_file() else -1
    if size < need:
        found = "missing" if size < 0 else f"{size} bytes"
        raise IndexDamagedError(f"{path}: {found}, but {count} items x {dim} dimensions x 4 bytes need {need}")
    return np.memmap(path, dtype=np.float32, mode="r", shape=(count, dim))


# --------------------------------------------------------------------------- integrity
def folder_files(layout: IndexLayout, info: IndexInfo) -> list[tuple[Path, bool]]:
    """``(path, grows)`` of every file an index of ``info`` reads: items.jsonl and the vector files
    only grow (checked over their recorded first bytes), FAISS files are rewritten whole."""
    files = [(layout.items, True)]
    for a in range(len(info.attributes)):
        files += [(layout.vectors(a), True), (layout.faiss(a), False)]
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
    """What :meth:`FaissStore.health` found: ``damage`` (files that no longer match what is served or
    recorded) and ``notes`` (an update on disk the server does not serve yet, a build in progress)."""

    damage: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damage


class FolderWatch:
    """Notices the files of an open store changing under it and re-checks them.

    Every :meth:`check` stats the folder's files (size, mtime, inode); while nothing changed it
    answers the last verdict.  When something changed: the vector files the store reads
    (memory-mapped) must still hold the served rows' bytes (their recorded hash, in full; sizes only
    for a folder without hashes), FAISS files not yet loaded likewise, and the folder as it now is
    on disk must verify against its own ``index.json`` (sampled hashes) unless a build is running;
    an index grown on disk is a note, not damage.  Paths are shown relative to the folder.
    """

    def __init__(self, store: FaissStore):
        self.store = store
        layout = store.layout
        self.paths = [layout.info, layout.progress] + [p for p, _ in folder_files(layout, store.info)]
        self.seen = {p: stat_key(p) for p in self.paths}
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
        served |= {layout.faiss(a) for a in range(len(info.attributes)) if a not in store._faiss}
        for path in changed:
            if path not in served or not info.count:
                continue
            record = info.files.get(layout.name(path))
            if record is None:  # no hashes recorded: the size the served rows need
                wrong = _size_needed(path, info)
            else:
                wrong = check_file(path, record, "full", grows=path.parent.name == "vectors")
            if wrong:
                health.damage.append(f"{layout.name(path)}: {wrong} (the server reads this file)")
        if layout.progress.is_file():
            health.notes.append("an `agman index` run is writing to the folder (progress.json)")
            return health
        try:
            on_disk = IndexInfo.read(layout.info)
            problems = folder_problems(layout, on_disk, "sample", name=layout.name)
        except CatalogIndexError as exc:
            problems = [str(exc).replace(str(layout.root), "<index>")]
        health.damage += [f"on disk: {p}" for p in problems]
        if not problems and (on_disk.count, on_disk.updated) != (info.count, info.updated):
            health.notes.append(f"the index on disk was updated ({on_disk.count} items): restart to serve it")
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


# --------------------------------------------------------------------------- writing
def append_rows(layout: IndexLayout, info: IndexInfo, total: int, blocks: Callable[[], Iterable[np.ndarray]]) -> None:
    """Append rows ``info.count .. total`` to every attribute's vector file and FAISS index.

    ``blocks()`` yields their embeddings ``[n, A, D]`` in row order (it is called once per
    attribute).  Rows a crashed earlier call appended past ``info.count`` are dropped first.  Exact
    and HNSW indexes grow in place; IVF indexes grow in place until the catalog has doubled since
    they were trained, then are retrained.  Updates ``info.faiss``; the caller commits ``info``.
    """
    old = info.count
    d = info.dim
    config = info.config
    for a in range(len(info.attributes)):
        vpath = layout.vectors(a)
        vpath.parent.mkdir(parents=True, exist_ok=True)
        with open(vpath, "ab") as f:
            f.truncate(old * d * 4)
        with open(vpath, "ab") as f:
            for block in blocks():
                f.write(np.ascontiguousarray(block[:, a, :], dtype=np.float32).tobytes())
            f.flush()
            os.fsync(f.fileno())
        vectors = _map_vectors(vpath, total, d)

        fpath = layout.faiss(a)
        made = info.faiss.get(a)
        index = None
        if fpath.is_file() and old > 0:
            index = read_faiss(fpath)
            trained_on = made.trained_on if made is not None else old
            retrain = not config.exact and config.kind != "hnsw" and total > 2 * trained_on
            if index.ntotal != old or retrain:
                index = None
        if index is None:
            index = new_faiss_index(config, d, total)
            fill_faiss_index(index, vectors)
            made = FaissFile(factory_string(config, d, total)[0], total)
        else:
            fill_faiss_index(index, vectors[old:])
        write_faiss(fpath, index)
        info.faiss[a] = made or FaissFile("", old)
        del vectors
