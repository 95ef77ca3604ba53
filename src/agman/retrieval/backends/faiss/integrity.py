"""Integrity of an index folder's files: their sizes and xxh3-128 hashes, recorded when the index is
written (``index.json`` ``files``) and checked when it is opened.

Three levels of checking a file against its :class:`~agman.retrieval.info.FileRecord`:

* ``size``: the file exists and holds at least the recorded bytes (a ``stat``: free);
* ``sample``: and the hash of 16 blocks of 64 KiB spread over them matches (at most 1 MiB read per
  file: catches truncation, a file swapped with another, a rewrite; not a flipped bit between blocks);
* ``full``: and the hash of every recorded byte matches (xxh3 runs at several GB/s, so the cost is
  reading the files).

Files that only grow (``items.jsonl``, the vector files: an unfinished later build appends to
them) are checked over their first ``size`` bytes; other files (FAISS) must have exactly ``size``.
The hashes detect damage, not tampering: whoever can write the folder can rewrite ``index.json``.
"""
from __future__ import annotations

import os
from pathlib import Path

import xxhash

from agman.retrieval.info import CatalogIndexError, FileRecord
from agman.retrieval.store import VERIFY_LEVELS

HASH_NAME = "xxh3-128"
SAMPLE_BLOCK = 1 << 16
SAMPLE_BLOCKS = 16
READ_CHUNK = 1 << 22
LEVELS = VERIFY_LEVELS


class IndexDamagedError(CatalogIndexError):
    """A file of an index folder is missing, truncated, or not the file ``index.json`` recorded."""


def sample_spans(size: int) -> list[tuple[int, int]]:
    """``(start, length)`` of each sampled block of a ``size``-byte file: the first and last blocks
    and 14 evenly spaced between them (the whole file when it is that small)."""
    if size <= SAMPLE_BLOCK * SAMPLE_BLOCKS:
        return [(0, size)]
    step = (size - SAMPLE_BLOCK) / (SAMPLE_BLOCKS - 1)
    return [(round(i * step), SAMPLE_BLOCK) for i in range(SAMPLE_BLOCKS)]


def file_hash(path: Path, size: int, *, sample: bool = False) -> str:
    """``xxh3-128:<hex>`` of the first ``size`` bytes of ``path`` (only the sampled blocks with
    ``sample``); the size is hashed too.  ``OSError`` when the file is shorter or unreadable."""
    h = xxhash.xxh3_128()
    h.update(int(size).to_bytes(8, "little"))
    with open(path, "rb") as f:
        whole = [(at, min(READ_CHUNK, size - at)) for at in range(0, size, READ_CHUNK)]
        spans = sample_spans(size) if sample else whole
        for at, n in spans:
            f.seek(at)
            chunk = f.read(n)
            if len(chunk) != n:
                raise OSError(f"{path} ends at byte {at + len(chunk)}, before byte {size}")
            h.update(chunk)
    return f"{HASH_NAME}:{h.hexdigest()}"


def record_file(path: Path, size: int | None = None) -> FileRecord:
    """The record of ``path`` (its first ``size`` bytes; the whole file by default)."""
    size = os.path.getsize(path) if size is None else int(size)
    return FileRecord(size, file_hash(path, size), file_hash(path, size, sample=True))


def check_size(path: Path, size: int, *, grows: bool = False, expected: str = "index.json recorded") -> str | None:
    """What is wrong with the size of ``path`` (``size`` bytes; at least that many if it ``grows``), or None."""
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if actual < size:
        return f"truncated: {actual} bytes, {expected} {size}"
    if actual > size and not grows:
        return f"{actual} bytes, {expected} {size}"
    return None


def check_file(path: Path, record: FileRecord, level: str, *, grows: bool = False) -> str | None:
    """What is wrong with ``path`` against ``record`` at ``level`` (see the module), or None."""
    wrong = check_size(path, record.size, grows=grows)
    if wrong or level == "size":
        return wrong
    try:
        found = file_hash(path, record.size, sample=level == "sample")
    except OSError as exc:
        return f"unreadable ({exc})"
    if found != (record.sample if level == "sample" else record.hash):
        return "its content is not what index.json recorded (replaced or changed after the index was written)"
    return None


def stat_key(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when a file is written, replaced or truncated (size, mtime, inode, device); None if absent."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev
