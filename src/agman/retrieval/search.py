"""The Retriever: attribute-specific search over a catalog index, shared by the CLI and the service.

A query is an image (embedded once for every attribute with ``embed_all``), a catalog item (its
stored embeddings; no model needed) or precomputed embeddings ``[A, D]``.  Its score against an
item over the chosen attributes is the weighted sum of the per-attribute similarities (paper
§2.1), each the dot product of unit embeddings.  Results are ranked by score, descending, ties by
catalog row ascending -- the evaluation's rule (score = dot product, ties by candidate position),
so an attribute-filtered search over an index of a split's candidates reproduces the evaluation's
ranking.

Exact indexes (``flat``) return the exact top k: a single-attribute search takes a FAISS shortlist,
re-scores it exactly and falls back to a full exact scan when the shortlist's border is within
float error of the k-th score; multi-attribute and filtered searches scan exactly.  Approximate
indexes take ``k * rerank`` candidates per attribute from FAISS and re-score their union exactly
from the stored float32 vectors.
"""
from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from agman.errors import NotFoundError, UsageError
from agman.retrieval.index import (
    CatalogIndex,
    IndexConfig,
    Item,
    check_identity,
    import_faiss,
)

SCAN_CHUNK = 1 << 16  # rows per block of an exact scan
BORDER_EPS = 1e-5  # float error allowed between FAISS's and the exact score of the same pair


class QueryError(UsageError, ValueError):
    """A query the index cannot answer as asked (unknown attribute, bad weight, bad k, ...)."""


class UnknownItemError(QueryError):
    """No catalog item has the given id."""


class NoModelError(QueryError):
    """An image query or an attention map needs the checkpoint, and none could be loaded."""


def parse_attribute_weights(
    spec: str | Iterable[str] | Mapping[str, float], known: list[str]
) -> dict[str, float]:
    """``'neckline_design:2'``, ``['a', 'b:0.5']``, ``'a:1,b:2'`` or ``{'a': 1.0}`` -> ``{name: weight}``.

    A missing weight is 1.  Weights must be finite and >= 0, at least one > 0; names must be known
    and appear once.  Zero-weight attributes are dropped.
    """
    if isinstance(spec, Mapping):
        pairs = [(str(k), v) for k, v in spec.items()]
    else:
        parts = [spec] if isinstance(spec, str) else list(spec)
        pairs = []
        for part in parts:
            for piece in str(part).split(","):
                piece = piece.strip()
                if not piece:
                    continue
                name, sep, weight = piece.rpartition(":") if ":" in piece else (piece, "", "1")
                pairs.append((name.strip(), weight.strip() if sep else weight))
    if not pairs:
        raise QueryError(f"no attribute given; choose from: {', '.join(known)}")
    out: dict[str, float] = {}
    for name, raw in pairs:
        if name not in known:
            raise QueryError(f"unknown attribute {name!r}; this index has: {', '.join(known)}")
        if name in out:
            raise QueryError(f"attribute {name!r} is given twice")
        try:
            weight = float(raw)
        except (TypeError, ValueError):
            raise QueryError(f"weight of {name!r} must be a number, got {raw!r}") from None
        if not math.isfinite(weight) or weight < 0:
            raise QueryError(f"weight of {name!r} must be a finite number >= 0, got {raw!r}")
        out[name] = weight
    out = {k: w for k, w in out.items() if w > 0}
    if not out:
        raise QueryError("at least one attribute weight must be above 0")
    return out


