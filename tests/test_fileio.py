"""Atomic writes on a full disk (#12.10): a WriteError naming the file, nothing half-written left.

The disk is made full by wrapping the temp file the writer gets: after ``limit`` bytes every write
raises ``OSError(ENOSPC)``, as a full file system does.  The real writers run through it: plain
bytes, ``torch.save`` (which wraps the OSError in its own RuntimeError), ``np.save``, FAISS, and the
CLI's ``data import-csv``.
"""
from __future__ import annotations

import errno
import io
import os

import faiss
import numpy as np
import pytest
import torch

from agman import fileio
from agman.cli import main
from agman.engine.checkpoint import atomic_torch_save
from agman.errors import AgmanError
from agman.fileio import WriteError, atomic_write, atomic_write_json, atomic_write_text, write_errors


class _FullDisk(io.RawIOBase):
    """A file on a disk with ``limit`` bytes free."""

    def __init__(self, real, limit: int, code: int = errno.ENOSPC):
        self.real, self.limit, self.code, self.written = real, limit, code, 0

    def writable(self):
        return True

    def write(self, b):
        if self.written + len(b) > self.limit:
            raise OSError(self.code, os.strerror(self.code))
        self.written += len(b)
        return self.real.write(b)

    def fileno(self):
        return self.real.fileno()

    def flush(self):
        if not self.real.closed:
            self.real.flush()

    def close(self):
        if not self.closed:
            super().close()
            self.real.close()


@pytest.fixture
def full_disk(monkeypatch):
    """Make every atomic write see a disk with ``limit`` bytes free (default 64)."""
    state = {"limit": 64, "code": errno.ENOSPC}
    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", *args, **kw):
        return _FullDisk(real_fdopen(fd, mode, *args, **kw), state["limit"], state["code"])

    monkeypatch.setattr(fileio.os, "fdopen", fdopen)
    return state


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_full_disk_keeps_the_previous_file_and_names_it(tmp_path, full_disk):
    path = tmp_path / "state.json"
    full_disk["limit"] = 10**9
    atomic_write_json(path, {"epoch": 1})
    full_disk["limit"] = 5
    with pytest.raises(WriteError, match=rf"cannot write {path}: no space left on device \(the disk is full\); "
                                         "its previous content is unchanged") as err:
        atomic_write_json(path, {"epoch": 2, "big": "x" * 1000})
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
    assert isinstance(err.value, AgmanError) and isinstance(err.value, OSError) and err.value.exit_code == 1
    assert path.read_text() == '{\n "epoch": 1\n}\n' and _leftovers(tmp_path) == []


def test_quota_and_new_files(tmp_path, full_disk):
    full_disk["code"] = errno.EDQUOT
    with pytest.raises(WriteError, match=r"new\.txt: disk quota exceeded; it was not created"):
        atomic_write_text(tmp_path / "new.txt", "y" * 100)
    assert not (tmp_path / "new.txt").exists() and _leftovers(tmp_path) == []


def test_torch_save_wrapping_the_error_is_still_a_write_error(tmp_path, full_disk):
    full_disk["limit"] = 1000
    path = tmp_path / "last.pt"
    with pytest.raises(WriteError, match=rf"cannot write {path}: no space left"):
        atomic_torch_save({"w": torch.ones(10_000)}, path)
    assert not path.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("writer", ["numpy", "faiss"])
def test_index_writers_on_a_full_disk(tmp_path, full_disk, writer):
    vectors = np.ones((100, 8), dtype=np.float32)
    path = tmp_path / f"part.{writer}"
    if writer == "numpy":
        fn = lambda f: np.save(f, vectors)  # noqa: E731
    else:
        index = faiss.IndexFlatIP(8)
        index.add(vectors)
        fn = lambda f: faiss.write_index(index, faiss.PyCallbackIOWriter(f.write))  # noqa: E731
    with pytest.raises(WriteError, match=rf"cannot write {path}: no space left"):
        atomic_write(path, fn)
    assert not path.exists() and _leftovers(tmp_path) == []


def test_other_failures_keep_their_type_and_still_clean_up(tmp_path):
    def broken(f):
        f.write(b"half")
        raise ValueError("a bug in the writer")

    with pytest.raises(ValueError, match="a bug"):
        atomic_write(tmp_path / "x.bin", broken)
    assert list(tmp_path.iterdir()) == []


def test_folder_that_cannot_be_created_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "sub" / "x.json"
    with pytest.raises(WriteError, match=rf"cannot write {target}: "):
        atomic_write_json(target, {})


def test_write_errors_for_appends(tmp_path):
    log = tmp_path / "log.csv"
    with pytest.raises(WriteError, match=rf"cannot write {log}: no space left on device"):
        with write_errors(log):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(KeyError):  # not a storage failure: untouched
        with write_errors(log):
            raise KeyError("x")


def test_import_csv_on_a_full_disk_is_a_clean_cli_error(catalog_csv, tmp_path, full_disk, capsys):
    out = tmp_path / "asen"
    assert main(["data", "import-csv", str(catalog_csv), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"agman: error: cannot write {out / 'meta.json'}: no space left on device" in err
    assert "Traceback" not in err
    assert [p.name for p in out.iterdir()] == []  # nothing half-written
