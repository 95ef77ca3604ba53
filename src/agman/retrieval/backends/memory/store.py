""":class:`MemoryStore`: a catalog held in this process's memory (numpy), reader and writer at once."""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from types import SimpleNamespace

import numpy as np

from agman.retrieval.filters import Filter
from agman.retrieval.info import IndexConfig, IndexInfo
from agman.retrieval.items import Item
from agman.retrieval.ranking import exact_scores, rank_order
from agman.retrieval.store import Blocks, Capabilities, Rows, Selection, deletion, readded


class MemoryStore:
    """Items and their vectors ``[rows, A, D]`` in memory; deleted rows stay as gaps.  Ranked like a
    database, through shortlists (``in_memory`` False: the threshold algorithm), each one a numpy
    brute force."""

    in_memory = False
    shortlist_limit = 10**9
    capabilities = Capabilities(writes=True)

    def __init__(self, name: str, info: IndexInfo, config: IndexConfig | None = None, catalog_root=None):
        self.name, self.info = name, info
        self.config = config or info.config
        self.location = f"memory://{name}"
        self.catalog_root = catalog_root if catalog_root is not None else info.root
        # shared by every view of the catalog (:meth:`tuned`), so each sees every write at once
        self._data = SimpleNamespace(items=[], vectors=np.zeros((0, len(info.attributes), info.dim), np.float32),
                                     live=np.zeros(0, dtype=bool))

    items = property(lambda self: self._data.items, doc="Every row's item, deleted ones included.")
    _vectors = property(lambda self: self._data.vectors)
    _live = property(lambda self: self._data.live)

    def tuned(self, catalog_root=None, **tuning) -> MemoryStore:
        """A view of the same catalog with other search settings or catalog root (shares the data)."""
        view = MemoryStore.__new__(MemoryStore)
        view.__dict__.update(self.__dict__)
        view.config = self.info.config.tuned(**tuning)
        view.catalog_root = catalog_root if catalog_root is not None else self.catalog_root
        return view

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return int(self._live.sum())

    def rows(self, limit: int | None = None) -> np.ndarray:
        return np.flatnonzero(self._live).astype(np.int64)[:limit]

    def item(self, row: int) -> Item:
        return self.items[int(row)]

    def items_of(self, rows: Sequence[int]) -> list[Item]:
        return [self.items[int(r)] for r in rows]

    def row_of_id(self, item_id: str) -> int | None:
        return next((int(r) for r in self.rows()[::-1] if self.items[r].id == item_id), None)

    def row_of_path(self, path: str) -> int | None:
        path = os.path.normpath(path)
        return next((int(r) for r in self.rows()[::-1] if os.path.normpath(self.items[r].path) == path), None)

    def select(self, flt: Filter | None = None, exclude: Iterable[int] = ()) -> Selection:
        from agman.retrieval.catalog import CatalogSchema

        mask = self._live.copy()
        if flt is not None:
            mask &= flt.mask(CatalogSchema.of(self.info).columns(self.items), len(self.items))
        exclude = [int(r) for r in exclude if 0 <= int(r) < len(mask)]
        mask[exclude] = False
        rows = np.flatnonzero(mask).astype(np.int64)
        return Selection(len(rows), rows)

    def count_selected(self, selection: Selection) -> int:
        return selection.count if selection.count is not None else len(self)

    def _pool(self, selection: Selection) -> np.ndarray:
        return self.rows() if selection.rows is None else selection.rows

    def vectors(self, attribute: int, rows: np.ndarray) -> np.ndarray:
        return self._vectors[np.asarray(rows, dtype=np.int64), attribute]

    def similarities(self, attribute: int, query: np.ndarray, selection: Selection, exact: bool = True):
        pool = self._pool(selection)
        return pool, exact_scores(self._vectors[pool, attribute], query)

    def shortlist(self, attribute: int, query: np.ndarray, n: int, selection: Selection):
        pool, scores = self.similarities(attribute, query, selection)
        order = rank_order(scores, pool)[:n]
        return pool[order], scores[order]

    def reopened(self) -> MemoryStore | None:
        return None  # every write is seen at once

    def health(self):
        return None

    def close(self) -> None:
        """Nothing to release (the catalog lives as long as the process)."""

    # ------------------------------------------------------------------ writing
    def live_ids(self, ids: Iterable[str]) -> dict[str, int]:
        return {i: row for i, (row, _) in self.known(ids, ())[0].items()}

    def known(self, ids: Iterable[str], paths: Iterable[str]) -> tuple[dict[str, tuple[int, Item]], set[str]]:
        live = {self.items[r].id: (int(r), self.items[r]) for r in self.rows()}
        stored_paths = {os.path.normpath(it.path) for _, it in live.values()}
        return {i: live[i] for i in ids if i in live}, {p for p in paths if os.path.normpath(p) in stored_paths}

    def searchable(self) -> int:
        return len(self)

    def reserve(self, n: int) -> int:
        return len(self.items)

    def commit(self, items: Sequence[Item], blocks: Blocks, replaces: Rows, skipped: Sequence[int], first_row: int):
        """Append ``items`` as rows ``first_row ..`` (the next free rows), drop the rows they replace
        and the ``skipped`` ones."""
        if first_row != len(self.items):
            raise ValueError(f"{self.location} holds {len(self.items)} rows; the build planned row {first_row}")
        block = np.concatenate([np.asarray(b, dtype=np.float32) for b in blocks()] or [self._vectors[:0]])
        live = np.ones(len(items), dtype=bool)
        live[list(skipped)] = False
        data = self._data
        data.vectors = np.concatenate([data.vectors, block])
        data.live = np.concatenate([data.live, live])
        data.live[[r for r in replaces if r is not None]] = False
        data.items = [*data.items, *items]
        self.info.count = len(self.items)
        self.info.deleted = np.flatnonzero(~self._live).tolist()
        self.info.removed = readded(self.info.removed, items)

    def delete(self, ids: Sequence[str]) -> int:
        live = deletion(self, ids, self.location)
        self._live[list(live.values())] = False
        self.info.deleted = np.flatnonzero(~self._live).tolist()
        return len(live)

    def write_block(self, items, start, block, skipped, first_row) -> None:
        raise NotImplementedError("a memory catalog takes writes from one process")

    def finish(self, items, replaces, first_row) -> None:
        raise NotImplementedError("a memory catalog takes writes from one process")