def exact_scores(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Similarities ``vectors [n, D] . query [D]`` in float32, each row's sum computed the same way
    whatever the other rows are (a BLAS matrix-vector product rounds a row differently depending on
    its position in the block), so re-scoring a shortlist gives the bits of a full scan."""
    return np.einsum("ij,j->i", np.asarray(vectors, dtype=np.float32), np.asarray(query, dtype=np.float32))


def rank_order(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions sorting by score descending, then row ascending (the evaluation's tie rule)."""
    return np.lexsort((rows, -scores))


@dataclass
class Hit:
    """One ranked result: ``score`` is the weighted sum; ``scores`` the per-attribute similarities."""

    rank: int
    row: int
    id: str
    path: str
    score: float
    scores: dict[str, float]
    labels: dict[str, str]
    correct: bool | None

    def to_dict(self) -> dict:
        return {
            "rank": self.rank,
            "id": self.id,
            "path": self.path,
            "score": round(self.score, 6),
            "scores": {k: round(v, 6) for k, v in self.scores.items()},
            "labels": self.labels,
            "correct": self.correct,
        }


@dataclass
class SearchResult:
    """The ranked hits of one query and how they were found."""

    hits: list[Hit]
    weights: dict[str, float]
    k: int
    exact: bool
    seconds: float
    query_id: str | None = None
    query_labels: dict[str, str] = field(default_factory=dict)
    candidates: int = 0

    def to_dict(self) -> dict:
        return {
            "query": {"id": self.query_id, "labels": self.query_labels},
            "attributes": self.weights,
            "k": self.k,
            "exact": self.exact,
            "candidates": self.candidates,
            "seconds": round(self.seconds, 6),
            "results": [h.to_dict() for h in self.hits],
        }

    @property
    def ids(self) -> list[str]:
        return [h.id for h in self.hits]


class Retriever:
    """Search a catalog index by image, catalog item or embeddings; draw results and attention.

    ``Retriever.open(index_dir)`` opens the index and (lazily) the checkpoint that built it; a
    different checkpoint is refused (its weight identity must equal the index's).
    """

    def __init__(self, index: CatalogIndex, model=None, info=None, *, checkpoint: str | Path | None = None, device="cpu"):
        self.index = index
        self.device = device
        self._checkpoint = Path(checkpoint) if checkpoint is not None else Path(index.meta["checkpoint"]["path"])
        self._model = None
        self._info = None
        self._model_lock = threading.Lock()
        if model is not None:
            self.set_model(model, info)

    @classmethod
    def open(
        cls,
        index_dir: str | Path,
        checkpoint: str | Path | None = None,
        *,
        device: str = "cpu",
        load_model: bool = False,
        nprobe: int | None = None,
        ef_search: int | None = None,
        rerank: int | None = None,
    ) -> Retriever:
        """Open ``index_dir``; ``checkpoint`` defaults to the one recorded at build time.  With
        ``load_model`` the checkpoint is loaded (and checked) now rather than on first need."""
        config = None
        if nprobe is not None or ef_search is not None or rerank is not None:
            from agman.retrieval.index import read_meta

            base = IndexConfig.from_dict(read_meta(index_dir)["index"]).to_dict()
            for key, value in (("nprobe", nprobe), ("ef_search", ef_search), ("rerank", rerank)):
                if value is not None:
                    base[key] = value
            config = IndexConfig.from_dict(base)
        retriever = cls(CatalogIndex(index_dir, config), checkpoint=checkpoint, device=device)
        if load_model:
            retriever.model  # noqa: B018 - load and verify now
        return retriever

    # ------------------------------------------------------------------ model
    def set_model(self, model, info) -> None:
        """Use an already loaded model (its ``info.identity`` must match the index)."""
        check_identity(self.index.meta, info.identity, info.path, self.index.root)
        self._model, self._info = model.eval(), info

    @property
    def model(self):
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    from agman.engine.checkpoint import load_model

                    if not self._checkpoint.is_file():
                        raise NoModelError(
                            f"checkpoint {self._checkpoint} (which built index {self.index.root}) not found: "
                            "pass the checkpoint's current path"
                        )
                    model, info = load_model(self._checkpoint, device=self.device)
                    check_identity(self.index.meta, info.identity, self._checkpoint, self.index.root)
                    self._model, self._info = model, info
        return self._model

    @property
    def input_size(self) -> int:
        return int(self.index.meta["checkpoint"]["input_size"])

    @property
    def crop_ratio(self) -> float:
        return float(self.index.meta["checkpoint"]["crop_ratio"])

    @property
    def attributes(self) -> list[str]:
        return list(self.index.attribute_names)

    def __len__(self) -> int:
        return len(self.index)

    def _tensor(self, image: Image.Image):
        from agman.data.transforms import build_transform

        transform = build_transform(self.input_size, train=False, crop_ratio=self.crop_ratio)
        return transform(image.convert("RGB"))[None].to(self.device)

    def embed(self, image: Image.Image | str | os.PathLike) -> np.ndarray:
        """Every attribute's embedding ``[A, D]`` float32 of one image (one backbone pass)."""
        import torch

        image = load_query_image(image)
        model = self.model
        with self._model_lock, torch.inference_mode():
            out = model.embed_all(self._tensor(image))
        return out[0].float().cpu().numpy()

    def attention(self, image: Image.Image | str | os.PathLike, attribute: str) -> np.ndarray | None:
        """The model's spatial attention map ``[h, w]`` (sums to 1) for (image, attribute), or None
        when the model has no attention (CSN)."""
        import torch

        a = self._attribute(attribute)
        image = load_query_image(image)
        model = self.model
        with self._model_lock, torch.inference_mode():
            att = model.attention_map(self._tensor(image), torch.tensor([a], device=self.device))
        return None if att is None else att[0].float().cpu().numpy()

    def model_view(self, image: Image.Image | str | os.PathLike) -> Image.Image:
        """The image as the model sees it (short side resized, centre crop), for overlays."""
        from agman.data.transforms import model_view

        return model_view(load_query_image(image), self.input_size, self.crop_ratio)

    def attention_image(
        self, image: Image.Image | str | os.PathLike, attribute: str, alpha: float = 0.5
    ) -> Image.Image | None:
        """The attention heatmap over the model's view of the image (Fig. 7), or None without attention."""
        from agman.retrieval.render import attention_overlay

        image = load_query_image(image)
        att = self.attention(image, attribute)
        return None if att is None else attention_overlay(self.model_view(image), att, alpha)

    # ------------------------------------------------------------------ items
    def item(self, item_id: str) -> Item:
        return self.index.items[self.row(item_id)]

    def row(self, item_id: str) -> int:
        try:
            return self.index.row_of_id[item_id]
        except KeyError:
            raise UnknownItemError(f"no item {item_id!r} in index {self.index.root}") from None

    def item_image(self, item_id: str) -> Image.Image:
        return load_query_image(self.item(item_id).path)

    def item_vectors(self, row: int) -> np.ndarray:
        """The stored embeddings ``[A, D]`` of catalog row ``row``."""
        return np.stack([self.index.vectors(a)[row] for a in range(len(self.attributes))]).astype(np.float32)

    def row_of_path(self, path: str | os.PathLike) -> int | None:
        return self.index.row_of_path.get(os.path.normpath(os.path.abspath(path)))

    # ------------------------------------------------------------------ search
    def _attribute(self, name: str) -> int:
        if name not in self.index.attribute_names:
            raise QueryError(f"unknown attribute {name!r}; this index has: {', '.join(self.attributes)}")
        return self.index.attribute_names.index(name)

    def search(
        self,
        query: Image.Image | str | os.PathLike | np.ndarray,
        attributes: str | Iterable[str] | Mapping[str, float],
        k: int = 10,
        *,
        exclude_self: bool = False,
        annotated_only: bool = False,
        exclude: Iterable[int] = (),
    ) -> SearchResult:
        """Rank catalog items by similarity to ``query`` in the given attribute(s).

        ``query``: a PIL image, an image file path, or embeddings ``[A, D]``.  ``attributes``: a
        name, names with optional ``:weight``, or ``{name: weight}``.  ``exclude_self`` drops the
        catalog item whose file is the query file.  ``annotated_only`` ranks only items annotated
        with every queried attribute (the evaluation's candidate set).  ``exclude``: rows to skip.
        """
        row = None
        labels: dict[str, str] = {}
        if isinstance(query, np.ndarray):
            vectors = query
        else:
            if isinstance(query, (str, os.PathLike)):
                row = self.row_of_path(query)
                if row is not None:
                    labels = self.index.items[row].labels
            vectors = self.embed(query)
        excluded = {int(r) for r in exclude}
        if exclude_self and row is not None:
            excluded.add(row)
        qid = self.index.items[row].id if row is not None else None
        return self._search(vectors, attributes, k, excluded, annotated_only, qid, labels)

    def search_item(
        self,
        item_id: str,
        attributes: str | Iterable[str] | Mapping[str, float],
        k: int = 10,
        *,
        exclude_self: bool = False,
        annotated_only: bool = False,
    ) -> SearchResult:
        """Rank items by similarity to catalog item ``item_id`` (its stored embeddings; no model)."""
        row = self.row(item_id)
        excluded = {row} if exclude_self else set()
        item = self.index.items[row]
        return self._search(self.item_vectors(row), attributes, k, excluded, annotated_only, item.id, item.labels)

    def _search(self, vectors, attributes, k, excluded, annotated_only, query_id, query_labels) -> SearchResult:
        started = time.perf_counter()
        weights = parse_attribute_weights(attributes, self.attributes)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise QueryError(f"k must be a positive integer, got {k!r}")
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(self.attributes), self.index.dim):
            raise QueryError(
                f"query embeddings must be [{len(self.attributes)}, {self.index.dim}], got {list(vectors.shape)}"
            )
        attrs = [(self._attribute(name), name, w) for name, w in weights.items()]
        allowed = None
        if annotated_only:
            allowed = np.arange(len(self.index), dtype=np.int64)
            for _, name, _ in attrs:
                allowed = np.intersect1d(allowed, self.index.labelled_rows(name), assume_unique=True)
        excluded_rows = np.asarray(sorted(r for r in excluded if 0 <= r < len(self.index)), dtype=np.int64)
        if allowed is None:
            n_avail = len(self.index) - len(excluded_rows)
        else:
            n_avail = len(allowed) - int(np.isin(excluded_rows, allowed).sum())
        k_eff = min(int(k), n_avail)
        if k_eff == 0:
            rows = np.zeros(0, np.int64)
            per = np.zeros((len(attrs), 0), np.float32)
            total = np.zeros(0)
        elif self.index.config.exact:
            rows, per, total = self._exact(vectors, attrs, k_eff, allowed, excluded_rows)
        else:
            rows, per, total = self._approximate(vectors, attrs, k_eff, allowed, excluded_rows)
        hits = []
        for rank, (r, t) in enumerate(zip(rows, total), start=1):
            item = self.index.items[int(r)]
            hits.append(
                Hit(
                    rank=rank,
                    row=int(r),
                    id=item.id,
                    path=item.path,
                    score=float(t),
                    scores={name: float(per[j, rank - 1]) for j, (_, name, _) in enumerate(attrs)},
                    labels=item.labels,
                    correct=_correct(query_labels, item.labels, weights),
                )
            )
        return SearchResult(
            hits=hits,
            weights=weights,
            k=int(k),
            exact=self.index.config.exact,
            seconds=time.perf_counter() - started,
            query_id=query_id,
            query_labels=dict(query_labels),
            candidates=n_avail,
        )

    def _rescore(self, vectors, attrs, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact per-attribute scores ``[n_attrs, n]`` float32 and weighted totals ``[n]`` float64."""
        per = np.stack([exact_scores(self.index.vectors(a)[rows], vectors[a]) for a, _, _ in attrs])
        total = np.zeros(len(rows), dtype=np.float64)
        for j, (_, _, w) in enumerate(attrs):
            total += w * per[j].astype(np.float64)
        return per, total

    def _top(self, vectors, attrs, rows: np.ndarray, k: int):
        per, total = self._rescore(vectors, attrs, rows)
        order = rank_order(total, rows)[:k]
        return rows[order], per[:, order], total[order]

    def _scan(self, vectors, attrs, k: int, allowed: np.ndarray | None, excluded: np.ndarray):
        """Exact top k by scanning every (allowed, not excluded) row, block by block."""
        n = len(self.index)
        pool = np.arange(n, dtype=np.int64) if allowed is None else allowed
        best = np.zeros(0, np.int64)
        for lo in range(0, len(pool), SCAN_CHUNK):
            block = pool[lo : lo + SCAN_CHUNK]
            if len(excluded):
                block = block[~np.isin(block, excluded)]
            best, _, _ = self._top(vectors, attrs, np.concatenate([best, block]), k)
        return self._top(vectors, attrs, np.sort(best), k)

    def _exact(self, vectors, attrs, k: int, allowed, excluded: np.ndarray):
        if len(attrs) > 1 or allowed is not None:
            return self._scan(vectors, attrs, k, allowed, excluded)
        a, _, _ = attrs[0]
        n = len(self.index)
        want = min(n, k + len(excluded) + max(16, k))
        faiss_scores, faiss_rows = self.index.faiss_index(a).search(vectors[a][None], want)
        listed = faiss_rows[0] >= 0
        rows = faiss_rows[0][listed].astype(np.int64)
        border = float(faiss_scores[0][listed][-1]) if listed.any() else -np.inf
        if len(excluded):
            rows = rows[~np.isin(rows, excluded)]
        top_rows, per, total = self._top(vectors, attrs, rows, k)
        covered_all = int(listed.sum()) >= n
        if not covered_all and (len(top_rows) < k or not float(per[0, -1]) > border + BORDER_EPS):
            return self._scan(vectors, attrs, k, None, excluded)  # an item past the shortlist may tie the k-th
        return top_rows, per, total

    def _approximate(self, vectors, attrs, k: int, allowed, excluded: np.ndarray):
        want = min(len(self.index), (k + len(excluded)) * self.index.config.rerank)
        found = []
        for a, _, _ in attrs:
            index = self.index.faiss_index(a)
            params = _search_params(index, self.index.config, want, allowed)
            _, rows = index.search(vectors[a][None], want, params=params)
            found.append(rows[0][rows[0] >= 0])
        rows = np.unique(np.concatenate(found)).astype(np.int64)
        if len(excluded):
            rows = rows[~np.isin(rows, excluded)]
        if len(rows) < k:  # the probed cells / graph held too few (allowed) items: scan them exactly
            return self._scan(vectors, attrs, k, allowed, excluded)
        return self._top(vectors, attrs, rows, k)


def _search_params(index, config: IndexConfig, k: int, allowed: np.ndarray | None):
    """FAISS search parameters of an approximate index (nprobe / efSearch), restricted to the
    ``allowed`` rows when given.  Per call, so concurrent searches never share mutable settings."""
    faiss = import_faiss()

    selector = None if allowed is None else faiss.IDSelectorBatch(allowed.astype(np.int64))
    inner = faiss.downcast_index(index)
    if hasattr(inner, "hnsw"):
        params = faiss.SearchParametersHNSW(efSearch=max(config.ef_search, k))
    elif hasattr(inner, "nprobe"):
        params = faiss.SearchParametersIVF(nprobe=min(config.nprobe, inner.nlist))
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
        params._selector = selector  # keep the selector alive as long as the parameters
    return params


def _correct(query_labels: Mapping[str, str], labels: Mapping[str, str], weights: Mapping[str, float]) -> bool | None:
    """True when the item has the query's value of every queried attribute, False when one differs,
    None when a label is unknown on either side."""
    verdict = True
    for name in weights:
        if name not in query_labels or name not in labels:
            return None
        verdict = verdict and query_labels[name] == labels[name]
    return verdict


def load_query_image(image: Image.Image | str | os.PathLike) -> Image.Image:
    """A PIL image as RGB, opening a path with the data layer's checked loader."""
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    from agman.data.images import load_image

    if not Path(image).exists():  # a path the user typed: a usage error, unlike a catalog image gone missing
        raise NotFoundError(f"query image not found: {image}")
    return load_image(image)
