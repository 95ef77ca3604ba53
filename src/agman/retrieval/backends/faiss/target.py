"""Opening an index folder for writing: a build (created, or checked and grown) or deletions."""
from __future__ import annotations

from agman.retrieval.backends.faiss.check import damage_message, folder_problems
from agman.retrieval.backends.faiss.integrity import IndexDamagedError
from agman.retrieval.backends.faiss.layout import IndexLayout
from agman.retrieval.backends.faiss.writer import FaissWriter
from agman.retrieval.info import CatalogIndexError, IndexExistsError, IndexInfo
from agman.retrieval.targets import check_compatible, new_info
from agman.retrieval.work import Work


def open_for_build(out, ckpt, dim: int, config, metadata: dict[str, str], root, grow: bool, work=None):
    """``(writer, Work)`` for a build into the folder ``out`` (the work folder is the index folder:
    ``work`` is not used): an existing index is checked (another checkpoint's is refused; a complete
    one only grows with ``grow``), a missing one is created."""
    layout = IndexLayout(out)
    if layout.info.is_file():
        writer = FaissWriter(layout)
        try:
            info = writer.info
            info.check_checkpoint(ckpt.identity, ckpt.path, layout.root)
            check_compatible(info, layout.root, config, metadata)
            unfinished = layout.progress.is_file()
            problems = [] if unfinished else folder_problems(layout, info, "sample")
            if problems:  # growing a damaged index would hide the damage under new rows
                raise IndexDamagedError(damage_message(layout, problems))
            if not unfinished and not grow:
                raise IndexExistsError(
                    f"{layout.root} already holds a complete index of {info.searchable} items; "
                    "pass add=True (--add) to add images, update=True (--update) to re-index them, or choose "
                    "another output folder"
                )
            if info.count and not info.files:  # written by an older agman: record its files' hashes now
                writer.record_files()
        except BaseException:
            writer.close()
            raise
        return writer, Work(layout.root)
    if layout.root.exists() and any(p.name != ".lock" for p in layout.root.iterdir()):
        raise CatalogIndexError(f"{layout.root} exists and is not an agman index: choose an empty or new folder")
    info = new_info(ckpt, dim, config, metadata, root)
    writer = FaissWriter(layout, info)
    info.write(layout.info)
    return writer, Work(layout.root)


def open_writer(out) -> FaissWriter:
    """The writer of the existing index folder ``out`` (deletions, re-indexing one item)."""
    layout = IndexLayout(out)
    if not layout.info.is_file():
        IndexInfo.read(layout.info)  # the not-found error
    return FaissWriter(layout)
