"""`agman index --extend`: add the attributes of an extended model to an index folder in place.

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

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agman.errors import InvalidValueError
from agman.fileio import atomic_write_text
from agman.retrieval.info import CatalogIndexError, IndexedCheckpoint, IndexLayout, IndexMismatchError


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


def _plan(info, where, checkpoint, device):
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


def _describe_extended(info, cinfo, new, child_ids) -> None:
    """``info`` after the extension: the new attributes appended, the child as its checkpoint, the old
    checkpoint in its lineage, every attribute's identity."""
    info.lineage = [*info.lineage, info.checkpoint.identity]
    info.attributes = [*info.attributes, *new]
    info.checkpoint = IndexedCheckpoint.of(cinfo)
    info.attribute_identities = {a.name: child_ids[a.name] for a in info.attributes}


def _progress(layout: IndexLayout) -> Path:
    return layout.root / "extend.json"


def extend_index(out, checkpoint, *, batch_size: int = 32, workers: int = 0, device: str = "cpu",
                 progress: bool = False, tolerance: float = 0.0) -> ExtendSummary:
    """Add ``checkpoint``'s attributes that the index at ``out`` lacks (see the module docstring).
    ``tolerance``: the largest difference the sample may show (0: bit for bit, the default)."""
    from agman.engine.embed import iter_embeddings
    from agman.retrieval.faiss_check import map_vectors, record_files
    from agman.retrieval.faiss_index import factory_string, fill_faiss_index, new_faiss_index, write_faiss
    from agman.retrieval.faiss_writer import FaissWriter
    from agman.retrieval.info import FaissFile
    from agman.retrieval.milvus_client import MilvusTarget, is_milvus_uri

    if isinstance(out, MilvusTarget) or is_milvus_uri(str(out)):
        target = out if isinstance(out, MilvusTarget) else MilvusTarget(str(out))
        return _extend_milvus(target, checkpoint, batch_size=batch_size, workers=workers, device=device,
                              progress=progress, tolerance=tolerance)
    layout = IndexLayout(out)
    writer = FaissWriter(layout)
    try:
        info = writer.info
        if layout.progress.is_file():
            raise CatalogIndexError(f"index {layout.root} has an unfinished build: finish it (`agman index` again) "
                                    "before extending it")
        plan = _plan(info, layout.root, checkpoint, device)
        if plan is None:
            return ExtendSummary(str(layout.root), [], 0, 0, 0)
        model, cinfo, child_ids, new, column = plan
        items = writer.stored_items()
        paths = [it.path for it in items]
        n = min(batch_size, info.count)
        stored = [np.asarray(map_vectors(layout.vectors(a), info.count, info.dim)[:n])
                  for a in range(len(info.attributes))]
        sample = _compare_sample(model, cinfo, layout.root, info, paths[:n], stored, column, device, tolerance)
        first_new = len(info.attributes)
        d, count = info.dim, info.count
        files = [layout.vectors(first_new + j) for j in range(len(new))]
        start = _resume_point(layout, cinfo.identity, files, d, batch_size, count)
        atomic_write_text(_progress(layout), json.dumps({"checkpoint": cinfo.identity, "batch_size": batch_size,
                                                         "attributes": [a.name for a in new]}) + "\n")
        handles = []
        for f in files:
            f.parent.mkdir(parents=True, exist_ok=True)
            h = open(f, "ab")
            h.truncate(start * d * 4)
            handles.append(h)
        try:
            for _, block in iter_embeddings(model, paths, None, input_size=cinfo.input_size,
                                            crop_ratio=cinfo.crop_ratio, batch_size=batch_size, device=device,
                                            workers=workers, start=start, progress=progress, failures={}):
                for h, a in zip(handles, new):
                    h.write(np.ascontiguousarray(block[:, column[a.name]], dtype=np.float32).tobytes())
                    h.flush()
                    os.fsync(h.fileno())
        finally:
            for h in handles:
                h.close()
        for j, f in enumerate(files):
            if not info.config.exact:
                index = new_faiss_index(info.config, d, count)
                fill_faiss_index(index, map_vectors(f, count, d))
                write_faiss(index, layout.faiss(first_new + j))
                info.faiss[first_new + j] = FaissFile(factory_string(info.config, d, count)[0], count)
        _describe_extended(info, cinfo, new, child_ids)
        record_files(layout, info)
        writer._write_info()
        _progress(layout).unlink(missing_ok=True)
        return ExtendSummary(str(layout.root), [a.name for a in new], count - start, start, sample)
    finally:
        writer.close()


