"""The backend seam: what the :class:`~agman.retrieval.search.Retriever` needs from wherever a
catalog's embeddings live, and what the builder needs to write them there.

A store holds, for every catalog item, its record (:class:`~agman.retrieval.items.Item`: id, image
path, labels, metadata) and one stored float32 embedding per attribute.  It *holds* and *selects*;
the Retriever *ranks*: weights, exact re-scoring, the tie rule and the threshold algorithm live in
:mod:`agman.retrieval.ranking`, once, for every backend.  So a backend need not be exact in
:meth:`VectorStore.shortlist` — only :meth:`VectorStore.vectors` must return the stored embeddings
bit for bit.

Rows are int64 numbers; row order is catalog order and ties between equal scores go to the lower
row (the evaluation's rule).  Deleting items leaves gaps; an updated item gets a fresh row (the
same on every backend, so rankings agree after updates too).

A filter (:mod:`agman.retrieval.filters`) becomes the store's own :class:`Selection`
(:meth:`VectorStore.select`): allowed rows for the FAISS files (a numpy mask over typed columns),
a boolean expression for Milvus.  The ranking passes the selection back unopened.

What a backend does beyond the required methods is declared, never probed: its
:class:`Capabilities` (``capabilities``) say whether the open store also writes, reports the
health of its files, or takes writes from several processes at once.

Implementations live in ``retrieval/backends/<name>/`` (FAISS folder, Milvus collection, an
in-memory one for tests), each described by a :class:`Backend`; the registry
:mod:`agman.retrieval.backends` resolves a location to one of them (``open_store``,
``open_writer``, ``open_for_build``).  Writers (:class:`CatalogWriter`) take embedded items from
:func:`agman.retrieval.build.build_index`, and deletions.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from agman.retrieval.filters import Filter
from agman.retrieval.info import IndexConfig, IndexInfo
from agman.retrieval.items import Item
from agman.retrieval.query import UnknownItemError

Blocks = Callable[[], Iterable[np.ndarray]]
"""A writer's embeddings: called (once per attribute, or once) it yields ``[n, A, D]`` blocks in item order."""
Rows = Sequence["int | None"]
"""Per item, the row it replaces, or None."""

VERIFY_LEVELS = ("size", "sample", "full")
"""How much of an index's files is checked against their recorded hashes when it is opened."""


@dataclass(frozen=True)
class Capabilities:
    """What a store or writer does beyond the protocol's required methods (declared, not probed)."""

    writes: bool = False
    """The open store is its own :class:`CatalogWriter` (the service writes through it)."""
    health: bool = False
    """:meth:`VectorStore.health` reports on files that can be damaged under a running server."""
    parallel_writes: bool = False
    """Several processes may write shards at once (:meth:`CatalogWriter.write_block`, then
    :meth:`CatalogWriter.finish` by one of them)."""


def readded(removed: list[str], items: Sequence[Item]) -> list[str]:
    """A writer's tombstones (``IndexInfo.removed``: ids deleted on purpose, which ``--add`` leaves
    out) less the ids of ``items``, written again."""
    written = {it.id for it in items}
    return [i for i in removed if i not in written]


def deletion(writer: CatalogWriter, ids: Sequence[str], where: str) -> dict[str, int]:
    """``{id: row}`` of the items ``ids`` (each once) a writer deletes, recorded as tombstones in its
    ``info.removed`` (``--add`` does not bring them back); an unknown id is an ``UnknownItemError``
    naming ``where``, and nothing is changed."""
    ids = list(dict.fromkeys(ids))
    live = writer.live_ids(ids)
    missing = [i for i in ids if i not in live]
    if missing:
        raise UnknownItemError.of(missing, where, "nothing was deleted")
    writer.info.removed = sorted(set(writer.info.removed) | set(live))
    return live


@dataclass(frozen=True)
class Selection:
    """The rows one search may rank, in the store's terms: ``rows`` (ascending; None = every
    searchable row) where the store selects rows itself, ``expression`` where a database filters;
    ``count``: how many rows (None when only a query of the store's own would tell)."""

    count: int | None
    rows: np.ndarray | None = None
    expression: str | None = None


