"""Evaluation (§3.1): ASFR MAP per attribute and overall, Recall@k / Precision@k, TR accuracy.

For attribute ``a`` every query row ``(image, a, value)`` of a split is ranked against every
candidate row ``(image', a, value')`` of the same attribute by the dot product of their
``a``-embeddings (cosine: embeddings are unit-norm), computed as float32 matrix products of fixed
query chunks (:data:`QUERY_CHUNK`).  Order: score descending, ties by candidate row position
ascending (:func:`agman.engine.metrics.rank`).  A candidate is relevant when ``value' == value``.
:func:`rank_split` returns the order evaluation uses for one query, computed the same way.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from agman.data.spec import DatasetError, DatasetSpec, Split
from agman.engine import metrics
from agman.engine.embed import embed_images
from agman.errors import InvalidValueError

if TYPE_CHECKING:
    from agman.engine.localization import LocalizationResult

log = logging.getLogger(__name__)

QUERY_CHUNK = 1024
"""Queries scored per matrix product; chunk ``k`` always holds an attribute's queries
``[k*QUERY_CHUNK, (k+1)*QUERY_CHUNK)``, so a single query's scores come from the same product."""


# --------------------------------------------------------------------------- ASFR
def attribute_rows(split: Split, attribute: int) -> tuple[np.ndarray, np.ndarray]:
    """Row positions in ``split.queries`` and ``split.candidates`` of ``attribute``."""
    return (np.flatnonzero(split.queries[:, 1] == attribute), np.flatnonzero(split.candidates[:, 1] == attribute))


def _vectors(embeddings: np.ndarray, images: np.ndarray, attribute: int) -> np.ndarray:
    return np.ascontiguousarray(embeddings[images, attribute], dtype=np.float32)


