"""Atomic file writes, shared by every layer: a reader (or a resumed run) sees the old file or the
new one, never a part of it.  A write that fails — a full disk (ENOSPC), an exceeded quota (EDQUOT),
a read-only or failing device, no permission — is a :class:`WriteError` naming the file, and leaves
nothing behind: the temp file is removed and the previous file, if any, is untouched."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from agman.errors import AgmanError

_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}
"""Errors of the storage itself: wrapped by a library (torch.save) in its own exception, still a write failure."""

_REASONS = {
    errno.ENOSPC: "no space left on device (the disk is full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EFBIG: "file too large for this file system",
}


class WriteError(AgmanError, OSError):
    """A file could not be written (disk full, quota, permissions, I/O error); the message names it.
    Also an ``OSError``, so callers catching that keep working."""


def _storage_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: itself, or one a library wrapped (``torch.save`` raises RuntimeError)."""
    if isinstance(exc, OSError):
        return exc
    seen = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _STORAGE_ERRNOS:
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


@contextmanager
def write_errors(path: str | Path, note: str = "") -> Iterator[None]:
    """Turn a failure to write ``path`` inside the block into a :class:`WriteError` naming it
    (``note`` is appended to the message).  :func:`atomic_write` uses it; so can a write that
    cannot be atomic, such as appending to a log."""
    try:
        yield
    except AgmanError:
        raise
    except Exception as exc:
        os_error = _storage_error(exc)
        if os_error is None:
            raise
        reason = _REASONS.get(os_error.errno) or os_error.strerror or str(os_error)
        err = WriteError(f"cannot write {path}: {reason}" + (f"; {note}" if note else ""))
        err.errno, err.filename = os_error.errno, str(path)
        raise err from exc


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temp file beside ``path``, fsync, then rename it over ``path``.

    On any failure the temp file is removed and ``path`` keeps its previous content (or stays absent);
    an OSError (or a library error caused by one, such as torch's on a full disk) becomes a
    :class:`WriteError` naming ``path``.
    """
    path = Path(path)
    note = "its previous content is unchanged" if path.exists() else "it was not created"
    tmp = None
    try:
        with write_errors(path, note):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return path


def _remove(tmp: str | None) -> None:
    if tmp is not None:
        with suppress(OSError):
            Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, data, indent: int = 1) -> Path:
    """Write ``data`` as JSON (plus a final newline) atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n")