@runtime_checkable
class VectorStore(Protocol):
    """One catalog's items and per-attribute embeddings, as the Retriever reads them."""

    info: IndexInfo
    """The checkpoint that embedded the catalog (an image query must be embedded by the same
    weights), the attributes in order (attribute ``a`` below is an index into them), ``dim``, the
    metadata schema (what filters may name)."""

    config: IndexConfig
    """The index type and the search-time settings in effect: ``exact`` says whether
    :meth:`shortlist` is exact; ``rerank`` sizes the shortlist of approximate searches."""

    location: str
    """Where the store lives (a folder, a URI), for messages."""

    in_memory: bool
    """The vectors are in this process (memory-mapped files): an exact store is then ranked by a
    scan of every selected row, which costs what one shortlist would."""

    shortlist_limit: int
    """The largest ``n`` :meth:`shortlist` serves (past it the ranking scans)."""

    catalog_root: str | None
    """The folder the items' image paths are relative to (None: absolute paths)."""

    capabilities: Capabilities
    """What the store does beyond this protocol's required methods."""

    def __len__(self) -> int:
        """Number of searchable items."""

    def rows(self, limit: int | None = None) -> np.ndarray:
        """Every searchable row, ascending (int64); with ``limit`` at most that many (a database
        may hand out any of them: for examples, not for ranking)."""

    def item(self, row: int) -> Item:
        """The record of ``row`` (image path resolved against the catalog root)."""

    def items_of(self, rows: Sequence[int]) -> list[Item]:
        """The records of ``rows``, in that order."""

    def row_of_id(self, item_id: str) -> int | None:
        """The row of the searchable item with this id, or None."""

    def row_of_path(self, path: str) -> int | None:
        """The row of the item whose image is this (normalised, absolute) path, or None."""

    def select(self, flt: Filter | None = None, exclude: Iterable[int] = ()) -> Selection:
        """The searchable rows ``flt`` keeps (all when None), minus the ``exclude`` rows."""

    def count_selected(self, selection: Selection) -> int:
        """How many rows ``selection`` holds (its ``count``, or the store counts them)."""

    def vectors(self, attribute: int, rows: np.ndarray) -> np.ndarray:
        """Stored embeddings ``[len(rows), D]`` float32 of attribute ``attribute``, exactly as
        embedded: exact scores are computed from these."""

    def similarities(
        self, attribute: int, query: np.ndarray, selection: Selection, exact: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every selected row (ascending int64) with its similarity to ``query [D]``: a full scan;
        :func:`~agman.retrieval.ranking.exact_scores` of the stored vectors, or with ``exact``
        False the store's fastest product within ``BORDER_EPS`` of them (the ranking re-scores)."""

    def shortlist(
        self, attribute: int, query: np.ndarray, n: int, selection: Selection
    ) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` selected rows nearest to ``query [D]`` in attribute ``attribute``, in any
        order: ``(rows int64, similarities)``; fewer than ``n`` only when that is every selected
        row.  The similarities are inner products (within ``BORDER_EPS`` of exact when
        ``config.exact``, else estimates); rows are then re-scored from :meth:`vectors`."""

    def reopened(self) -> VectorStore | None:
        """A fresh store over the same catalog when another process changed it in a way this open
        store does not see (an index folder rewritten by ``agman index``), else None.  A store is
        immutable once open; the Retriever swaps in the fresh one, so a search running meanwhile
        finishes on the store it started with."""

    def health(self):
        """With ``capabilities.health``: the state of the files a search reads (``ok``, ``damage``)."""

    def close(self) -> None:
        """Release what the store holds (a connection); a store of plain files holds nothing."""


@runtime_checkable
class CatalogWriter(Protocol):
    """Where :func:`~agman.retrieval.build.build_index` commits embedded items, and deletions go."""

    info: IndexInfo
    location: str
    capabilities: Capabilities

    def live_ids(self, ids: Iterable[str]) -> dict[str, int]:
        """``{id: row}`` of those of ``ids`` that are stored and searchable."""

    def reserve(self, n: int) -> int:
        """The first of ``n`` fresh rows for the next commit (recorded by the builder, so a commit
        cut short is redone with the same rows)."""

    def commit(self, items: Sequence[Item], blocks: Blocks, replaces: Rows, skipped: Sequence[int], first_row: int):
        """Store ``items`` as rows ``first_row ..`` with their embeddings, which ``blocks()`` yields
        as ``[n, A, D]`` arrays in item order.  ``replaces[i]``: the row item i updates (it stops
        being searchable), or None.  ``skipped``: positions in ``items`` whose image could not be
        read (their embeddings are placeholders: not made searchable)."""

    def known(self, ids: Iterable[str], paths: Iterable[str]) -> tuple[dict[str, tuple[int, Item]], set[str]]:
        """The searchable items among ``ids`` (``{id: (row, item)}``) and which of ``paths`` are the
        images of searchable items (what a build plans against)."""

    def searchable(self) -> int:
        """How many items can be found."""

    def close(self) -> None:
        """Release the writer (a folder's lock, a connection)."""

    def delete(self, ids: Sequence[str]) -> int:
        """Make the items ``ids`` unsearchable; an unknown id is an ``UnknownItemError`` and
        nothing is deleted."""

    def write_block(self, items: Sequence[Item], start: int, block: np.ndarray, skipped: Iterable[int],
                    first_row: int) -> None:
        """With ``capabilities.parallel_writes``: store one shard (plan positions ``start ..``) as
        rows ``first_row + position``, from any process."""

    def finish(self, items: Sequence[Item], replaces: Rows, first_row: int) -> None:
        """With ``capabilities.parallel_writes``: commit a plan whose shards every process wrote."""


class Backend(Protocol):
    """One kind of place a catalog lives (``retrieval/backends/<name>/``), as the registry
    (:mod:`agman.retrieval.backends`) uses it."""

    name: str

    def claims(self, location) -> bool:
        """Whether ``location`` (a path, a URI, a target object) is one of this backend's."""

    def locate(self, location, *, collection: str | None = None, **connection):
        """``location`` with the command's connection options (a collection, a token...) as this
        backend's target; an option the backend does not take is a ``UsageError``."""

    def open_store(self, location, *, root=None, verify: str = "sample", load: bool = False,
                   **tuning) -> VectorStore:
        """The store of ``location`` for search (``root``: the catalog root to resolve paths
        against; ``verify``: one of :data:`VERIFY_LEVELS`; ``load``: read everything now)."""

    def open_writer(self, location) -> CatalogWriter:
        """The writer of the existing index at ``location`` (deletions, re-indexing)."""

    def open_for_build(self, location, ckpt, dim: int, config, metadata: dict[str, str], root, grow: bool,
                       work=None):
        """``(writer, agman.retrieval.work.Work)`` for a build (see ``build_index``)."""

    def extend(self, location, checkpoint, **options):
        """``agman index --extend``: add the attributes of an extended model (an ``ExtendSummary``)."""

    def parallel_writes(self, location) -> bool:
        """Whether several processes of one build may write into ``location`` at once."""

    def unguarded_writes(self, location) -> bool:
        """Whether other processes of this user can change ``location`` without agman's token
        (a database served without authentication)."""