def _resume_point(layout: IndexLayout, identity: str, files: list[Path], d: int, batch: int, count: int) -> int:
    """Rows already embedded by an interrupted run of the same model with the same batch size (a whole
    number of batches), else 0."""
    path = _progress(layout)
    if not path.is_file():
        return 0
    saved = json.loads(path.read_text())
    if saved.get("checkpoint") != identity or saved.get("batch_size") != batch:
        return 0
    rows = min((f.stat().st_size // (4 * d) if f.is_file() else 0) for f in files)
    return min(count, rows // batch * batch)


def _compare_sample(model, cinfo, where, info, paths, stored, column, device, tolerance) -> int:
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




def _extend_milvus(target, checkpoint, *, batch_size, workers, device, progress, tolerance) -> ExtendSummary:
    """:func:`extend_index` on a Milvus collection: the new attributes' entities go to partitions of their
    own, keyed above the old keys; the collection's description (its properties) is the commit point.
    A rerun after an interruption continues after the whole batches the new partition already holds."""
    from agman.engine.embed import iter_embeddings
    from agman.retrieval.milvus_store import MilvusStore, _partition

    store = MilvusStore.open(target)
    try:
        info = store.info
        plan = _plan(info, target.where, checkpoint, device)
        if plan is None:
            return ExtendSummary(target.where, [], 0, 0, 0)
        model, cinfo, child_ids, new, column = plan
        rows = store.rows()
        items = store.items_of(rows.tolist())
        paths = [it.path for it in items]
        n = min(batch_size, len(rows))
        stored = [store.vectors(a, rows[:n]) for a in range(len(info.attributes))]
        sample = _compare_sample(model, cinfo, target.where, info, paths[:n], stored, column, device, tolerance)
        old_count = len(info.attributes)
        info.pk_attributes = info.pk_attributes or old_count
        store.info = info
        first_new = old_count
        conn = store.conn
        for j in range(len(new)):
            if not conn.call("check a partition", "has_partition", conn.name, _partition(first_new + j)):
                conn.call("create a partition", "create_partition", conn.name, _partition(first_new + j))
        done = min(_band_count(conn, first_new + j - info.pk_attributes + 1) for j in range(len(new)))
        start = done // batch_size * batch_size
        for first, block in iter_embeddings(model, paths, None, input_size=cinfo.input_size,
                                            crop_ratio=cinfo.crop_ratio, batch_size=batch_size, device=device,
                                            workers=workers, start=start, progress=progress, failures={}):
            for j, a in enumerate(new):
                entities = [store._entity(first_new + j, int(rows[first + i]), items[first + i], block[i, column[a.name]])
                            for i in range(len(block))]
                conn.call("write items", "upsert", conn.name, entities, partition_name=_partition(first_new + j))
            conn.call("flush", "flush", conn.name)
        conn.call("load the collection", "load_collection", conn.name)  # the new partitions too
        _describe_extended(info, cinfo, new, child_ids)
        from agman.retrieval.milvus_client import INFO_KEY

        conn.set_properties(**{INFO_KEY: info.to_json()})
        return ExtendSummary(target.where, [a.name for a in new], len(rows) - start, start, sample)
    finally:
        store.close()


def _band_count(conn, band: int) -> int:
    """Entities already written for the ``band``-th added attribute (keys ``band << 48 ..``)."""
    from agman.retrieval.milvus_store import EXTENDED_PK_SHIFT

    expression = f"pk >= {band << EXTENDED_PK_SHIFT} and pk < {(band + 1) << EXTENDED_PK_SHIFT}"
    return int(conn.call("count items", "query", conn.name, filter=expression, output_fields=["count(*)"])[0]["count(*)"])
