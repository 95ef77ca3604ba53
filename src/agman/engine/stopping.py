"""StopFlag: SIGINT/SIGTERM during training ask for a checkpoint and a clean stop, a second signal aborts."""
from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("agman.engine.train")


class StopFlag:
    """Set by SIGINT/SIGTERM (first signal: finish the step, checkpoint, stop; second: abort)."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stop requested: finishing this step, writing the checkpoint (signal again to abort)")

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
