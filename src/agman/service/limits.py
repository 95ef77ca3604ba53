"""What one request may ask of the service (no web framework imported: the CLI reads the defaults)."""
from __future__ import annotations

from dataclasses import dataclass

from agman.errors import InvalidValueError

DEFAULT_MAX_K = 100
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_QUERY_CACHE = 256
DEFAULT_BATCH_SIZE = 16
DEFAULT_BATCH_WAIT_MS = 5.0
DEFAULT_RELOAD_SECONDS = 2.0
QUERY_THUMBNAIL = 512  # longest side of a kept query image


@dataclass
class ServiceLimits:
    """Bounds on what one request may ask for, and how many uploads are kept for /attention."""

    max_k: int = DEFAULT_MAX_K
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    query_cache: int = DEFAULT_QUERY_CACHE
    batch_size: int = DEFAULT_BATCH_SIZE  # uploads embedded in one forward pass at most (1: one at a time)
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS  # how long the first upload of a batch waits for more
    reload_seconds: float = DEFAULT_RELOAD_SECONDS  # how often the index is checked for changes (0: never)
    writable: bool = False  # DELETE / PUT /items/{id} allowed

    def __post_init__(self):
        if int(self.batch_size) < 1 or not 0 <= float(self.batch_wait_ms) <= 1000 or float(self.reload_seconds) < 0:
            raise InvalidValueError(
                f"batch_size must be at least 1, batch_wait_ms from 0 to 1000, reload_seconds >= 0; got "
                f"{self.batch_size}, {self.batch_wait_ms}, {self.reload_seconds}"
            )
        for name in ("max_k", "max_upload_bytes", "max_pixels"):
            if int(getattr(self, name)) < 1:
                raise InvalidValueError(f"{name} must be at least 1, got {getattr(self, name)}")
            setattr(self, name, int(getattr(self, name)))
        self.query_cache = max(1, int(self.query_cache))
