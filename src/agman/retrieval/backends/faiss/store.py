"""The FAISS-files backend, read side: an index folder of plain files opened for search
(:class:`FaissStore`, the embedded default :class:`~agman.retrieval.store.VectorStore`).  The
builder grows it through :class:`agman.retrieval.backends.faiss.writer.FaissWriter`.

A folder holds::

    index.json            IndexInfo: checkpoint, attributes, metadata schema, catalog root, D, index
                          type, count (rows written), deleted rows, sizes and hashes of the files below
    items.jsonl           one Item per line, in row order (paths relative to the catalog root)
    vectors/attr-NN.f32   exact float32 embeddings [count, D] of attribute NN (read into memory)
    faiss/attr-NN.faiss   approximate types only: the FAISS index of attribute NN (FAISS row i = row i)
    skipped.jsonl         images `agman index --on-error skip` could not read, with the reasons
    progress.json, shards/   only while a build is unfinished (see agman.retrieval.build)

Only the ``count`` committed rows are visible, minus the deleted ones: a folder whose build is
unfinished answers for the items of its last completed run.  Opening checks the folder
(:func:`~agman.retrieval.backends.faiss.check.folder_problems`: sizes always, the recorded hashes sampled or
in full) and refuses a damaged one naming the file; a running server asks :meth:`FaissStore.health`
whether the files changed under it.  Exact (``flat``) search is a numpy
scan of the vectors — as fast as ``X @ q`` + ``argpartition`` (a FAISS ``IndexFlatIP`` was 2.2x
slower on one query and held a second copy of the vectors); approximate types shortlist with
their FAISS index.

Vector files are read, not memory-mapped: a ``flat`` index's into memory (all at open with
``load``, else each on first use), an approximate type's shortlisted rows with ``pread`` at each
search (a scan keeps a copy).  Under a memory map, a file truncated or overwritten in place
(``cp -r rebuilt/. served/``) kills the process with SIGBUS at the next read of a page past the
new end, which no check before the read can rule out.  A copy costs the vectors' bytes in RAM and
their read at open (``bench/vector_copy.py`` measures it against the memory map;
docs/retrieval.md); ``mmap=True`` keeps the memory map for a folder nobody rewrites in place.
The files are stat'ed before the items are read and after the vectors are, so a store never
holds a mix of two versions of a folder being rewritten (:class:`FolderChangedError`); an
approximate type's row reads need only its rows intact, so an append (``agman index --add``) does
not stop its searches before the reload.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from agman.retrieval.backends.faiss.check import (
    FolderHealth,
    FolderWatch,
    damage_message,
    folder_files,
    folder_problems,
    map_vectors,
    read_vectors,
)
from agman.retrieval.backends.faiss.index import read_faiss, search_params, similarities
from agman.retrieval.backends.faiss.integrity import (
    LEVELS,
    IndexDamagedError,
    check_file,
    stat_key,
)
from agman.retrieval.backends.faiss.layout import IndexLayout
from agman.retrieval.filters import Filter
from agman.retrieval.info import CatalogIndexError, IndexInfo
from agman.retrieval.items import Item, read_items
from agman.retrieval.ranking import exact_scores
from agman.retrieval.store import Capabilities, Selection

log = logging.getLogger(__name__)

GATHER_SHARE = 0.5  # below this share of selected rows, a scan copies them out; above, scores all and picks


def catalog_root(info: IndexInfo, override: str | Path | None) -> str | None:
    """The folder item paths resolve against: ``override`` (``--root``) or the one recorded."""
    if override is not None:
        root = Path(override).resolve()
        if not root.is_dir():
            raise CatalogIndexError(f"catalog root {override} is not a folder")
        return str(root)
    if info.root is not None and not Path(info.root).is_dir():
        log.warning("catalog root %s recorded by the index is not a folder here: pass --root", info.root)
    return info.root


class FolderChangedError(CatalogIndexError):
    """The index folder's files changed while a store was being opened or read (a folder being
    rewritten in place): open it again once the writer is done."""


class FaissStore:
    """An index folder opened for search: items in memory, exact vectors read into memory (or
    memory-mapped with ``mmap``) and FAISS indexes (approximate types) on first use, all at once
    with ``load``.  ``nprobe`` /
    ``ef_search`` / ``rerank`` override the settings the index was built with; ``catalog`` the
    catalog root image paths resolve against.  ``verify`` is how the recorded file hashes are
    checked at open (``size``, ``sample`` or ``full``: see :mod:`agman.retrieval.backends.faiss.integrity`); a
    damaged folder is an :class:`IndexDamagedError` naming the file.  Immutable once open (a changed
    folder is taken up by :meth:`reopened`); safe to share between threads."""

    in_memory = True
    capabilities = Capabilities(health=True)

    def __init__(
        self,
        root: str | Path,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        rerank: int | None = None,
        catalog: str | Path | None = None,
        verify: str = "sample",
        load: bool = False,
        mmap: bool = False,
    ):
        if verify not in LEVELS:
            raise ValueError(f"verify must be one of {', '.join(LEVELS)}, got {verify!r}")
        self.layout = IndexLayout(root)
        self.root = self.layout.root
        self.location = str(self.root)
        self._settings = {"nprobe": nprobe, "ef_search": ef_search, "rerank": rerank, "catalog": catalog,
                          "verify": verify, "load": load, "mmap": mmap}
        self.mmap = mmap
        self._stamp = _stamp(self.layout.info)
        info_key = stat_key(self.layout.info)
        self.info = IndexInfo.read(self.layout.info)
        self._opened = {**self._stats(), self.layout.info: info_key}  # compared after the vectors are read
        self.config = self.info.config.tuned(nprobe=nprobe, ef_search=ef_search, rerank=rerank)
        self.catalog_root = catalog_root(self.info, catalog)
        self.count = self.info.count
        self.deleted = np.asarray(self.info.deleted, dtype=np.int64)
        self.items = read_items(
            self.layout.items, limit=self.count, root=self.catalog_root, deleted=set(self.info.deleted)
        )
        if len(self.items) != self.count:
            raise CatalogIndexError(f"{self.layout.items} has {len(self.items)} items; index.json counts {self.count}")
        self.live = np.ones(self.count, dtype=bool)
        self.live[self.deleted] = False
        self.live_rows = np.flatnonzero(self.live).astype(np.int64)
        self._row_of_id = {self.items[r].id: int(r) for r in self.live_rows}
        self._row_of_path = {os.path.normpath(self.items[r].path): int(r) for r in self.live_rows}
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
        self._columns = None
        self._masks: dict = {}
        self._lock = threading.Lock()
        self._intact: dict[Path, tuple] = {}  # vector files grown since open, their known rows checked intact
        self._intact_lock = threading.Lock()
        self._watch: FolderWatch | None = None
        if load:
            for a in range(len(self.info.attributes)):
                if self.config.exact and not mmap:
                    self.vectors(a)
                if not self.config.exact:
                    self.faiss_index(a)

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def shortlist_limit(self) -> int:
        return max(1, self.count)

    def __len__(self) -> int:
        return len(self.live_rows)

    def rows(self, limit: int | None = None) -> np.ndarray:
        return self.live_rows if limit is None else self.live_rows[:limit]

    def count_selected(self, selection: Selection) -> int:
        return self.count if selection.count is None else selection.count

    def reopened(self) -> FaissStore | None:
        """This folder opened afresh when ``index.json`` changed since this store was opened (an
        ``agman index`` run committed rows or deletions), else None."""
        if _stamp(self.layout.info) == self._stamp:
            return None
        return FaissStore(self.root, **self._settings)

    # ------------------------------------------------------------------ items
    def item(self, row: int) -> Item:
        return self.items[row]

    def items_of(self, rows: Sequence[int]) -> list[Item]:
        return [self.items[int(r)] for r in rows]

    def row_of_id(self, item_id: str) -> int | None:
        return self._row_of_id.get(item_id)

    def row_of_path(self, path: str) -> int | None:
        return self._row_of_path.get(os.path.normpath(path))

    # ------------------------------------------------------------------ selecting
    def select(self, flt: Filter | None = None, exclude: Iterable[int] = ()) -> Selection:
        exclude = np.asarray(sorted({int(r) for r in exclude}), dtype=np.int64)
        exclude = exclude[(exclude >= 0) & (exclude < self.count)]
        if flt is None and not len(exclude) and not len(self.deleted):
            return Selection(self.count)
        mask = self.live.copy()
        if flt is not None:
            mask &= self._mask(flt.expr, lambda: flt.mask(self._catalog_columns(), self.count))
        mask[exclude] = False
        rows = np.flatnonzero(mask).astype(np.int64)
        return Selection(len(rows), rows)

    def _mask(self, key, make) -> np.ndarray:
        """A boolean mask over every row, computed once per key (a filter's expression) and kept."""
        with self._lock:
            mask = self._masks.get(key)
        if mask is None:
            mask = make()
            with self._lock:
                if len(self._masks) > 256:
                    self._masks.clear()
                self._masks[key] = mask
        return mask

    def _catalog_columns(self):
        from agman.retrieval.catalog import CatalogSchema

        with self._lock:
            if self._columns is None:
                self._columns = CatalogSchema.of(self.info).columns(self.items)
            return self._columns

    # ------------------------------------------------------------------ vectors
    def vectors(self, attribute: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Attribute ``attribute``'s stored vectors of ``rows`` (all rows when None).  An approximate
        type's rows (the shortlist it re-scores) are read from the file, unless every row has been
        read already (a scan); every other read keeps the whole file's copy."""
        if rows is not None and not self.config.exact and not self.mmap and attribute not in self._vectors:
            return self._read_rows(attribute, np.asarray(rows, dtype=np.int64))
        with self._lock:
            if attribute not in self._vectors:
                path = self.layout.vectors(attribute)
                if self.mmap:
                    self._vectors[attribute] = map_vectors(path, self.count, self.info.dim)
                else:
                    vectors = read_vectors(path, self.count, self.info.dim)
                    self._check_unchanged()
                    self._vectors[attribute] = vectors
            every = self._vectors[attribute]
        return every if rows is None else every[rows]

    def _read_rows(self, attribute: int, rows: np.ndarray) -> np.ndarray:
        """``rows`` of a vector file read with ``pread`` (no copy of the file kept: an approximate
        index is meant to need less memory than its vectors), from a file whose known rows are
        checked intact before the read (:meth:`_known_rows_intact`) and unchanged after it."""
        d = self.info.dim
        out = np.empty((len(rows), d), np.float32)
        path = self.layout.vectors(attribute)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.count):
            raise IndexError(f"rows outside 0..{self.count - 1}")
        for _ in range(3):  # a file written during the read (an append) is checked again and read again
            before = self._known_rows_intact(path)
            with open(path, "rb") as f:
                fd = f.fileno()
                for i, r in enumerate(rows):
                    data = os.pread(fd, 4 * d, int(r) * 4 * d)
                    if len(data) < 4 * d:
                        raise IndexDamagedError(f"{path}: truncated at row {int(r)} (the folder is being rewritten?)")
                    out[i] = np.frombuffer(data, np.float32)
            if stat_key(path) == before:
                return out
        raise FolderChangedError(f"index {self.root}: {self.layout.name(path)} kept changing while it was read: "
                                 "open it again")

    def _known_rows_intact(self, path: Path) -> tuple:
        """The stat key of vector file ``path`` once its first ``count`` rows are known to be the
        ones this store opened.  ``agman index --add`` appends to a vector file in place (same
        inode, the rows before it untouched), so a file that grew is checked, once per change,
        against the hash of those rows recorded at open (in full for a store opened with
        ``verify="full"``, else sampled); a replaced, shrunk or rewritten file raises, as does any
        change to a file without a recorded hash."""
        now, opened = stat_key(path), self._opened.get(path)
        if now is not None and (now == opened or now == self._intact.get(path)):
            return now
        with self._intact_lock:
            now = stat_key(path)
            if now is not None and now == self._intact.get(path):  # checked by another thread meanwhile
                return now
            name = self.layout.name(path)
            record = self.info.files.get(name)
            if now is None:
                raise IndexDamagedError(damage_message(self.layout, [f"{path}: missing"]))
            if now[0] < self.count * self.info.dim * 4:
                raise IndexDamagedError(damage_message(self.layout, [f"{path}: truncated: {now[0]} bytes"]))
            if opened is None or now[2:] != opened[2:]:
                wrong = "replaced by another file"
            elif record is None:
                wrong = "index.json records no hash to check its rows against"
            else:
                wrong = check_file(path, record, "full" if self.verified == "full" else "sample", grows=True)
                if wrong is None and stat_key(path) != now:
                    wrong = "written while it was checked"
            if wrong:
                raise FolderChangedError(
                    f"index {self.root}: {name} changed since the index was opened ({wrong}; the folder is "
                    "being rewritten?): open it again"
                )
            self._intact[path] = now
            return now

    def _stats(self) -> dict:
        return {p: stat_key(p) for p in [self.layout.info, *(p for p, _ in folder_files(self.layout, self.info))]}

    def _check_unchanged(self) -> None:
        """Raise :class:`FolderChangedError` when a file of the folder changed since this store
        began to open: what was read may mix two versions."""
        now = self._stats()
        changed = sorted(self.layout.name(p) for p in now if now[p] != self._opened.get(p))
        if changed:
            raise FolderChangedError(
                f"index {self.root}: {', '.join(changed)} changed since the index was opened (the folder is being "
                "rewritten?): open it again"
            )

    def similarities(
        self, attribute: int, query: np.ndarray, selection: Selection, exact: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        rows = selection.rows
        every = self.vectors(attribute)
        product = exact_scores if exact else _blas_scores
        if rows is None:
            return np.arange(self.count, dtype=np.int64), product(every, query)
        if len(rows) < GATHER_SHARE * self.count:
            return rows, product(every[rows], query)
        return rows, product(every, query)[rows]

    def shortlist(
        self, attribute: int, query: np.ndarray, n: int, selection: Selection
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.config.exact:
            rows, sims = self.similarities(attribute, query, selection, exact=False)
            if len(rows) > n:
                best = np.argpartition(-sims, n - 1)[:n]
                rows, sims = rows[best], sims[best]
            return rows, sims
        index = self.faiss_index(attribute)
        allowed = selection.rows
        params = search_params(index, self.config, n, allowed, self.count)
        distances, rows = index.search(np.asarray(query, dtype=np.float32)[None], n, params=params)
        listed = rows[0] >= 0
        return rows[0][listed].astype(np.int64), similarities(index, distances[0][listed])

    def faiss_index(self, attribute: int):
        """Attribute ``attribute``'s FAISS index (approximate types; read once, then shared: FAISS
        searches are thread-safe)."""
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
                self._check_unchanged()
                self._faiss[attribute] = index
            return self._faiss[attribute]

    def files_read_per_search(self) -> set[Path]:
        """The folder's files a search still reads: memory-mapped vector files, an approximate
        type's vector files (the rows it re-scores are read with ``pread``), FAISS and vector files
        not read yet.  Empty for a loaded ``flat`` index: it answers from memory alone, whatever
        happens to the folder."""
        attributes = range(len(self.info.attributes))
        with self._lock:
            files = {self.layout.vectors(a) for a in attributes if self.mmap or a not in self._vectors}
            if not self.config.exact:
                files |= {self.layout.faiss(a) for a in attributes if a not in self._faiss}
        return files if self.count else set()

    def health(self) -> FolderHealth:
        """Whether the folder's files changed under this open store, and if so whether it is damaged
        (cheap while nothing changed: one ``stat`` per file; see :class:`FolderWatch`)."""
        with self._lock:
            if self._watch is None:
                self._watch = FolderWatch(self)
        return self._watch.check()

    def close(self) -> None:
        """Nothing to release: the files are read, not held."""

    def memory_bytes(self) -> dict[str, int]:
        """On-disk bytes per attribute: FAISS index and exact vectors (for the trade-off table)."""
        n = len(self.info.attributes)
        out = {"faiss": 0, "vectors": 0}
        for a in range(n):
            for kind, path in (("faiss", self.layout.faiss(a)), ("vectors", self.layout.vectors(a))):
                out[kind] += path.stat().st_size if path.is_file() else 0
        return {k: v // max(1, n) for k, v in out.items()}


def _blas_scores(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``vectors @ query`` (BLAS, possibly on several threads): within ``BORDER_EPS`` of
    :func:`~agman.retrieval.ranking.exact_scores`, whose bits depend on nothing but the row."""
    return np.asarray(vectors, dtype=np.float32) @ np.asarray(query, dtype=np.float32)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when ``index.json`` is rewritten (atomically: a new inode)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size

