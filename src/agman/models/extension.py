"""Attribute extension: a trained model grown by new attributes whose old attributes embed every image
bit-identically, and the per-attribute weight identity that proves it.

A model's parameters split into *attribute tables* (row ``a`` is used by attribute ``a`` only: the
attribute embedding of ASA/ACA, the mask row) and *shared* parts (trunk, fusion, projections, BatchNorm
statistics).  :class:`ExtendedModel` keeps the trained model (``base``) frozen and in eval mode, and adds
one :class:`Branch` per new attribute holding that attribute's own table rows (design ``rows``) and,
with design ``adapter``, its own copies of the attribute-side projections (ASA/ACA's FCs; CSN's FC).  Old
attributes run ``base.head`` exactly as the base model does; a new attribute runs the same head with the
base's weights swapped for its branch's during the call, so nothing an old attribute reads is ever written.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from agman.errors import InvalidValueError
from agman.models.base import AttributeModel
from agman.models.output import ModelOutput

DESIGNS = ("rows", "adapter")
"""``rows``: new table rows only, on the frozen network; ``adapter``: rows plus private projections."""


class ExtensionError(InvalidValueError):
    """A model cannot be extended as asked (a model without attribute tables, fixed masks, a name clash)."""


@dataclass(frozen=True)
class AttributeParts:
    """Which of a model's state-dict entries are attribute tables, private-adapter candidates, and
    outside the embedding (the Eq. 7 classification branch)."""

    tables: tuple[str, ...]
    adapters: tuple[str, ...]
    not_embedding: tuple[str, ...] = ()


def attribute_parts(model: AttributeModel) -> AttributeParts:
    """The model's :class:`AttributeParts` (its class's ``ATTRIBUTE_PARTS``, filtered to the entries it has)."""
    declared: AttributeParts | None = getattr(type(model), "ATTRIBUTE_PARTS", None)
    if declared is None:
        raise ExtensionError(f"model {model.name!r} declares no per-attribute parts, so an attribute cannot be "
                             "added to it without changing the others; retrain it with every attribute")
    names = set(model.state_dict())
    return AttributeParts(tuple(n for n in declared.tables if n in names), declared.adapters, declared.not_embedding)


def _excluded(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name.startswith(p) for p in prefixes)


def _digest(t: Tensor) -> bytes:
    """SHA-256 of one tensor's dtype, shape and bytes."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.digest()


def _identity(entries: dict[str, Tensor], cache: dict[int, tuple[Tensor, bytes]]) -> str:
    """SHA-256 (16 hex digits) over ``entries`` in name order: each name and its tensor's digest
    (``cache``, keyed by the tensor object and holding it, lets shared tensors be hashed once)."""
    h = hashlib.sha256()
    for name in sorted(entries):
        t = entries[name]
        if id(t) not in cache:
            cache[id(t)] = (t, _digest(t))
        h.update(name.encode())
        h.update(cache[id(t)][1])
    return h.hexdigest()[:16]


def _plain_entries(state: dict[str, Tensor], parts: AttributeParts, row: int) -> dict[str, Tensor]:
    """The tensors producing attribute ``row``'s embedding in a plain model: shared parts whole, tables' row."""
    out = {}
    for name, t in state.items():
        if _excluded(name, parts.not_embedding):
            continue
        out[name] = t[row:row + 1] if name in parts.tables else t
    return out


class Branch(nn.Module):
    """One new attribute: its table rows (``rows``) and, in design ``adapter``, its private copies of
    the attribute-side projections (``adapters``), keyed by the base's state-dict names."""

    def __init__(self, rows: dict[str, Tensor], adapters: dict[str, Tensor], design: str):
        super().__init__()
        if design not in DESIGNS:
            raise ExtensionError(f"extension design must be one of {', '.join(DESIGNS)}, got {design!r}")
        self.design = design
        self.rows = nn.ParameterDict({_key(k): nn.Parameter(v.clone()) for k, v in rows.items()})
        self.adapters = nn.ParameterDict({_key(k): nn.Parameter(v.clone()) for k, v in adapters.items()})

    def overrides(self) -> dict[str, Tensor]:
        """``{base state-dict name: tensor}`` this attribute uses instead of the base's."""
        return {_name(k): v for k, v in [*self.rows.items(), *self.adapters.items()]}


def _key(name: str) -> str:
    return name.replace(".", "__")


def _name(key: str) -> str:
    return key.replace("__", ".")


@contextmanager
def _swapped(model: nn.Module, overrides: dict[str, Tensor]):
    """Run ``model`` with the parameters ``overrides`` names replaced (a module shared under two names,
    like the released code's one attribute table for ASA and ACA, is swapped once for both); the
    originals are put back afterwards, whatever happens.  (``torch.func.functional_call`` restores a
    tied table of another shape wrongly in torch 2.x, so the swap is done here.)"""
    saved = []
    try:
        for name, tensor in overrides.items():
            path, _, attr = name.rpartition(".")
            module = model.get_submodule(path)
            saved.append((module, attr, module._parameters[attr]))
            module._parameters[attr] = tensor
        yield model
    finally:
        for module, attr, original in reversed(saved):
            module._parameters[attr] = original