def iter_attribute_rankings(
    embeddings: np.ndarray, split: Split, attribute: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each query chunk of ``attribute``: ``(query rows, order [q, C], scores [q, C])``, where
    ``order`` holds positions into the attribute's candidate rows (see :func:`attribute_rows`)."""
    q_rows, c_rows = attribute_rows(split, attribute)
    cands = _vectors(embeddings, split.candidates[c_rows, 0], attribute)
    for start in range(0, len(q_rows), QUERY_CHUNK):
        rows = q_rows[start:start + QUERY_CHUNK]
        scores = _vectors(embeddings, split.queries[rows, 0], attribute) @ cands.T
        yield rows, metrics.rank(scores), scores


def rank_split(
    embeddings: np.ndarray, split: Split, attribute: int, query_row: int, *, return_scores: bool = False
):
    """The candidates of ``split.queries[query_row]`` for ``attribute`` in evaluation's rank order.

    Returns candidate *image* indices (``split.candidates[:, 0]``) in rank order (and, with
    ``return_scores``, their float32 scores).  Ties: candidate row position ascending.  The scores
    come from the same chunked product as :func:`evaluate_asfr`, so the order is identical.
    """
    query_row = int(query_row)
    if not 0 <= query_row < len(split.queries):
        raise IndexError(f"query_row {query_row} outside split {split.name!r} ({len(split.queries)} queries)")
    if int(split.queries[query_row, 1]) != attribute:
        raise ValueError(f"query row {query_row} is for attribute {int(split.queries[query_row, 1])}, not {attribute}")
    q_rows, c_rows = attribute_rows(split, attribute)
    position = int(np.searchsorted(q_rows, query_row))
    start = position - position % QUERY_CHUNK
    rows = q_rows[start:start + QUERY_CHUNK]
    cands = _vectors(embeddings, split.candidates[c_rows, 0], attribute)
    scores = (_vectors(embeddings, split.queries[rows, 0], attribute) @ cands.T)[position - start]
    order = metrics.rank(scores)
    images = split.candidates[c_rows[order], 0]
    return (images, scores[order]) if return_scores else images


@dataclass
class ASFRResult:
    """Per-query AP (aligned with ``split.queries`` rows) and everything derived from it."""

    attribute_names: list[str]
    query_attributes: np.ndarray
    ap: np.ndarray
    n_relevant: np.ndarray
    n_candidates: np.ndarray
    recall: dict[int, np.ndarray] = field(default_factory=dict)
    precision: dict[int, np.ndarray] = field(default_factory=dict)

    def _mean(self, values: np.ndarray, attribute: int | None = None) -> float:
        if attribute is not None:
            values = values[self.query_attributes == attribute]
        return float(values.mean()) if values.size else float("nan")

    @property
    def overall_map(self) -> float:
        """Mean AP over all queries (the paper's overall MAP)."""
        return self._mean(self.ap)

    @property
    def evaluated_attributes(self) -> list[int]:
        return [a for a in range(len(self.attribute_names)) if np.any(self.query_attributes == a)]

    @property
    def per_attribute_map(self) -> dict[str, float]:
        return {self.attribute_names[a]: self._mean(self.ap, a) for a in self.evaluated_attributes}

    @property
    def random_map(self) -> dict[str, float]:
        """Expected MAP of a random ranking, per attribute and ``'overall'``."""
        expected = metrics.random_ranking_ap(self.n_relevant, self.n_candidates)
        out = {self.attribute_names[a]: self._mean(expected, a) for a in self.evaluated_attributes}
        out["overall"] = self._mean(expected)
        return out

    def recall_at(self, k: int, attribute: int | None = None) -> float:
        return self._mean(self.recall[k], attribute)

    def precision_at(self, k: int, attribute: int | None = None) -> float:
        return self._mean(self.precision[k], attribute)

    def to_dict(self) -> dict:
        """Plain numbers (for checkpoints, JSON and tables)."""
        return {
            "map": self.overall_map,
            "map_per_attribute": self.per_attribute_map,
            "random_map": self.random_map,
            "recall": {int(k): self.recall_at(k) for k in self.recall},
            "precision": {int(k): self.precision_at(k) for k in self.precision},
            "recall_per_attribute": {
                self.attribute_names[a]: {int(k): self.recall_at(k, a) for k in self.recall}
                for a in self.evaluated_attributes
            },
            "precision_per_attribute": {
                self.attribute_names[a]: {int(k): self.precision_at(k, a) for k in self.precision}
                for a in self.evaluated_attributes
            },
            "queries": int(len(self.ap)),
            "queries_per_attribute": {
                self.attribute_names[a]: int((self.query_attributes == a).sum()) for a in self.evaluated_attributes
            },
        }


def evaluate_asfr(
    embeddings: np.ndarray, split: Split, attribute_names: list[str] | None = None, ks=metrics.DEFAULT_KS
) -> ASFRResult:
    """ASFR evaluation of ``embeddings [N, A, D]`` (indexed by ``split``'s image indices)."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 3 or embeddings.shape[0] < len(split):
        raise ValueError(f"embeddings must be [N >= {len(split)}, A, D], got {embeddings.shape}")
    n_attr = embeddings.shape[1]
    names = list(attribute_names) if attribute_names is not None else [str(a) for a in range(n_attr)]
    n_q = len(split.queries)
    ap = np.zeros(n_q)
    n_relevant = np.zeros(n_q, dtype=np.int64)
    n_candidates = np.zeros(n_q, dtype=np.int64)
    recall = {int(k): np.zeros(n_q) for k in ks}
    precision = {int(k): np.zeros(n_q) for k in ks}
    for a in np.unique(split.queries[:, 1]):
        a = int(a)
        if a >= n_attr:
            raise ValueError(f"split {split.name!r} has queries for attribute {a}; embeddings have {n_attr}")
        _, c_rows = attribute_rows(split, a)
        c_values = split.candidates[c_rows, 2]
        for rows, order, _ in iter_attribute_rankings(embeddings, split, a):
            ranked = c_values[order] == split.queries[rows, 2][:, None]
            ap[rows] = metrics.ap_of_ranked(ranked)
            n_relevant[rows] = ranked.sum(axis=1)
            n_candidates[rows] = len(c_rows)
            r, p = metrics.recall_precision_at_k(ranked, ks)
            for k in recall:
                recall[k][rows], precision[k][rows] = r[k], p[k]
    return ASFRResult(names, split.queries[:, 1].copy(), ap, n_relevant, n_candidates, recall, precision)


# --------------------------------------------------------------------------- TR
@dataclass
class TRResult:
    """Triplet relation prediction: accuracy and average Eq. 8 loss, overall and per attribute."""

    attribute_names: list[str]
    correct: dict[int, np.ndarray]
    losses: dict[int, np.ndarray]

    @property
    def accuracy(self) -> float:
        allc = np.concatenate(list(self.correct.values())) if self.correct else np.zeros(0)
        return float(allc.mean()) if allc.size else float("nan")

    @property
    def average_loss(self) -> float:
        alll = np.concatenate(list(self.losses.values())) if self.losses else np.zeros(0)
        return float(alll.mean()) if alll.size else float("nan")

    @property
    def per_attribute_accuracy(self) -> dict[str, float]:
        return {self.attribute_names[a]: float(c.mean()) if c.size else float("nan") for a, c in self.correct.items()}

    def to_dict(self) -> dict:
        return {
            "tr_accuracy": self.accuracy,
            "tr_loss": self.average_loss,
            "tr_accuracy_per_attribute": self.per_attribute_accuracy,
            "triplets": int(sum(len(c) for c in self.correct.values())),
        }


def evaluate_triplets(
    embeddings: np.ndarray, split: Split, attribute_names: list[str] | None = None, margin: float = 0.2
) -> TRResult:
    """TR evaluation of a split with triplet lists: rows ``(anchor, far, close)`` per attribute."""
    if not split.triplets:
        raise ValueError(f"split {split.name!r} has no triplet lists")
    n_attr = embeddings.shape[1]
    names = list(attribute_names) if attribute_names is not None else [str(a) for a in range(n_attr)]
    correct, losses = {}, {}
    for a, rows in sorted(split.triplets.items()):
        e = embeddings[:, a]
        anchor, far, close = (np.asarray(e[rows[:, i]], dtype=np.float64) for i in range(3))
        s_close = (anchor * close).sum(-1)
        s_far = (anchor * far).sum(-1)
        correct[a] = s_close > s_far
        losses[a] = metrics.triplet_margin_losses(s_close, s_far, margin)
    return TRResult(names, correct, losses)


# --------------------------------------------------------------------------- models and checkpoints
@dataclass
class EvalResult:
    """What evaluating a model on one split gives."""

    split: str
    attribute_names: list[str]
    asfr: ASFRResult | None = None
    tr: TRResult | None = None
    seconds: float = 0.0
    images: int = 0
    dataset: str = ""  # DatasetSpec.name (which published tables apply: agman.engine.published)
    embeddings: np.ndarray | None = field(default=None, repr=False)  # [N, A, D] the split's, for pictures
    localization: LocalizationResult | None = None  # attention scores, where the split has boxes

    @property
    def score(self) -> float:
        """The model-selection score: overall MAP (ASFR) or TR accuracy."""
        if self.asfr is not None:
            return self.asfr.overall_map
        return self.tr.accuracy if self.tr is not None else float("nan")

    def to_dict(self) -> dict:
        out = {"split": self.split, "score": self.score, "seconds": self.seconds, "images": self.images}
        if self.asfr is not None:
            out.update(self.asfr.to_dict())
        if self.tr is not None:
            out.update(self.tr.to_dict())
        if self.localization is not None:
            out["localization"] = self.localization.to_dict()
        return out


def referenced_images(split: Split) -> np.ndarray:
    """Sorted indices of the images a split's queries, candidates and triplets use."""
    parts = [split.queries[:, 0], split.candidates[:, 0]]
    parts += [rows.reshape(-1) for rows in (split.triplets or {}).values()]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def embed_split(
    model: torch.nn.Module,
    spec: DatasetSpec,
    split: str,
    *,
    input_size: int,
    crop_ratio: float,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    workers: int = 0,
    progress: bool = False,
    amp: bool = False,
) -> np.ndarray:
    """``[N, A, D]`` float32 embeddings of a split; images no query/candidate/triplet uses stay 0."""
    s = spec.split(split)
    used = referenced_images(s)
    device = torch.device(device)
    out = np.zeros((len(s), model.n_attributes, model.embedding_dim), dtype=np.float32)
    if not len(used):
        return out
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        emb = embed_images(
            model, [s.paths[i] for i in used], spec.root, input_size=input_size, crop_ratio=crop_ratio,
            batch_size=batch_size, device=device, workers=workers, progress=progress,
        )
    out[used] = emb
    return out


def evaluate_embeddings(
    embeddings: np.ndarray, spec: DatasetSpec, split: str, *, ks=metrics.DEFAULT_KS, margin: float = 0.2
) -> EvalResult:
    """ASFR (where the split has queries) and TR (where it has triplet lists) of given embeddings."""
    s = spec.split(split)
    names = spec.attribute_names
    result = EvalResult(split, names, images=len(s))
    if len(s.queries) and len(s.candidates):
        result.asfr = evaluate_asfr(embeddings, s, names, ks)
    if s.triplets:
        result.tr = evaluate_triplets(embeddings, s, names, margin)
    if result.asfr is None and result.tr is None:
        raise DatasetError(f"split {split!r} of {spec.name!r} has neither query/candidate lists nor triplet lists")
    return result


def evaluate_model(
    model: torch.nn.Module, spec: DatasetSpec, split: str, *, ks=metrics.DEFAULT_KS, margin: float = 0.2,
    **embed_options,
) -> EvalResult:
    """Embed a split with ``model`` (one backbone pass per image; ``embed_options`` as for
    :func:`embed_split`: input_size, crop_ratio, batch_size, device, workers, progress, amp) and
    evaluate it."""
    start = time.perf_counter()
    was_training = model.training
    emb = embed_split(model, spec, split, **embed_options)
    model.train(was_training)
    result = evaluate_embeddings(emb, spec, split, ks=ks, margin=margin)
    result.seconds, result.dataset, result.embeddings = time.perf_counter() - start, spec.name, emb
    return result


def evaluate_checkpoint(
    checkpoint: str | Path,
    split: str = "test",
    *,
    data: dict | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = False,
    ks=metrics.DEFAULT_KS,
    localize: bool = True,
    regions: str | Path | None = None,
):
    """Evaluate a checkpoint on ``split`` of the dataset its config names (``data`` entries, e.g.
    ``{"root": ...}``, replace the config's).  Returns ``(EvalResult, CheckpointInfo)``.

    With ``localize`` the model's attention is also scored (``EvalResult.localization``) when the
    split has a regions file (``regions``, default ``<root>/regions_<split>.jsonl``;
    :func:`agman.engine.localization.localization_if_boxed`)."""
    from agman.engine.checkpoint import load_model
    from agman.engine.config import stored_for_eval

    model, info = load_model(checkpoint, device)
    data_cfg, margin = stored_for_eval(info.config, data, source=str(checkpoint))
    spec = data_cfg.open()
    if spec.attribute_names != info.attribute_names:
        raise InvalidValueError(
            f"checkpoint {checkpoint} was trained on attributes {info.attribute_names}; "
            f"dataset {data_cfg.root} has {spec.attribute_names}"
        )
    # bf16 on GPU unless the run trained in fp32 (train.amp: none, as the paper configs): then fp32 too
    amp = torch.device(device).type == "cuda" and (info.config.get("train") or {}).get("amp", "auto") != "none"
    result = evaluate_model(
        model, spec, split, input_size=info.input_size, crop_ratio=info.crop_ratio, batch_size=batch_size,
        device=device, workers=workers, progress=progress, amp=amp, ks=ks, margin=margin,
    )
    if localize:
        from agman.engine.localization import localization_if_boxed

        result.localization = localization_if_boxed(
            model, spec, split, input_size=info.input_size, crop_ratio=info.crop_ratio, regions=regions,
            batch_size=batch_size, device=device, model_name=info.model_name)
    return result, info


# --------------------------------------------------------------------------- baseline
def colour_histogram_embeddings(spec: DatasetSpec, split: str, bins: int = 8) -> np.ndarray:
    """A non-learned baseline: each image's joint RGB histogram (``bins``^3 cells, square-rooted and
    L2-normalised, so the dot product is the Bhattacharyya coefficient), the same for every
    attribute: ``[N, A, bins^3]``."""
    from agman.data.images import load_image

    s = spec.split(split)
    out = np.zeros((len(s), spec.n_attributes, bins ** 3), dtype=np.float32)
    for i in referenced_images(s):
        pixels = np.asarray(load_image(spec.root / s.paths[i]), dtype=np.int64).reshape(-1, 3) * bins // 256
        cells = (pixels[:, 0] * bins + pixels[:, 1]) * bins + pixels[:, 2]
        hist = np.sqrt(np.bincount(cells, minlength=bins ** 3) / len(cells))
        out[i] = hist / max(np.linalg.norm(hist), 1e-12)
    return out
