"""`agman index --extend`: add the attributes of an extended model to an index in place (what every
backend checks and records; each backend writes the new attributes in ``backends/<name>/extend.py``).

The old attributes' vectors are kept as they are.  They are accepted because each old attribute's
weight identity in the child model equals the one that embedded the index (recorded in ``index.json``
by an earlier extension, or in the child's lineage for the checkpoint that built it), and because a
sample — the catalog's first batch, embedded again as one batch of the same size — equals the stored
vectors bit for bit.  Then the catalog is embedded once and only the new attributes' vector files (and
FAISS files) are written; ``index.json``, rewritten atomically last, is the commit point, so a
running ``agman serve`` picks the new attributes up when it sees the change.  An interrupted run
resumes from the rows already written (``extend.json`` records for which model).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agman.errors import InvalidValueError
from agman.retrieval.info import (
    IndexedCheckpoint,
    IndexMismatchError,
)


@dataclass
class ExtendSummary:
    """What an extension wrote: the attributes added, rows embedded (now / resumed), the sample compared."""

    index: str
    added: list[str]
    rows: int
    resumed_from: int
    sample_rows: int


def recorded_identities(info, lineage: dict) -> dict[str, str] | None:
    """The per-attribute identities of the weights that embedded the index: recorded in the index, or in
    the child's lineage for the checkpoint that built it (the parent or an earlier ancestor)."""
    if info.attribute_identities:
        return dict(info.attribute_identities)
    for entry in [lineage.get("parent") or {}, *reversed(lineage.get("ancestors") or [])]:
        if entry.get("identity") == info.checkpoint.identity and entry.get("attribute_identities"):
            return dict(entry["attribute_identities"])
    return None


def check_lineage(info, where, child_ids: dict[str, str], lineage: dict, checkpoint) -> None:
    """Refuse a model whose old attributes are not the ones that embedded the index, naming the first."""
    recorded = recorded_identities(info, lineage)
    if recorded is None:
        first = info.attribute_names[0]
        raise IndexMismatchError(
            f"index {where} was built by checkpoint {info.checkpoint.path} (identity {info.checkpoint.identity}), "
            f"which is not {checkpoint} nor in its lineage: attribute {first!r} cannot be shown to be unchanged; "
            "extend an index built by the parent model, or build a new index")
    for name in info.attribute_names:
        if name not in child_ids:
            raise IndexMismatchError(f"index {where} has attribute {name!r}, which model {checkpoint} lacks: "
                                     "the model is of another lineage")
        if recorded.get(name) != child_ids[name]:
            raise IndexMismatchError(
                f"index {where}: attribute {name!r} was embedded by weights {recorded.get(name)}, but model "
                f"{checkpoint} computes it with {child_ids[name]}: the model is of another lineage; build a new index")


def plan_extension(info, where, checkpoint, device):
    """``(model, its CheckpointInfo, its attribute identities, the attributes to add, the model's column of
    each attribute)`` after the lineage check; None when ``checkpoint`` built the index (nothing to add)."""
    from agman.engine.checkpoint import load_model
    from agman.models.extension import attribute_identities

    model, cinfo = load_model(checkpoint, device=device)
    child_ids = dict(zip(cinfo.attribute_names, attribute_identities(model)))
    if info.checkpoint.identity == cinfo.identity:
        return None
    check_lineage(info, where, child_ids, cinfo.lineage, checkpoint)
    new = [a for a in cinfo.attributes if a.name not in info.attribute_names]
    if not new:
        raise InvalidValueError(f"model {checkpoint} has no attribute that index {where} lacks")
    return model, cinfo, child_ids, new, {name: j for j, name in enumerate(cinfo.attribute_names)}


def describe_extended(info, cinfo, new, child_ids) -> None:
    """``info`` after the extension: the new attributes appended, the child as its checkpoint, the old
    checkpoint in its lineage, every attribute's identity."""
    info.lineage = [*info.lineage, info.checkpoint.identity]
    info.attributes = [*info.attributes, *new]
    info.checkpoint = IndexedCheckpoint.of(cinfo)
    info.attribute_identities = {a.name: child_ids[a.name] for a in info.attributes}


def compare_sample(model, cinfo, where, info, paths, stored, column, device, tolerance) -> int:
    """Embed the catalog's first batch (``paths``) again as one batch, as the build did, and compare every
    old attribute with its ``stored`` vectors; a difference over ``tolerance`` is refused, naming it."""
    from agman.engine.embed import iter_embeddings

    n = len(paths)
    if n == 0:
        return 0
    _, block = next(iter_embeddings(model, paths, None, input_size=cinfo.input_size, crop_ratio=cinfo.crop_ratio,
                                    batch_size=n, device=device, failures={}))
    for a, attribute in enumerate(info.attributes):
        fresh = block[:, column[attribute.name]]
        worst = float(np.abs(stored[a] - fresh).max())
        if worst > tolerance or (tolerance == 0 and not np.array_equal(stored[a], fresh)):
            raise IndexMismatchError(
                f"index {where}: attribute {attribute.name!r} of rows 0-{n - 1} embedded again by "
                f"{cinfo.path} differs from the stored vectors by up to {worst:.3g} (expected bit for bit: the "
                f"same batch size as the build, --batch-size, on the same kind of machine; --tolerance accepts "
                "float noise of another machine)")
    return n
