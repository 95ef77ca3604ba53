"""The backend seam: what the :class:`~agman.retrieval.search.Retriever` needs from wherever a
catalog's embeddings live.

A store holds, for every catalog item, its record (:class:`~agman.retrieval.items.Item`) and one
stored float32 embedding per attribute, plus an approximate-neighbour structure per attribute.  It
*holds*; the Retriever *ranks*: weights, exact re-scoring, the tie rule and the exactness fall-backs
live in :mod:`agman.retrieval.ranking`, once, for every backend.  So a backend need not be exact or
deterministic in :meth:`VectorStore.shortlist` — only :meth:`VectorStore.vectors` must return the
stored embeddings bit for bit.

Rows are int64 numbers; row order is catalog order and ties between equal scores go to the lower
row (the evaluation's rule).  In :class:`~agman.retrieval.faiss_store.FaissStore` (the FAISS-files
backend, the first implementation) the rows are ``0 .. len - 1``; a backend that deletes items may
leave gaps — :meth:`VectorStore.rows` lists the searchable ones.

Writing is not part of this protocol: :func:`agman.retrieval.build.build_index` embeds images in
resumable shards (backend-neutral) and hands them to the FAISS-files writer
(:func:`agman.retrieval.faiss_store.append_rows`); a second backend supplies its own writer there.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from agman.retrieval.info import IndexConfig, IndexInfo
from agman.retrieval.items import Item


@runtime_checkable
class VectorStore(Protocol):
    """One catalog's items and per-attribute embeddings, as the Retriever reads them."""

    info: IndexInfo
    """The checkpoint that embedded the catalog (an image query must be embedded by the same
    weights), the attributes in order (attribute ``a`` below is an index into them), ``dim``."""

    config: IndexConfig
    """The index type and the search-time settings in effect: ``exact`` says whether
    :meth:`shortlist` is exact; ``rerank`` sizes the shortlist of approximate searches."""

    location: str
    """Where the store lives (a folder, a URI), for messages."""

    def __len__(self) -> int:
        """Number of searchable rows."""

    def rows(self) -> np.ndarray:
        """Every searchable row, ascending (int64)."""

    def item(self, row: int) -> Item:
        """The record of ``row``."""

    def row_of_id(self, item_id: str) -> int | None:
        """The row of the item with this id, or None."""

    def row_of_path(self, path: str) -> int | None:
        """The row of the item whose image is this (normalised, absolute) path, or None."""

    def labelled_rows(self, attribute: str) -> np.ndarray:
        """Rows of the items annotated with ``attribute`` (ascending int64)."""

    def vectors(self, attribute: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Stored embeddings ``[len(rows), D]`` float32 of attribute ``attribute`` (every row when
        ``rows`` is None), exactly as embedded: exact scores are computed from these."""

    def shortlist(
        self, attribute: int, query: np.ndarray, n: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` rows nearest to ``query [D]`` in attribute ``attribute``, best first, only
        among the ``allowed`` rows when given: ``(rows int64, similarities)``.  The similarities
        are inner products (exact when ``config.exact``, else estimates); rows are then re-scored
        from :meth:`vectors`."""
