"""Integrity of index folders (#12.4): every damage refuses at open naming the file (exit 1 from the
CLI); folders without recorded hashes still open; a running store notices files changed under it."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from test_retrieval_index import build_tiny_index

from agman.cli import main
from agman.retrieval.backends.faiss.integrity import (
    SAMPLE_BLOCK,
    SAMPLE_BLOCKS,
    IndexDamagedError,
    check_file,
    record_file,
)
from agman.retrieval.backends.faiss.store import FaissStore
from agman.retrieval.build import build_index
from agman.retrieval.info import CatalogIndexError
from agman.retrieval.imagesets import from_split


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(spec, checkpoint, a small HNSW index: vector and FAISS files) built once; tests damage copies
    of the index.  (A flat index is its vector files: it has no FAISS files to damage.)"""
    return build_tiny_index(tmp_path_factory.mktemp("integrity"), kind="hnsw")


@pytest.fixture
def index(built, tmp_path):
    return shutil.copytree(built[2], tmp_path / "idx")


def truncate(path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def edit_json(path, edit) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def duplicate_an_id(index) -> None:
    lines = (index / "items.jsonl").read_text().splitlines(keepends=True)
    second = json.loads(lines[1])
    second["id"] = json.loads(lines[0])["id"]
    lines[1] = json.dumps(second) + "\n"
    (index / "items.jsonl").write_text("".join(lines))


DAMAGE = {  # what to do to a copy of the index -> the file the error must name, and what it says
    "truncated FAISS file": (lambda i: truncate(i / "faiss/attr-00.faiss", 100), "faiss/attr-00.faiss", "truncated"),
    "truncated vector file": (lambda i: truncate(i / "vectors/attr-01.f32", 1000), "vectors/attr-01.f32", "truncated"),
    "FAISS file of another attribute": (
        lambda i: shutil.copy(i / "faiss/attr-01.faiss", i / "faiss/attr-00.faiss"),
        "faiss/attr-00.faiss", "content is not what index.json recorded",
    ),
    "vector files swapped": (
        lambda i: shutil.copy(i / "vectors/attr-00.f32", i / "vectors/attr-01.f32"),
        "vectors/attr-01.f32", "content is not what index.json recorded",
    ),
    "duplicated id in items.jsonl": (duplicate_an_id, "items.jsonl, line 2", "is already used on line 1"),
    "index.json a list": (lambda i: edit_json(i / "index.json", lambda m: [m]), "index.json", "Input should be an"),
    "edited dim": (lambda i: edit_json(i / "index.json", lambda m: dict(m, dim=16)), "index.json", "dim was edited"),
    "edited count": (lambda i: edit_json(i / "index.json", lambda m: dict(m, count=29)), "index.json", "count"),
    "missing FAISS file": (lambda i: (i / "faiss/attr-01.faiss").unlink(), "faiss/attr-01.faiss", "missing"),
    "files of the wrong type": (
        lambda i: edit_json(i / "index.json", lambda m: dict(m, files=[1])), "index.json", "files: Input should be"
    ),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_index_is_refused_at_open_naming_the_file(index, capsys, case):
    damage, named, says = DAMAGE[case]
    damage(index)
    with pytest.raises(CatalogIndexError) as err:
        FaissStore(index)
    assert named in str(err.value) and says in str(err.value), str(err.value)
    assert main(["search", "--index", str(index), "--item", "x", "-a", "attr0"]) == 1
    stderr = capsys.readouterr().err
    assert named in stderr and "Traceback" not in stderr


def test_sampled_check_at_open_and_full_check_on_request(tmp_path):
    """A flipped byte between the sampled blocks of a large file: only the full hash finds it."""
    path = tmp_path / "big.f32"
    data = np.random.default_rng(0).integers(0, 255, SAMPLE_BLOCK * SAMPLE_BLOCKS * 4, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    record = record_file(path)
    assert check_file(path, record, "full") is None
    data[SAMPLE_BLOCK + 10] ^= 1  # inside the gap after the first sampled block
    path.write_bytes(data.tobytes())
    assert check_file(path, record, "size") is None and check_file(path, record, "sample") is None
    assert "not what index.json recorded" in check_file(path, record, "full")
    path.write_bytes(data.tobytes() + b"more")
    assert "bytes, index.json recorded" in check_file(path, record, "size")
    assert check_file(path, record, "size", grows=True) is None  # an appended-to file is checked over its prefix


def test_full_verification_finds_a_changed_float(index):
    vectors = index / "vectors/attr-00.f32"
    data = bytearray(vectors.read_bytes())
    data[len(data) // 2] ^= 0x40
    vectors.write_bytes(bytes(data))
    with pytest.raises(IndexDamagedError, match="vectors/attr-00.f32"):
        FaissStore(index, verify="full")


def test_an_index_without_recorded_hashes_opens_with_sizes_checked_and_add_records_them(built, index, caplog):
    spec, ckpt, _ = built
    edit_json(index / "index.json", lambda m: {k: v for k, v in m.items() if k != "files"})
    with caplog.at_level(logging.WARNING, logger="agman.retrieval.backends.faiss.store"):
        store = FaissStore(index)
    assert len(store) == 30 and "records no file hashes" in caplog.text
    truncate(index / "vectors/attr-00.f32", 1000)  # sizes are still checked
    with pytest.raises(IndexDamagedError, match="attr-00.f32: truncated: 1000 bytes, 30 items x 32 dimensions"):
        FaissStore(index)
    shutil.copytree(built[2] / "vectors", index / "vectors", dirs_exist_ok=True)
    edit_json(index / "index.json", lambda m: dict(m, dim=16))  # a smaller dim fits in the files: FAISS says
    with pytest.raises(IndexDamagedError, match="attr-00.faiss holds vectors of dimension 32; index.json says dim 16"):
        FaissStore(index, load=True)
    edit_json(index / "index.json", lambda m: dict(m, dim=32))
    build_index(index, from_split(spec, "test"), ckpt, add=True)  # nothing new: records the hashes
    assert set(json.loads((index / "index.json").read_text())["files"]) == {
        "items.jsonl", "vectors/attr-00.f32", "vectors/attr-01.f32", "faiss/attr-00.faiss", "faiss/attr-01.faiss"
    }
    shutil.copy(index / "faiss/attr-01.faiss", index / "faiss/attr-00.faiss")
    with pytest.raises(IndexDamagedError, match="attr-00.faiss"):
        FaissStore(index)


def test_growing_a_damaged_index_is_refused(built, index):
    spec, ckpt, _ = built
    shutil.copy(index / "faiss/attr-01.faiss", index / "faiss/attr-00.faiss")
    with pytest.raises(IndexDamagedError, match="attr-00.faiss"):
        build_index(index, from_split(spec, "valid"), ckpt, add=True)


def test_a_running_store_notices_damage_and_updates(built, index):
    spec, ckpt, _ = built
    store = FaissStore(index, load=True)
    assert store.health().ok and store.health().notes == []
    build_index(index, from_split(spec, "valid"), ckpt, add=True)  # grown on disk: not damage
    health = store.health()
    assert health.ok and "updated (40 items): the server takes it up" in health.notes[0]
    truncate(index / "vectors/attr-01.f32", 64)
    health = store.health()
    assert not health.ok
    assert any(d.startswith("vectors/attr-01.f32: truncated") and "server reads" in d for d in health.damage)
    assert all(str(index) not in d for d in health.damage)  # folder-relative names only


def test_an_append_under_an_open_approximate_store_keeps_its_rows_readable(built, index):
    """#19.3: ``--add`` appends to the vector files in place, and the rows an open HNSW store
    re-scores are still the ones it opened: its searches answer as before (they raised
    FolderChangedError until the reload).  A vector file rewritten in place or replaced is still
    refused, never read as a mix of two versions."""
    spec, ckpt, _ = built
    store = FaissStore(index, load=True)
    q = np.ones(store.info.dim, np.float32) / np.sqrt(store.info.dim)
    rows, sims = store.shortlist(1, q, 5, store.select())
    vectors = store.vectors(1, rows)
    path = index / "vectors/attr-01.f32"
    inode = path.stat().st_ino
    build_index(index, from_split(spec, "valid"), ckpt, add=True)
    assert path.stat().st_ino == inode and store.reopened() is not None  # grown in place, committed
    again, again_sims = store.shortlist(1, q, 5, store.select())
    assert np.array_equal(again, rows) and np.array_equal(again_sims, sims)
    assert np.array_equal(store.vectors(1, again), vectors) and store.health().ok
    whole = path.read_bytes()
    with open(path, "r+b") as f:  # the first row rewritten in place: same inode, same size
        f.write(np.full(store.info.dim, 0.5, np.float32).tobytes())
    with pytest.raises(CatalogIndexError, match="attr-01.f32 changed since the index was opened"):
        store.vectors(1, rows)
    (index / "new.f32").write_bytes(whole)
    (index / "new.f32").replace(path)  # the same bytes in another file (another inode)
    with pytest.raises(CatalogIndexError, match="replaced by another file"):
        store.vectors(1, rows)
    assert np.array_equal(store.vectors(0, rows), FaissStore(index).vectors(0, rows))  # attr-00: untouched rows


def test_a_loaded_flat_store_is_only_degraded_by_damage_on_disk(tmp_path):
    """#19.3: a ``flat`` store with its vectors in memory reads no file per search, so a vector
    file truncated on disk is ``degraded`` (named, folder-relative), not damage, and the store
    answers as before; a complete new version written over it is a note.  The same folder opened
    without ``load`` still reads the file it has not read yet: damage."""
    spec, ckpt, out = build_tiny_index(tmp_path)
    loaded, lazy = FaissStore(out, load=True), FaissStore(out)
    assert loaded.files_read_per_search() == set()
    assert lazy.files_read_per_search() == {out / "vectors/attr-00.f32", out / "vectors/attr-01.f32"}
    lazy.vectors(0)
    assert lazy.files_read_per_search() == {out / "vectors/attr-01.f32"}
    q = np.ones(loaded.info.dim, np.float32) / np.sqrt(loaded.info.dim)
    before = loaded.shortlist(1, q, 5, loaded.select())
    whole = (out / "vectors/attr-01.f32").read_bytes()
    truncate(out / "vectors/attr-01.f32", 64)  # before the first health check: seen against the files as opened
    health = loaded.health()
    assert health.ok and health.damage == []
    assert any(d.startswith("vectors/attr-01.f32: truncated") and "in-memory copy" in d for d in health.degraded)
    assert any(d.startswith("on disk: vectors/attr-01.f32: truncated") for d in health.degraded)
    assert all(str(out) not in d for d in health.degraded) and "in-memory copy" in health.notes[-1]
    after = loaded.shortlist(1, q, 5, loaded.select())
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    lazy_health = lazy.health()
    assert not lazy_health.ok and any(d.startswith("vectors/attr-01.f32: truncated") and "reads this file" in d
                                      for d in lazy_health.damage)
    (out / "vectors/attr-01.f32").write_bytes(whole)  # restored: nothing wrong any more
    assert loaded.health().ok and loaded.health().degraded == []
    build_index(out, from_split(spec, "valid"), ckpt, add=True)  # a complete new version: a note
    health = loaded.health()
    assert health.ok and health.degraded == [] and "updated (40 items)" in health.notes[0]


def test_an_interrupted_commit_says_to_rerun_the_build(index):
    (index / "progress.json").write_text(json.dumps({"embedded": 30, "shards": [], "planned": 30}))
    truncate(index / "faiss/attr-00.faiss", 100)
    with pytest.raises(IndexDamagedError, match="interrupted: rerun it"):
        FaissStore(index)


def test_a_flat_index_records_and_checks_its_vector_files_only(tmp_path):
    _, _, out = build_tiny_index(tmp_path)
    assert set(json.loads((out / "index.json").read_text())["files"]) == {
        "items.jsonl", "vectors/attr-00.f32", "vectors/attr-01.f32"
    }
    truncate(out / "vectors/attr-01.f32", 1000)
    with pytest.raises(IndexDamagedError, match="vectors/attr-01.f32: truncated"):
        FaissStore(out)


SEARCH_AFTER_TRUNCATION = """
import sys
import numpy as np
from agman.retrieval.backends.faiss.store import FaissStore
from agman.retrieval.info import CatalogIndexError
from agman.retrieval.ranking import rank
store = FaissStore(sys.argv[1], load=True)
q = np.ones(store.info.dim, np.float32) / np.sqrt(store.info.dim)
rows, _ = store.shortlist(0, q, 5, store.select())
store.vectors(0, rows)  # read once while the file is whole (a memory map would be made here)
open(sys.argv[1] + "/vectors/attr-00.f32", "r+b").truncate(0)
try:
    rows, _ = store.shortlist(0, q, 5, store.select())
    store.vectors(0, rows)
    print("answered")
except CatalogIndexError as exc:
    print("refused:", type(exc).__name__)
"""


def test_a_vector_file_truncated_under_an_open_store_is_an_error_not_a_crash(index):
    """#19.3: an open HNSW store's vector file truncated in place, then the shortlist re-scored
    from it: a clear error (the rows are read, never memory-mapped), not SIGBUS (run in a child
    process: on a memory map the crash would take the test runner down)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", SEARCH_AFTER_TRUNCATION, str(index)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.strip() in ("refused: IndexDamagedError", "refused: FolderChangedError"), out.stdout
