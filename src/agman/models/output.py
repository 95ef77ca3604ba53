"""ModelOutput: what every attribute model returns (embedding, Eq. 7 logits, attention map, masks)."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class ModelOutput:
    """The result of ``model(images, attribute_ids)``.

    ``embedding``          ``[B, D]`` unit L2 norm; similarity is the dot product (§2.1).
    ``attribute_logits``   ``[B, n]`` logits over *attributes* of the classification branch
                           (Eq. 7, BCE-with-logits against the one-hot attribute); ``None``
                           when the model has no such branch.
    ``attention``          ``[B, h, w]`` spatial attention map on the feature grid, summing to 1
                           over space (ASA's softmax; a normalised copy of AttnFashion's sigmoid
                           gate); ``None`` when the model has none.
    ``masks``              ``[B, D']`` the per-sample attribute mask rows after ReLU (CSN and the
                           released AG-MAN code): CSN's L1 mask penalty is ``masks.norm(p=1)``.
    ``general_embedding``  ``[B, D']`` the attribute-independent vector the mask multiplies
                           (before masking and normalisation): CSN's L2 embedding penalty is its
                           norm.  ``None`` for models without masks.
    ``branches``           ``[B, 2, D]`` the unit global and local embeddings of a two-branch model
                           (ASEN++), whose stage-2 losses score each branch; ``None`` otherwise.

    Inside the models the same class also carries an attribute axis (``[B, K, ...]``) between
    :meth:`AttributeModel.head` and ``forward``; ``select`` drops it.
    """

    embedding: Tensor
    attribute_logits: Tensor | None = None
    attention: Tensor | None = None
    masks: Tensor | None = None
    general_embedding: Tensor | None = None
    branches: Tensor | None = None

    def select(self, k: int) -> ModelOutput:
        """Take attribute slot ``k`` of the per-attribute fields (``[B, K, ...] -> [B, ...]``)."""
        per_attribute = ("embedding", "attention", "masks", "general_embedding", "branches")
        changes = {
            f.name: getattr(self, f.name)[:, k]
            for f in fields(self)
            if f.name in per_attribute and getattr(self, f.name) is not None
        }
        return replace(self, **changes)

    @classmethod
    def cat(cls, outputs: list[ModelOutput] | tuple[ModelOutput, ...]) -> ModelOutput:
        """Join the outputs of several passes along the batch (e.g. anchors, positives, negatives run
        as three passes of B, as the released code does, into the ``3B`` rows of one pass)."""
        joined = {}
        for f in fields(cls):
            parts = [getattr(o, f.name) for o in outputs]
            if any(p is None for p in parts):
                if not all(p is None for p in parts):
                    raise ValueError(f"cannot join outputs: {f.name} is missing in some of them")
                joined[f.name] = None
            else:
                joined[f.name] = torch.cat(parts)
        return cls(**joined)

    def chunk(self, parts: int) -> list[ModelOutput]:
        """Split along the batch into ``parts`` equal outputs (the inverse of :meth:`cat`)."""
        split = {f.name: getattr(self, f.name).chunk(parts) for f in fields(self) if getattr(self, f.name) is not None}
        return [replace(self, **{name: pieces[i] for name, pieces in split.items()}) for i in range(parts)]
