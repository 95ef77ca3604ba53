"""Training losses (§2.4): Eq. 7 attribute classification, Eq. 8 triplet ranking, Eq. 9 weighting,
and CSN's mask / embedding regularisers.

:class:`TripletCriterion` takes the model's output for ``3B`` images in the order anchors, positives,
negatives (one pass of 3B, or three passes of B joined with :meth:`ModelOutput.cat`) and splits it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agman.errors import InvalidValueError
from agman.models.output import ModelOutput

WEIGHTINGS = ("released", "learned", "uncertainty", "fixed")
#: Former names still read from stored configs and checkpoints.
WEIGHTING_ALIASES = {"dynamic": "learned"}


def triplet_ranking_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 0.2) -> Tensor:
    """Eq. 8 with the released code's sign: ``mean(max(0, m + s(a, n) - s(a, p)))``.

    ``s`` is the cosine similarity; the embeddings are unit-norm so it is the dot product.  (Eq. 8c
    as printed swaps the two similarities, which would reward pulling the negative closer.)  It is
    computed as the released code does, ``MarginRankingLoss(m)(s(a, n), s(a, p), -1)``, so the same
    embeddings give the same floats.
    """
    anchor, positive, negative = anchor.float(), positive.float(), negative.float()
    s_ap = torch.sum(anchor * positive, dim=-1)
    s_an = torch.sum(anchor * negative, dim=-1)
    return F.margin_ranking_loss(s_an, s_ap, torch.full_like(s_an, -1.0), margin=margin)


def attribute_classification_loss(logits: Tensor, attribute_ids: Tensor) -> Tensor:
    """Eq. 7 for one set of images: binary cross-entropy with logits of ``logits [N, n]`` against the
    one-hot attribute (mean over rows and attributes).

    Every image of a triplet is annotated with the triplet's attribute, so the class is the
    attribute whatever its value.  :func:`triplet_classification_loss` averages it over the three.
    """
    target = F.one_hot(attribute_ids, logits.shape[-1]).to(torch.float32)
    return F.binary_cross_entropy_with_logits(logits.float(), target)


def triplet_classification_loss(logits: Tensor, attribute_ids: Tensor) -> Tensor:
    """Eq. 7 averaged over the triplet's images, as the released Tripletnet does:
    ``(BCE(anchor) + BCE(far) + BCE(close)) / 3`` for ``logits [3B, n]`` in the order anchors,
    positives, negatives and ``attribute_ids [B]``."""
    anchor, positive, negative = logits.chunk(3)
    parts = (anchor, negative, positive)  # the released order of the sum
    return sum(attribute_classification_loss(p, attribute_ids) for p in parts) / 3.0


def mask_l1_penalty(masks: Tensor, batch: int) -> Tensor:
    """CSN: the L1 norm of one image set's mask rows ``[B, D]``, averaged over anchor, positive and
    negative (``masks [3B, D]``), divided by the triplet batch size (Veit et al.'s tripletnet.py/main.py)."""
    return masks.float().abs().sum() / 3 / batch


def embedding_l2_penalty(general: Tensor, batch: int) -> Tensor:
    """CSN: the L2 (Frobenius) norm of one image set's attribute-independent embeddings ``[B, D]``,
    averaged over anchor, positive and negative, divided by sqrt(batch size)."""
    return sum(part.float().norm(2) for part in general.chunk(3)) / 3 / math.sqrt(batch)


def alignment_loss(global_part: Tensor, local_part: Tensor) -> Tensor:
    """ASEN++'s alignment: ``mean(max(0, 1 - cos(g, l)))`` per image set, summed over anchor, positive and
    negative (``[3B, D]`` each, in that order)."""
    cos = F.cosine_similarity(global_part.float(), local_part.float(), dim=-1)
    return sum(torch.clamp(1.0 - part, min=0).mean() for part in cos.chunk(3))


def weighting_mode(name: str) -> str:
    """``name`` as one of :data:`WEIGHTINGS` (former names mapped), or InvalidValueError."""
    mode = WEIGHTING_ALIASES.get(name, name)
    if mode not in WEIGHTINGS:
        raise InvalidValueError(f"loss weighting must be one of {', '.join(WEIGHTINGS)}, got {name!r}")
    return mode


class LossWeighting(nn.Module):
    """How the task losses (``classification``, ``triplet``) are combined (Eq. 9 and alternatives).

    ``released``     Eq. 9's form ``sum_i 0.5 * exp(w_i) * L_i + w_i`` with ``w_i = init`` held constant
                     (a buffer, not a parameter): the released code builds ``AutomaticWeightedLoss``
                     with ``w = 1`` but never gives it to the optimizer, so every term is ``0.5 e L_i``
                     plus the constant 1 (docs/training.md).
    ``learned``      Eq. 9 as printed, ``w_i`` learned (init ``init``; 0 in the paper).  ``dL/dw_i =
                     0.5 e^{w_i} L_i + 1 > 0`` always, so the optimizer drives every ``w_i`` down without
                     bound (``dynamic`` is read as this).
    ``uncertainty``  Kendall et al.: ``sum_i 0.5 * exp(-s_i) * L_i + 0.5 * s_i``, ``s_i`` learned
                     (init ``init``); it has a finite optimum ``s_i = log L_i``.
    ``fixed``        ``sum_i weight_i * L_i`` with ``weights`` (default 1 each).

    The order of the terms does not change the total (each weight belongs to its own term); the
    released code calls ``awl(L_triplet, L_cls)``, here the state holds ``(classification, triplet)``.
    """

    def __init__(self, terms: tuple[str, ...], mode: str = "released", init: float = 0.0,
                 weights: dict[str, float] | None = None):
        super().__init__()
        self.terms = tuple(terms)
        self.mode = weighting_mode(mode)
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.terms))
        if unknown:
            raise InvalidValueError(f"loss weights given for unknown term(s) {', '.join(unknown)}; "
                                    f"terms: {', '.join(self.terms)}")
        self.fixed = {t: float(weights.get(t, 1.0)) for t in self.terms}
        start = torch.full((len(self.terms),), float(init))
        if self.mode == "fixed":
            self.log_weights = None
        elif self.mode == "released":
            self.register_buffer("log_weights", start)
        else:
            self.log_weights = nn.Parameter(start)

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        total = torch.zeros((), device=next(iter(losses.values())).device)
        for i, term in enumerate(self.terms):
            value = losses[term]
            if self.mode == "fixed":
                total = total + self.fixed[term] * value
            elif self.mode in ("released", "learned"):
                w = self.log_weights[i]
                total = total + 0.5 * torch.exp(w) * value + w
            else:
                s = self.log_weights[i]
                total = total + 0.5 * torch.exp(-s) * value + 0.5 * s
        return total

    def effective_weights(self) -> dict[str, float]:
        """The factor each task loss is multiplied by right now."""
        if self.mode == "fixed":
            return dict(self.fixed)
        w = self.log_weights.detach().float().cpu()
        sign = -1.0 if self.mode == "uncertainty" else 1.0
        return {t: 0.5 * math.exp(sign * float(w[i])) for i, t in enumerate(self.terms)}


