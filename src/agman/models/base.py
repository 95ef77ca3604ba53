"""AttributeModel: the one interface of every model, ``(images, attribute ids) -> ModelOutput``, and one-pass
``embed_all``."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from agman.errors import InvalidValueError
from agman.models.backbone import LoadReport, ResNetTrunk, load_pretrained
from agman.models.output import ModelOutput

_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # torch >= 2.3


class AttributeModel(nn.Module):
    """Base of all attribute-specific embedding models.

    A subclass splits its computation in two:

    * :meth:`encode` — everything that depends on the image only (the backbone pass, the
      classification branch, attribute-independent projections); run once per image;
    * :meth:`head` — everything that depends on the attribute, for ids shaped ``[B, K]``,
      returning a :class:`ModelOutput` whose per-attribute fields carry the ``K`` axis.

    ``forward`` runs both with ``K = 1``; :meth:`embed_all` runs ``encode`` once and the head with
    all ``A`` attributes, so it equals ``A`` separate calls without ``A`` backbone passes.
    """

    name: str = ""
    description: str = ""
    #: The model's options and their defaults: what ``build_model`` accepts besides ``pretrained``.
    DEFAULTS: dict[str, Any] = {}
    #: Which weights are per-attribute table rows, attribute-side projections and outside the embedding
    #: (:class:`agman.models.extension.AttributeParts`); None: the model cannot be extended.
    ATTRIBUTE_PARTS: Any = None

    def __init__(self, n_attributes: int, pretrained: str | None = "none", **options):
        super().__init__()
        if int(n_attributes) < 1:
            raise InvalidValueError(f"n_attributes must be at least 1, got {n_attributes}")
        self.n_attributes = int(n_attributes)
        self.config = self.resolve_options(options)
        self.embedding_dim = self.config.get("embedding_dim")
        self.pretrained_spec = pretrained
        self.pretrained_report: LoadReport | None = None

    @classmethod
    def resolve_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """``DEFAULTS`` updated with ``options``; unknown names and values of the wrong type are
        ``ValueError``s that name the option (configs come from YAML)."""
        unknown = sorted(set(options) - set(cls.DEFAULTS))
        if unknown:
            raise InvalidValueError(f"model {cls.name!r} takes no option(s) {', '.join(unknown)}; "
                             f"it takes {', '.join(sorted(cls.DEFAULTS))} and pretrained")
        resolved = dict(cls.DEFAULTS)
        for key, value in options.items():
            default = cls.DEFAULTS[key]
            kind = type(default)
            wrong = (isinstance(default, bool) and not isinstance(value, bool)) or (
                kind in (int, str) and (not isinstance(value, kind) or isinstance(value, bool)))
            if wrong:
                raise InvalidValueError(f"model {cls.name!r}: option {key} must be {kind.__name__}, got {value!r}")
            resolved[key] = value
        return resolved

    # -- to implement -----------------------------------------------------------------------
    def encode(self, images: Tensor, with_logits: bool = True) -> tuple[Any, Tensor | None]:
        """``images -> (image state for the head, attribute logits [B, n] or None)``."""
        raise NotImplementedError

    def head(self, state: Any, attribute_ids: Tensor) -> ModelOutput:
        """``(image state, attribute_ids [B, K]) -> ModelOutput`` with ``embedding [B, K, D]``."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    def _load_backbone(self, trunk: ResNetTrunk) -> None:
        """Load ``pretrained`` (given to ``__init__``) into the trunk; the last step of a subclass's ``__init__``."""
        self.pretrained_report = load_pretrained(trunk, self.pretrained_spec, trunk.arch)

    def _check_inputs(self, images: Tensor, attribute_ids: Tensor | None = None) -> None:
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"images must be a float tensor [B, 3, H, W], got {tuple(images.shape)} {images.dtype}")
        if attribute_ids is None:
            return
        if attribute_ids.shape != (images.shape[0],) or attribute_ids.dtype != torch.long:
            raise ValueError(
                f"attribute_ids must be a long tensor [B] with B={images.shape[0]}, "
                f"got {tuple(attribute_ids.shape)} {attribute_ids.dtype}"
            )
        if _compiling():
            return  # reading the ids' range back to Python would split a compiled graph and sync the GPU
        ids = attribute_ids
        if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < self.n_attributes):
            raise ValueError(f"attribute ids must lie in [0, {self.n_attributes}), got {attribute_ids.tolist()}")

    def forward(self, images: Tensor, attribute_ids: Tensor) -> ModelOutput:
        """``images [B,3,H,W] float, attribute_ids [B] long -> ModelOutput`` (embedding ``[B, D]``)."""
        self._check_inputs(images, attribute_ids)
        state, logits = self.encode(images, with_logits=True)
        out = self.head(state, attribute_ids[:, None]).select(0)
        out.attribute_logits = logits
        return out

    @torch.no_grad()
    def attention_map(self, images: Tensor, attribute_ids: Tensor) -> Tensor | None:
        """The spatial attention map ``[B, h, w]`` (sums to 1) for each (image, attribute), or None."""
        self._check_inputs(images, attribute_ids)
        state, _ = self.encode(images, with_logits=False)
        return self.head(state, attribute_ids[:, None]).select(0).attention

    def embed_all(self, images: Tensor, attribute_chunk: int | None = None) -> Tensor:
        """Every attribute's embedding in one backbone pass: ``images [B,3,H,W] -> [B, A, D]``.

        ``attribute_chunk`` bounds memory by running the heads for that many attributes at a
        time (the backbone still runs once).
        """
        self._check_inputs(images)
        state, _ = self.encode(images, with_logits=False)
        ids = torch.arange(self.n_attributes, device=images.device).expand(images.shape[0], -1)
        step = attribute_chunk or self.n_attributes
        parts = [self.head(state, ids[:, i:i + step]).embedding for i in range(0, self.n_attributes, step)]
        return torch.cat(parts, dim=1)
