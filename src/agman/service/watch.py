"""The running server follows its index: a background thread asks the Retriever every few seconds
whether the index changed (an ``agman index --add / --update / --delete`` run committed) and swaps
in the reopened index.

Why reload on change rather than an admin endpoint: a commit rewrites ``index.json`` atomically as
its last step, so "index.json has a new inode" means "a complete new version is there"; checking is
one ``stat`` per interval, and nobody has to remember to call anything after a nightly update.
The swap is safe under concurrent searches: a search takes the store once when it starts and
finishes on it (a store is immutable once open; the files it reads are only appended to past its
rows, or replaced atomically), the next search takes the new one.  A reopen that fails (another
checkpoint's index, a damaged folder) leaves the old index serving and is reported by ``/health``.
Milvus needs none of this: every committed write is visible to the next search.
"""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class IndexWatch:
    """Calls ``retriever.refresh()`` every ``interval`` seconds on a daemon thread (0: never)."""

    def __init__(self, retriever, interval: float = 2.0):
        self.retriever = retriever
        self.interval = float(interval)
        self.generation = 0  # reloads so far
        self.reloaded_at: float | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if self.interval > 0:
            self._thread = threading.Thread(target=self._run, name="agman-index-watch", daemon=True)
            self._thread.start()

    def check(self) -> bool:
        """Reload now if the index changed; True when it did.  Never raises: a failed reopen keeps
        the index being served and is kept in ``error``."""
        with self._lock:
            try:
                changed = self.retriever.refresh()
            except Exception as exc:  # keep serving what was open
                message = f"{type(exc).__name__}: {exc}"
                if message != self.error:
                    log.error("the index changed but could not be reopened (still serving the previous one): %s",
                              message)
                self.error = message
                return False
            self.error = None
            if changed:
                self.generation += 1
                self.reloaded_at = time.time()
                log.warning("index reloaded: %d items", len(self.retriever))
            return changed

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def status(self) -> dict:
        return {"generation": self.generation, "reloaded_at": self.reloaded_at, "reload_error": self.error}
