"""What a query is made of, checked once where it enters the Retriever: the attributes with their
weights (:class:`AttributeWeights`, parsed from ``name[:weight]``), the query image and ``k``.

What a query may be (:func:`query_input`):

* a path (``str`` / ``os.PathLike``) or a PIL image: an image;
* a numpy array with 3 dimensions, ``uint8`` ``H x W x 3`` (RGB) or ``H x W x 4`` (RGBA): an image;
* a torch tensor ``3 x H x W`` (or ``1 x 3 x H x W``), float in [0, 1] or ``uint8`` (torchvision's
  convention): an image;
* a 2-D array or tensor ``[A, D]`` (e.g. :meth:`Retriever.embed`'s output): precomputed embeddings.

Images have 3 dimensions (4 for a batch of one) and embeddings 2, so the two never collide; an
array that is neither is refused with its shape and dtype.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from agman.errors import NotFoundError, UsageError

MAX_K = 1000
"""Largest ``k`` the command line takes (the service's cap, ``--max-k``, is its own limit)."""

DEFAULT_K = 10
"""Results of a search that does not say how many (the CLI's ``--k``, the service's ``k``)."""

MAX_WEIGHT = 1e6
"""Largest attribute weight: scores are sums of weight x similarity (|similarity| <= 1), so with
this bound they stay far from float overflow however many attributes are queried.  Only the
ratios between weights change a ranking, so nothing is lost."""


class QueryError(UsageError, ValueError):
    """A query the index cannot answer as asked (unknown attribute, bad weight, bad k, ...)."""


class UnknownItemError(QueryError):
    """No catalog item has the given id (HTTP 404)."""

    @classmethod
    def of(cls, ids: Sequence[str], where: str, consequence: str = "") -> UnknownItemError:
        """The error for ``ids`` (the first five named) missing from the index ``where``."""
        shown = ", ".join(repr(i) for i in ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        return cls(f"no item {shown} in {where}{'; ' + consequence if consequence else ''}")


def attribute_index(name: str, known: Sequence[str]) -> int:
    """Position of attribute ``name`` among the index's attributes ``known``."""
    try:
        return list(known).index(name)
    except ValueError:
        raise QueryError(f"unknown attribute {name!r}; this index has: {', '.join(known)}") from None


@dataclass(frozen=True)
class WeightedAttribute:
    """One queried attribute: its position ``index`` among the index's attributes, name, weight > 0."""

    index: int
    name: str
    weight: float


@dataclass(frozen=True)
class AttributeWeights:
    """The attributes of one query with their weights: an item's score is ``sum_a w_a <q_a, x_a>``
    (paper §2.1).  Built by :meth:`parse` only, so every term is known, positive and unique."""

    terms: tuple[WeightedAttribute, ...]

    @classmethod
    def parse(
        cls, spec: str | Iterable[str] | Mapping[str, float] | AttributeWeights, known: Sequence[str]
    ) -> AttributeWeights:
        """``'neckline_design:2'``, ``['a', 'b:0.5']``, ``'a:1,b:2'`` or ``{'a': 1.0}`` -> weights.

        A missing weight is 1.  Weights must be numbers in ``[0, MAX_WEIGHT]``, at least one > 0;
        names must be known and appear once.  Zero-weight attributes are dropped.  An ``AttributeWeights`` is
        returned as it is (it was checked when it was parsed).
        """
        if isinstance(spec, cls):
            return spec
        pairs = _pairs(spec)
        if not pairs:
            raise QueryError(f"no attribute given; choose from: {', '.join(known)}")
        terms: dict[str, WeightedAttribute] = {}
        for name, raw in pairs:
            index = attribute_index(name, known)
            if name in terms:
                raise QueryError(f"attribute {name!r} is given twice")
            try:
                weight = float(raw)
            except (TypeError, ValueError, OverflowError):
                raise QueryError(f"weight of {name!r} must be a number, got {raw!r:.40}") from None
            if not math.isfinite(weight) or not 0 <= weight <= MAX_WEIGHT:
                raise QueryError(
                    f"weight of {name!r} must be a finite number from 0 to {MAX_WEIGHT:g}, got {raw!r:.40}"
                )
            terms[name] = WeightedAttribute(index, name, weight)
        kept = tuple(t for t in terms.values() if t.weight > 0)
        if not kept:
            raise QueryError("at least one attribute weight must be above 0")
        return cls(kept)

    def __iter__(self) -> Iterator[WeightedAttribute]:
        return iter(self.terms)

    def __len__(self) -> int:
        return len(self.terms)

    def as_dict(self) -> dict[str, float]:
        """``{name: weight}`` in query order."""
        return {t.name: t.weight for t in self.terms}


def _pairs(spec) -> list[tuple[str, object]]:
    """``(name, raw weight)`` pairs of a mapping or of ``name[:weight]`` texts (comma-separated or listed)."""
    if isinstance(spec, Mapping):
        return [(str(k), v) for k, v in spec.items()]
    pairs = []
    for part in [spec] if isinstance(spec, str) else list(spec):
        for piece in str(part).split(","):
            piece = piece.strip()
            if piece:
                name, sep, weight = piece.rpartition(":")
                pairs.append((name.strip(), weight.strip()) if sep else (piece, "1"))
    return pairs


def load_query_image(image: Image.Image | str | os.PathLike) -> Image.Image:
    """A PIL image as RGB, opening a path with the data layer's checked loader."""
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    from agman.data.images import load_image

    if not Path(image).exists():  # a path the user typed: a usage error, unlike a catalog image gone missing
        raise NotFoundError(f"query image not found: {image}")
    return load_image(image)


def query_input(query) -> Image.Image | str | os.PathLike | np.ndarray:
    """A query as a PIL image, a path, or embeddings ``[A, D]`` float32 (see the module docstring)."""
    if isinstance(query, (Image.Image, str, os.PathLike)):
        return query
    if type(query).__module__.startswith("torch"):
        return _tensor_query(query)
    if isinstance(query, np.ndarray):
        if query.ndim == 2 and query.dtype.kind == "f":
            return query
        if query.ndim == 3 and query.dtype == np.uint8 and query.shape[-1] in (3, 4):
            return Image.fromarray(query, "RGB" if query.shape[-1] == 3 else "RGBA")
        raise QueryError(
            f"a numpy query must be an image (uint8 H x W x 3 or x 4) or embeddings (float [A, D]); "
            f"got {query.dtype} {list(query.shape)}"
        )
    raise QueryError(f"a query must be an image path, a PIL image, a numpy array or a torch tensor, "
                     f"not {type(query).__name__}")


def _tensor_query(tensor) -> Image.Image | np.ndarray:
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise QueryError(f"unsupported query type {type(tensor).__name__}")
    t = tensor.detach().cpu()
    if t.ndim == 2 and t.is_floating_point():
        return t.float().numpy()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim == 3 and t.shape[0] == 3 and (t.dtype == torch.uint8 or t.is_floating_point()):
        if t.is_floating_point():
            if not bool(torch.isfinite(t).all()) or float(t.min()) < 0 or float(t.max()) > 1:
                raise QueryError("a float image tensor must hold values in [0, 1] (torchvision's convention)")
            t = (t * 255).round().to(torch.uint8)
        return Image.fromarray(t.permute(1, 2, 0).contiguous().numpy(), "RGB")
    raise QueryError(
        "a tensor query must be an image (3 x H x W or 1 x 3 x H x W, float in [0, 1] or uint8) or embeddings "
        f"(float [A, D]); got {str(t.dtype).replace('torch.', '')} {list(t.shape)}"
    )


def query_image(image) -> Image.Image:
    """Any accepted image form as an RGB PIL image (paths through the data layer's loader)."""
    image = query_input(image)
    if isinstance(image, np.ndarray):
        raise QueryError(f"expected an image, got embeddings {list(image.shape)}")
    return load_query_image(image)
