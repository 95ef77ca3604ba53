"""`agman index --extend` into an index folder: the new attributes' vector files (and FAISS files)
written beside the old ones; ``index.json``, rewritten last, is the commit point; ``extend.json``
records the run so an interrupted one resumes (:mod:`agman.retrieval.extend`)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from agman.fileio import atomic_write_text
from agman.retrieval.backends.faiss.check import map_vectors, record_files
from agman.retrieval.backends.faiss.index import factory_string, fill_faiss_index, new_faiss_index, write_faiss
from agman.retrieval.backends.faiss.layout import IndexLayout
from agman.retrieval.backends.faiss.writer import FaissWriter
from agman.retrieval.extend import ExtendSummary, compare_sample, describe_extended, plan_extension
from agman.retrieval.info import CatalogIndexError, FaissFile


def _progress(layout: IndexLayout) -> Path:
    return layout.root / "extend.json"


def extend_folder(out, checkpoint, *, batch_size: int = 32, workers: int = 0, device: str = "cpu",
                 progress: bool = False, tolerance: float = 0.0) -> ExtendSummary:
    """Add ``checkpoint``'s attributes that the index at ``out`` lacks (see the module docstring).
    ``tolerance``: the largest difference the sample may show (0: bit for bit, the default)."""
    from agman.engine.embed import iter_embeddings

    layout = IndexLayout(out)
    writer = FaissWriter(layout)
    try:
        info = writer.info
        if layout.progress.is_file():
            raise CatalogIndexError(f"index {layout.root} has an unfinished build: finish it (`agman index` again) "
                                    "before extending it")
        plan = plan_extension(info, layout.root, checkpoint, device)
        if plan is None:
            return ExtendSummary(str(layout.root), [], 0, 0, 0)
        model, cinfo, child_ids, new, column = plan
        items = writer.stored_items()
        paths = [it.path for it in items]
        n = min(batch_size, info.count)
        stored = [np.asarray(map_vectors(layout.vectors(a), info.count, info.dim)[:n])
                  for a in range(len(info.attributes))]
        sample = compare_sample(model, cinfo, layout.root, info, paths[:n], stored, column, device, tolerance)
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
        describe_extended(info, cinfo, new, child_ids)
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
