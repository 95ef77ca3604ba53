"""The Retriever: attribute-specific search over a catalog index, shared by the CLI and the service.

A query is an image (embedded once for every attribute with ``embed_all``), a catalog item (its
stored embeddings; no model needed) or precomputed embeddings ``[A, D]``.  The attributes and
their weights are parsed once, on entry (:class:`~agman.retrieval.query.AttributeWeights`); the
ranking itself is :func:`agman.retrieval.ranking.rank` over the index's
:class:`~agman.retrieval.store.VectorStore` — an attribute-filtered search over an index of a
split's candidates reproduces the evaluation's ranking.  What a search returns, and the predicted
values and match summaries that explain it, are in :mod:`agman.retrieval.results`.

What a query may be: :func:`agman.retrieval.query.query_input`.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from agman.retrieval.filters import Filter, annotated, both, compile_filter
from agman.retrieval.info import IndexInfo
from agman.retrieval.items import Item
from agman.retrieval.query import (
    AttributeWeights,
    QueryError,
    UnknownItemError,
    attribute_index,
    load_query_image,
    query_image,
    query_input,
)
from agman.retrieval.ranking import rank
from agman.retrieval.results import (
    Hit,
    Prediction,
    SearchResult,
    reference_values,
    summarise,
    vote,
)
from agman.retrieval import attention
from agman.retrieval.backends import open_store
from agman.retrieval.embedder import Embedder, NoModelError
from agman.retrieval.store import VectorStore

ImageLike = Image.Image | str | os.PathLike | np.ndarray
AttributesLike = str | Iterable[str] | Mapping[str, float] | AttributeWeights

__all__ = [
    "Hit",
    "NoModelError",
    "Prediction",
    "QueryError",
    "Retriever",
    "SearchResult",
    "UnknownItemError",
    "load_query_image",
    "query_input",
]

QUERY_THUMBNAIL = 256
"""Long side (px) of the copy of an in-memory query image a result keeps for its HTML view."""


class Retriever:
    """Search a catalog index by image, catalog item or embeddings; draw attention maps.

    ``Retriever.open(index_dir)`` opens an index folder and (lazily) the checkpoint that built it;
    ``Retriever(store)`` takes any :class:`~agman.retrieval.store.VectorStore`.  A checkpoint whose
    weight identity differs from the index's is refused.  Safe to share between threads: model
    calls are serialised, searches are not.
    """

    def __init__(
        self, store: VectorStore, model=None, info=None, *, checkpoint: str | Path | None = None, device: str = "cpu"
    ):
        self.store = store
        self.device = device
        self.embedder = self._embedder(checkpoint if checkpoint is not None else store.info.checkpoint.path)
        if model is not None:
            self.set_model(model, info)

    def _embedder(self, checkpoint) -> Embedder:
        """The model of ``checkpoint``, checked against this index (its current store) when loaded."""
        ck = self.store.info.checkpoint
        return Embedder(checkpoint, ck.input_size, ck.crop_ratio, device=self.device, where=self.store.location,
                        check=lambda identity, path: self.info.check_checkpoint(identity, path, self.store.location))

    @classmethod
    def open(
        cls,
        index: str | Path,
        checkpoint: str | Path | None = None,
        *,
        device: str = "cpu",
        load_model: bool = False,
        nprobe: int | None = None,
        ef_search: int | None = None,
        rerank: int | None = None,
        root: str | Path | None = None,
        collection: str | None = None,
        verify: str = "sample",
    ) -> Retriever:
        """Open an index: a folder (FAISS files), or a Milvus collection — a Milvus Lite file
        (``catalog.db``) or a server URI (``http://host:19530``), ``collection`` naming it (default
        ``catalog``; or give a :class:`~agman.retrieval.backends.milvus.client.MilvusTarget`).
        ``checkpoint`` defaults to the one recorded at build time; ``nprobe`` / ``ef_search`` /
        ``rerank`` override the index's search settings; ``root`` the catalog root its image paths
        are relative to (for an index moved to another machine).  With ``load_model`` the checkpoint
        is loaded (and checked) now rather than on first need."""
        store = open_store(index, collection=collection, root=root, nprobe=nprobe, ef_search=ef_search, rerank=rerank,
                           verify=verify)
        retriever = cls(store, checkpoint=checkpoint, device=device)
        if load_model:
            retriever.model  # noqa: B018 - load and verify now
        return retriever

    # ------------------------------------------------------------------ the index
    @property
    def info(self) -> IndexInfo:
        return self.store.info

    @property
    def attributes(self) -> list[str]:
        return self.store.info.attribute_names

    @property
    def exact(self) -> bool:
        return self.store.config.exact

    def __len__(self) -> int:
        return len(self.store)

    def refresh(self) -> bool:
        """Take up changes another process made to the index (rows added, updated, deleted): the
        store is reopened and swapped in; searches already running finish on the old one.  An
        index rebuilt by another checkpoint is refused (``IndexMismatchError``) and the old store
        kept.  True when the index changed."""
        fresh = self.store.reopened()
        if fresh is None:
            return False
        built = self.store.info.checkpoint
        # `agman index --extend` added attributes with a child model: follow it (its old
        # attributes' weights are the ones that built the index, so their vectors stay valid)
        extended = fresh.info.checkpoint.identity != built.identity and built.identity in fresh.info.lineage
        if not extended:
            fresh.info.check_checkpoint(built.identity, built.path, fresh.location)
        self.store = fresh
        if extended:
            self.embedder = self._embedder(fresh.info.checkpoint.path)
        return True

    def compile_filter(self, text: str | Filter | None) -> Filter | None:
        """A filter text checked against this index's fields (attributes and metadata): a
        :class:`~agman.retrieval.filters.FilterError` naming the position otherwise."""
        if text is None or isinstance(text, Filter):
            return text
        from agman.retrieval.catalog import CatalogSchema

        return compile_filter(text, CatalogSchema.of(self.info).fields())

    def parse_attributes(self, attributes: AttributesLike) -> AttributeWeights:
        """``name[:weight]`` texts, ``{name: weight}`` -> checked weights (see ``AttributeWeights.parse``)."""
        return AttributeWeights.parse(attributes, self.attributes)

    # ------------------------------------------------------------------ model
    def set_model(self, model, info) -> None:
        """Use an already loaded model (its ``info.identity`` must match the index)."""
        self.embedder.set_model(model, info)

    @property
    def model(self):
        return self.embedder.model

    def embed(self, image: ImageLike) -> np.ndarray:
        """Every attribute's embedding ``[A, D]`` float32 of one image (one backbone pass)."""
        return self.embedder.embed(query_image(image))

    def model_input(self, image: ImageLike):
        """The image as the model's input tensor ``[3, S, S]`` (resized, centre-cropped, normalised)."""
        return self.embedder.model_input(image)

    def embed_batch(self, images: list) -> np.ndarray:
        """Every attribute's embeddings ``[n, A, D]`` of ``n`` images (or their input tensors) in one pass."""
        return self.embedder.embed_batch(images)

    def attribute_index(self, attribute: str | int) -> int:
        """Position of an attribute given by name (checked: unknown names are a ``QueryError``) or
        by the position itself (as this method returned it: not checked again)."""
        return attribute if isinstance(attribute, int) else attribute_index(attribute, self.attributes)

    def attention(self, image: ImageLike, attribute: str | int) -> np.ndarray | None:
        """The model's spatial attention map ``[h, w]`` (sums to 1) for (image, attribute), or None
        when the model has no attention (CSN)."""
        return self.embedder.attention(query_image(image), self.attribute_index(attribute))

    def model_view(self, image: ImageLike) -> Image.Image:
        """The image as the model sees it (short side resized, centre crop), for overlays."""
        return self.embedder.model_view(query_image(image))

    def attention_image(self, image: ImageLike, attribute: str | int, alpha: float = 0.5) -> Image.Image | None:
        """The attention heatmap over the model's view of the image (Fig. 7), or None without attention."""
        return attention.attention_image(self.embedder, query_image(image), self.attribute_index(attribute), alpha)

    def attention_beside_original(self, image: ImageLike, attribute: str | int, alpha: float = 0.5, *,
                                  boxes=(), tile_size: int | None = None) -> Image.Image | None:
        """The original image beside the attention drawn on it where the model saw it
        (:func:`agman.retrieval.attention.attention_beside_original`), or None without attention."""
        a = self.attribute_index(attribute)
        return attention.attention_beside_original(self.embedder, query_image(image), a, self.attributes[a], alpha,
                                                   boxes=boxes, tile_size=tile_size)

    # ------------------------------------------------------------------ items
    def row(self, item_id: str) -> int:
        row = self.store.row_of_id(item_id)
        if row is None:
            raise UnknownItemError(f"no item {item_id!r} in index {self.store.location}")
        return row

    def item(self, item_id: str) -> Item:
        return self.store.item(self.row(item_id))

    def find_item(self, id_or_path: str | os.PathLike) -> Item:
        """A catalog item given by its id or by its image file's path (relative to the working
        directory or absolute).  Only for local callers: :meth:`row` / :meth:`item` take ids alone,
        so a remote caller cannot probe the server's file paths."""
        row = self.store.row_of_id(id_or_path) if isinstance(id_or_path, str) else None
        if row is None:
            row = self.row_of_path(id_or_path)
        if row is None:
            raise UnknownItemError(
                f"no item {str(id_or_path)!r} in index {self.store.location}: neither an item id nor the path of an "
                "indexed image"
            )
        return self.store.item(row)

    def items(self, start: int = 0, limit: int | None = None) -> list[Item]:
        """Catalog items in row order, from the ``start``-th on (at most ``limit``)."""
        store = self.store
        rows = store.rows(None if limit is None else start + limit)[start:]
        return store.items_of(rows)

    def item_ids(self) -> frozenset[str]:
        """The ids of every searchable item: which catalog this index holds."""
        return frozenset(self.store.item(int(r)).id for r in self.store.rows())

    def item_image(self, item_id: str) -> Image.Image:
        return load_query_image(self.item(item_id).path)

    def item_vectors(self, row: int, store: VectorStore | None = None) -> np.ndarray:
        """The stored embeddings ``[A, D]`` of catalog row ``row``."""
        store = store or self.store
        rows = np.asarray([row], dtype=np.int64)
        return np.concatenate([store.vectors(a, rows) for a in range(len(self.attributes))]).astype(np.float32)

    def row_of_path(self, path: str | os.PathLike) -> int | None:
        return self.store.row_of_path(os.path.normpath(os.path.abspath(path)))

    # ------------------------------------------------------------------ search
    def search(
        self,
        query: ImageLike,
        attributes: AttributesLike,
        k: int = 10,
        *,
        exclude_self: bool = False,
        annotated_only: bool = False,
        exclude: Iterable[int] = (),
        filter: str | Filter | None = None,
        predict: bool | Iterable[str] = True,
    ) -> SearchResult:
        """Rank catalog items by similarity to ``query`` in the given attribute(s).

        ``query``: an image (a path, a PIL image, a numpy ``uint8 H x W x 3`` array, a torch
        ``3 x H x W`` tensor) or precomputed embeddings ``[A, D]`` (see :func:`query_input`).
        ``attributes``: a name, names with optional ``:weight``, ``{name: weight}``, or parsed
        ``AttributeWeights``.  ``exclude_self`` drops the catalog item whose file is the query file.
        ``annotated_only`` ranks only items annotated with every queried attribute (the evaluation's
        candidate set).  ``exclude``: rows to skip.  ``predict``: the attributes whose value to
        predict (True: every attribute; False: none), see :meth:`predict`.  ``filter``: an
        expression over metadata and labels (``'category == "dress" and price < 50'``, see
        :mod:`agman.retrieval.filters`); the result holds k items whenever k items pass it.
        """
        weights = self.parse_attributes(attributes)
        flt = self.compile_filter(filter)
        store = self.store
        query = query_input(query)
        row, path, thumbnail = None, None, None
        if isinstance(query, np.ndarray):
            vectors = query
        else:
            if isinstance(query, (str, os.PathLike)):
                row = store.row_of_path(os.path.normpath(os.path.abspath(query)))
                path = os.path.abspath(query)
            else:
                thumbnail = query.copy()
                thumbnail.thumbnail((QUERY_THUMBNAIL, QUERY_THUMBNAIL))
            vectors = self.embed(query)
        excluded = {int(r) for r in exclude}
        if exclude_self and row is not None:
            excluded.add(row)
        item = store.item(row) if row is not None else None
        result = self._search(store, vectors, weights, k, excluded, annotated_only, item, flt, predict)
        result.query_path = item.path if item is not None else path
        result.query_image = thumbnail
        return result

    def search_item(
        self,
        item_id: str,
        attributes: AttributesLike,
        k: int = 10,
        *,
        exclude_self: bool = False,
        annotated_only: bool = False,
        filter: str | Filter | None = None,
        predict: bool | Iterable[str] = True,
    ) -> SearchResult:
        """Rank items by similarity to catalog item ``item_id`` (its stored embeddings; no model).
        :meth:`find_item` turns an image path into the id."""
        weights = self.parse_attributes(attributes)
        flt = self.compile_filter(filter)
        store = self.store
        row = store.row_of_id(item_id)
        if row is None:
            raise UnknownItemError(f"no item {item_id!r} in index {store.location}")
        excluded = {row} if exclude_self else set()
        query_item = store.item(row)
        vectors = self.item_vectors(row, store)
        result = self._search(store, vectors, weights, k, excluded, annotated_only, query_item, flt, predict)
        result.query_path = query_item.path
        return result

    def predict(
        self,
        vectors: np.ndarray,
        k: int,
        attributes: bool | Iterable[str] = True,
        excluded: Iterable[int] = (),
        store: VectorStore | None = None,
    ) -> dict[str, Prediction]:
        """The predicted value of each attribute for query embeddings ``[A, D]``: a vote of the
        ``k`` items nearest in *that* attribute among the items labelled with it (the ``excluded``
        rows left out); attributes without labelled items are left out.  ``attributes``: names, or
        True for every attribute of the index."""
        store = self.store if store is None else store
        names = self.attributes if attributes is True else [] if attributes is False else list(attributes)
        out = {}
        for name in names:
            labelled = store.select(Filter("", annotated([name])), excluded)
            if not store.count_selected(labelled):
                continue
            found = rank(store, vectors, self.parse_attributes(name), k, labelled)
            prediction = vote(name, [item.labels[name] for item in store.items_of(found.rows)])
            if prediction is not None:
                out[name] = prediction
        return out

    def _search(
        self,
        store: VectorStore,
        vectors,
        weights: AttributeWeights,
        k,
        excluded: set[int],
        annotated_only: bool,
        query_item: Item | None,
        flt: Filter | None = None,
        predict: bool | Iterable[str] = True,
    ) -> SearchResult:
        started = time.perf_counter()
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise QueryError(f"k must be a positive integer, got {k!r}")
        vectors = np.asarray(vectors, dtype=np.float32)
        shape = (len(self.attributes), self.info.dim)
        if vectors.shape != shape:
            raise QueryError(f"query embeddings must be [{shape[0]}, {shape[1]}], got {list(vectors.shape)}")
        if annotated_only:
            flt = Filter(flt.text if flt else "", both(flt.expr if flt else None, annotated([t.name for t in weights])))
        selection = store.select(flt, excluded)
        found = rank(store, vectors, weights, k, selection)
        candidates = found.candidates if found.candidates is not None else store.count_selected(selection)
        query_labels = query_item.labels if query_item is not None else {}
        hits = []
        for i, (r, item, total) in enumerate(zip(found.rows, store.items_of(found.rows), found.total)):
            hits.append(
                Hit(
                    rank=i + 1,
                    row=int(r),
                    id=item.id,
                    path=item.path,
                    score=float(total),
                    scores={t.name: float(found.per[j, i]) for j, t in enumerate(weights)},
                    labels=item.labels,
                    correct=_correct(query_labels, item.labels, weights),
                    metadata=item.metadata,
                )
            )
        predicted = self.predict(vectors, int(k), predict, excluded, store)
        summary = summarise(hits, reference_values(query_labels, predicted), [t.name for t in weights])
        return SearchResult(
            hits=hits,
            weights=weights.as_dict(),
            k=int(k),
            exact=store.config.exact,
            seconds=time.perf_counter() - started,
            query_id=query_item.id if query_item is not None else None,
            query_labels=dict(query_labels),
            candidates=candidates,
            filter=flt.text if flt is not None and flt.text else None,
            predicted=predicted,
            summary=summary,
        )

    def __repr__(self) -> str:
        model = "loaded" if self.embedder.loaded else "not loaded"
        return (f"Retriever({self.store.location!r}: {len(self)} items, {self.store.config.kind} "
                f"({'exact' if self.exact else 'approximate'}), {self.info.model_name} model {model}, "
                f"attributes {', '.join(self.attributes)})")


def _correct(query_labels: Mapping[str, str], labels: Mapping[str, str], weights: AttributeWeights) -> bool | None:
    """True when the item has the query's value of every queried attribute, False when one differs,
    None when a label is unknown on either side."""
    verdict = True
    for t in weights:
        if t.name not in query_labels or t.name not in labels:
            return None
        verdict = verdict and query_labels[t.name] == labels[t.name]
    return verdict