@dataclass
class LossOutput:
    """The total to back-propagate and its parts (detached floats are taken by the caller)."""

    total: Tensor
    parts: dict[str, Tensor]


class TripletCriterion(nn.Module):
    """The whole training objective for one batch of triplets.

    ``classification``: add Eq. 7 (only meaningful for models with the classification branch).
    ``mask_l1`` / ``embed_l2``: CSN's regulariser coefficients (5e-4 / 5e-3 in the original;
    0 disables), added outside the weighting.  For a model with ``branches`` (ASEN++ stage 2) the
    triplet term is the global branch's and ``local_weight`` x the local branch's triplet loss plus
    ``align_weight`` x :func:`alignment_loss` are added outside the weighting, as the released
    trainer sums ``GLOBAL_WEIGHT·L_g + LOCAL_WEIGHT·L_l + ALIGN_WEIGHT·L_a``.
    """

    def __init__(self, *, margin: float = 0.2, classification: bool = True, weighting: str = "released",
                 init: float = 0.0, weights: dict[str, float] | None = None, mask_l1: float = 0.0,
                 embed_l2: float = 0.0, local_weight: float = 1.0, align_weight: float = 1.0):
        super().__init__()
        self.margin = float(margin)
        self.classification = bool(classification)
        terms = ("classification", "triplet") if self.classification else ("triplet",)
        self.weighting = LossWeighting(terms, weighting, init, weights)
        self.mask_l1 = float(mask_l1)
        self.embed_l2 = float(embed_l2)
        self.local_weight, self.align_weight = float(local_weight), float(align_weight)

    def forward(self, output: ModelOutput, attribute_ids: Tensor) -> LossOutput:
        """``output`` for ``[anchors; positives; negatives]`` (3B rows), ``attribute_ids [B]``."""
        batch = attribute_ids.shape[0]
        branches = output.branches  # ASEN++: the triplet term scores the global branch, the local one is added
        anchor, positive, negative = (output.embedding if branches is None else branches[:, 0]).chunk(3)
        parts = {"triplet": triplet_ranking_loss(anchor, positive, negative, self.margin)}
        if self.classification:
            if output.attribute_logits is None:
                raise InvalidValueError("the classification loss needs a model with a classification branch "
                                 "(set loss.classification=false or model.classification=true)")
            parts["classification"] = triplet_classification_loss(output.attribute_logits, attribute_ids)
        total = self.weighting(parts)
        if branches is not None:
            parts["local"] = triplet_ranking_loss(*branches[:, 1].chunk(3), self.margin)
            parts["align"] = alignment_loss(branches[:, 0], branches[:, 1])
            total = total + self.local_weight * parts["local"] + self.align_weight * parts["align"]
        if self.mask_l1 or self.embed_l2:
            if output.masks is None or output.general_embedding is None:
                raise InvalidValueError("mask_l1/embed_l2 regularisers need a model with attribute masks "
                                        "(CSN, agman-official)")
            reg = self.mask_l1 * mask_l1_penalty(output.masks, batch)
            reg = reg + self.embed_l2 * embedding_l2_penalty(output.general_embedding, batch)
            parts["regularization"] = reg
            total = total + reg
        parts["total"] = total
        return LossOutput(total=total, parts=parts)
