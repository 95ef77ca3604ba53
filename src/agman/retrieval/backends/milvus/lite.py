"""Milvus Lite as agman runs it: its server on a private unix socket, and the files of a served
database checked for damage.

pymilvus serves a ``.db`` file through Milvus Lite's gRPC server on ``127.0.0.1:<free port>``,
without authentication: any local process could read or change the catalog through it, whatever
``agman serve --token`` / ``--writable`` say.  :func:`lite_uri` starts the server itself instead,
in this process, listening on a unix socket inside a folder only this user can enter
(``tempfile.mkdtemp``: mode 0700), and connects to that: no TCP port is opened.  Processes of the
same user (who can read and write the ``.db`` files anyway) remain able to reach it — that is
the boundary; a shared or exposed writable catalog belongs on a Milvus server with its own
authentication.  Where Milvus Lite cannot do this (another milvus-lite version), pymilvus's own
loopback port is used and :data:`LOOPBACK` names the file.

:func:`lite_problems` checks the data files a collection's manifest lists (present, Parquet magic
at both ends), so a served database truncated on disk is reported by ``/health`` instead of at the
next start.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from agman.retrieval.backends.faiss.check import FolderHealth
from agman.retrieval.backends.faiss.integrity import stat_key

log = logging.getLogger(__name__)

_SERVERS: dict[str, tuple] = {}  # absolute .db path -> (server, db, unix URI, private folder)
_LOCK = threading.Lock()
LOOPBACK: set[str] = set()
"""The ``.db`` files served on pymilvus's unauthenticated loopback port (no unix socket possible)."""


class LiteLockedError(Exception):
    """Another process holds the Milvus Lite file."""


def lite_uri(path: str) -> str:
    """The URI a ``MilvusClient`` connects to for the Milvus Lite file ``path``: a unix socket of a
    server this process started (once per file), or ``path`` itself when Milvus Lite cannot serve
    on a socket (pymilvus then opens its loopback port)."""
    full = os.path.abspath(path)
    with _LOCK:
        if full in _SERVERS:
            return _SERVERS[full][2]
        try:
            from milvus_lite.adapter.grpc.server import start_server_in_thread
        except ImportError:
            LOOPBACK.add(full)
            return path
        folder = tempfile.mkdtemp(prefix="agman-milvus-")  # 0700: only this user can reach the socket
        socket = os.path.join(folder, "milvus.sock")
        try:
            server, db, _ = start_server_in_thread(data_dir=full, host=f"unix:{socket}", port=0)
        except Exception as exc:
            shutil.rmtree(folder, ignore_errors=True)
            if type(exc).__name__ == "DataDirLockedError":
                raise LiteLockedError(str(exc)) from None
            log.warning("Milvus Lite cannot serve %s on a unix socket (%s): using its loopback port", full, exc)
            LOOPBACK.add(full)
            return path
        if not _SERVERS:
            atexit.register(_stop_all)
        uri = f"unix:{socket}:0"  # Milvus Lite appends the port to the address it binds
        _SERVERS[full] = (server, db, uri, folder)
        return uri


def _stop_all() -> None:
    with _LOCK:
        servers = list(_SERVERS.values())
        _SERVERS.clear()
    for server, db, _, folder in servers:
        try:
            server.stop(grace=1)
            db.close()
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def lite_problems(data_dir: str | Path, collection: str) -> list[str]:
    """What is wrong with the files of ``collection`` in the Milvus Lite folder ``data_dir``: an
    unreadable manifest, a data or delta file it lists missing, or a Parquet file without its
    magic at either end (truncated).  Paths are relative to ``data_dir``."""
    root = Path(data_dir)
    folder = root / "collections" / collection
    manifest = folder / "manifest.json"
    try:
        listing = json.loads(manifest.read_text(encoding="utf-8"))
        partitions = listing["partitions"]
        files = [folder / "partitions" / p / rel for p, entry in partitions.items()
                 for rel in [*entry.get("data_files", []), *entry.get("delta_files", [])]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return [f"{manifest.relative_to(root)}: unreadable ({type(exc).__name__})"]
    problems = []
    for path in files:
        name = path.relative_to(root)
        try:
            with open(path, "rb") as f:
                head = f.read(4)
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - 4))
                tail = f.read(4)
        except OSError:
            problems.append(f"{name}: missing")
            continue
        if path.suffix == ".parquet" and (size < 12 or head != b"PAR1" or tail != b"PAR1"):
            problems.append(f"{name}: truncated or damaged ({size} bytes, no Parquet end marker)")
    return problems


class LiteWatch:
    """``health()`` of a served Milvus Lite collection: re-checks its files (:func:`lite_problems`)
    when the manifest or a listed file changed (one ``stat`` per file otherwise)."""

    def __init__(self, data_dir: str | Path, collection: str):
        self.data_dir, self.collection = Path(data_dir), collection
        self.seen: dict | None = None
        self.verdict = FolderHealth()
        self._lock = threading.Lock()

    def _keys(self) -> dict:
        folder = self.data_dir / "collections" / self.collection
        paths = [folder / "manifest.json", *sorted((folder / "partitions").glob("*/*/*.parquet"))]
        return {p: stat_key(p) for p in paths}

    def check(self) -> FolderHealth:
        with self._lock:
            keys = self._keys()
            if keys != self.seen:
                self.verdict = FolderHealth(damage=lite_problems(self.data_dir, self.collection))
                self.seen = keys
            return self.verdict