class ExtendedModel(AttributeModel):
    """A trained model (``base``, frozen, always in eval mode) plus one :class:`Branch` per added attribute.

    Attribute ids ``0 .. base.n_attributes-1`` are the base's; the next ones are the branches' in order.
    ``embed_all`` runs the base's head over the base's attributes exactly as the base's own ``embed_all``
    does, so their embeddings are bit-identical to the base model's.
    """

    def __init__(self, base: AttributeModel, branches: list[Branch]):
        nn.Module.__init__(self)
        self.base = base
        self.branches = nn.ModuleList(branches)
        self.name = base.name
        self.description = base.description
        self.n_base = base.n_attributes
        self.n_attributes = base.n_attributes + len(branches)
        self.config = base.config
        self.embedding_dim = base.embedding_dim
        self.pretrained_spec, self.pretrained_report = "none", None
        self.parts = attribute_parts(base)
        self._ties = _tie_groups(base)
        self._unfrozen = False
        for p in base.parameters():
            p.requires_grad_(False)
        base.eval()

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def grow(cls, model: AttributeModel, n_new: int, design: str, generator: torch.Generator | None = None
             ) -> ExtendedModel:
        """``model`` (plain or already extended) with ``n_new`` fresh branches: rows drawn around the
        old rows (their mean plus their spread times N(0, 1)), adapters copied from the base."""
        if isinstance(model, ExtendedModel):
            base, old = model.base, list(model.branches)
            for b in old:
                for p in b.parameters():
                    p.requires_grad_(False)
        else:
            base, old = model, []
        parts = attribute_parts(base)
        if not parts.tables:
            raise ExtensionError(f"model {base.name!r} with these options has no attribute table to add a row to")
        buffers = dict(base.named_buffers())
        fixed = [n for n in parts.tables if n in buffers]
        if fixed:
            raise ExtensionError(f"model {base.name!r}: {fixed[0]} is fixed (mask_init=fixed: disjoint blocks of "
                                 "embedding_dim / n_attributes, not learned), so a new attribute has no block to "
                                 "take; retrain with every attribute")
        state = base.state_dict()
        ties = _tie_groups(base)
        branches = []
        for _ in range(int(n_new)):
            rows = {}
            for name in parts.tables:
                if ties.get(name, name) != name:
                    continue  # one row for a table shared by ASA and ACA
                table = state[name].float()
                noise = torch.randn(table.shape[1:], generator=generator)
                rows[name] = (table.mean(0) + table.std(0, unbiased=False) * noise)[None].to(state[name].dtype)
            adapters = {}
            if design == "adapter":
                adapters = {n: t for n, t in state.items() if _excluded(n, parts.adapters) and n not in parts.tables
                            and n not in buffers}
                if not adapters:
                    raise ExtensionError(f"model {base.name!r} has no attribute-side projection for design "
                                         "'adapter'; use design 'rows'")
            branches.append(Branch(rows, adapters, design))
        return cls(base, old + branches)

    def extension_layout(self) -> list[dict]:
        """Per branch ``{design, rows: [names], adapters: [names]}``: what a checkpoint needs to rebuild it."""
        return [{"design": b.design, "rows": [_name(k) for k in b.rows], "adapters": [_name(k) for k in b.adapters]}
                for b in self.branches]

    @classmethod
    def from_layout(cls, base: AttributeModel, layout: list[dict]) -> ExtendedModel:
        """The empty shape of an extended model described by :meth:`extension_layout` (weights loaded after)."""
        state = base.state_dict()
        branches = []
        for entry in layout:
            rows = {n: torch.zeros((1, *state[n].shape[1:]), dtype=state[n].dtype) for n in entry["rows"]}
            adapters = {n: torch.zeros_like(state[n]) for n in entry["adapters"]}
            branches.append(Branch(rows, adapters, entry["design"]))
        return cls(base, branches)

    # -- running -------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        """Only the branches train; the base stays in eval mode (BatchNorm statistics never move)."""
        self.training = mode
        self.branches.train(mode)
        self.base.train(mode and self._unfrozen)
        return self

    def unfreeze(self) -> None:
        """Make the whole base trainable (the naive fine-tune that forgets: a measured baseline only)."""
        self._unfrozen = True
        for p in self.base.parameters():
            p.requires_grad_(True)

    def encode(self, images: Tensor, with_logits: bool = True):
        return self.base.encode(images, with_logits=False)[0], None

    def _branch_head(self, j: int, state, k: int, batch: int, device) -> ModelOutput:
        ids = torch.zeros((batch, k), dtype=torch.long, device=device)
        with _swapped(self.base, self.branches[j].overrides()):
            return self.base.head(state, ids)

    def _ties_of(self, name: str) -> list[str]:
        """Every state-dict name of the base tensor ``name`` (a table shared by ASA and ACA has two)."""
        root = self._ties.get(name, name)
        return [n for n, r in self._ties.items() if r == root] or [name]

    def head(self, state, attribute_ids: Tensor) -> ModelOutput:
        """Each id's output from the base's head or its branch's (selected position by position)."""
        batch, k = attribute_ids.shape
        device = attribute_ids.device
        out = self.base.head(state, attribute_ids.clamp(max=self.n_base - 1))
        for j in range(len(self.branches)):
            chosen = attribute_ids == self.n_base + j
            if not bool(chosen.any()):
                continue
            out = _where(chosen, self._branch_head(j, state, k, batch, device), out)
        return out

    def embed_all(self, images: Tensor, attribute_chunk: int | None = None) -> Tensor:
        """The base's attributes exactly as ``base.embed_all`` computes them, then each branch's."""
        self._check_inputs(images)
        state, _ = self.base.encode(images, with_logits=False)
        ids = torch.arange(self.n_base, device=images.device).expand(images.shape[0], -1)
        step = attribute_chunk or self.n_base
        parts = [self.base.head(state, ids[:, i:i + step]).embedding for i in range(0, self.n_base, step)]
        parts += [self._branch_head(j, state, 1, images.shape[0], images.device).embedding
                  for j in range(len(self.branches))]
        return torch.cat(parts, dim=1)

    # -- identity ------------------------------------------------------------------------------
    def attribute_entries(self, index: int, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The tensors producing attribute ``index``'s embedding (base names; a branch's replace the base's);
        ``state``: the base's state dict."""
        if index < self.n_base:
            return _plain_entries(state, self.parts, index)
        entries = _plain_entries(state, self.parts, 0)
        for name in self.parts.tables:
            entries.pop(name, None)
        for name, tensor in self.branches[index - self.n_base].overrides().items():
            for tied in self._ties_of(name):
                entries[tied] = tensor
        return entries


def _tie_groups(model: nn.Module) -> dict[str, str]:
    """``{state-dict name: first name of the same tensor}`` for parameters registered under several names."""
    first: dict[int, str] = {}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out[name] = first.setdefault(id(p), name)
    return out


def _where(chosen: Tensor, new: ModelOutput, old: ModelOutput) -> ModelOutput:
    """Per (image, slot) the ``new`` output where ``chosen [B, K]``, else ``old``."""
    def pick(a, b):
        if a is None or b is None:
            return None
        mask = chosen.reshape(*chosen.shape, *([1] * (a.dim() - 2)))
        return torch.where(mask, a, b)

    return ModelOutput(embedding=pick(new.embedding, old.embedding), attention=pick(new.attention, old.attention),
                       masks=pick(new.masks, old.masks),
                       general_embedding=pick(new.general_embedding, old.general_embedding))


def attribute_identities(model: AttributeModel) -> list[str]:
    """Each attribute's weight identity: a hash of exactly the tensors that produce its embedding (the
    shared parts whole, its own table rows), equal in a parent and in every child for an old attribute."""
    cache: dict[int, tuple[Tensor, bytes]] = {}
    if isinstance(model, ExtendedModel):
        state = model.base.state_dict()
        return [_identity(model.attribute_entries(i, state), cache) for i in range(model.n_attributes)]
    parts = attribute_parts(model)
    state = model.state_dict()
    return [_identity(_plain_entries(state, parts, i), cache) for i in range(model.n_attributes)]


class NewAttributes(AttributeModel):
    """What extension training sees: an :class:`ExtendedModel` through its last ``n`` attributes only
    (ids ``0 .. n-1``), so the engine's loop, sampler and validation run unchanged on the new data.
    Its state dict is the whole extended model's."""

    def __init__(self, extended: ExtendedModel, n: int):
        nn.Module.__init__(self)
        self.extended = extended
        self.offset = extended.n_attributes - int(n)
        self.n_attributes = int(n)
        self.name, self.config, self.embedding_dim = extended.name, extended.config, extended.embedding_dim
        self.pretrained_spec, self.pretrained_report = "none", None

    def state_dict(self, *args, **kwargs):
        return self.extended.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.extended.load_state_dict(state_dict, strict=strict, assign=assign)

    def train(self, mode: bool = True):
        self.training = mode
        self.extended.train(mode)
        return self

    def encode(self, images: Tensor, with_logits: bool = True):
        return self.extended.encode(images, with_logits=False)

    def head(self, state, attribute_ids: Tensor) -> ModelOutput:
        return self.extended.head(state, attribute_ids + self.offset)

    def embed_all(self, images: Tensor, attribute_chunk: int | None = None) -> Tensor:
        self._check_inputs(images)
        state, _ = self.encode(images)
        b = images.shape[0]
        outs = [self.extended._branch_head(j, state, 1, b, images.device).embedding
                for j in range(self.offset - self.extended.n_base, len(self.extended.branches))]
        return torch.cat(outs, dim=1)
