"""What one request may ask of the service (no web framework imported: the CLI reads the defaults)."""
from __future__ import annotations

from dataclasses import dataclass

from agman.errors import InvalidValueError

DEFAULT_MAX_K = 100
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_QUERY_CACHE = 256
QUERY_THUMBNAIL = 512  # longest side of a kept query image


@dataclass
class ServiceLimits:
    """Bounds on what one request may ask for, and how many uploads are kept for /attention."""

    max_k: int = DEFAULT_MAX_K
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    query_cache: int = DEFAULT_QUERY_CACHE

    def __post_init__(self):
        for name in ("max_k", "max_upload_bytes", "max_pixels"):
            if int(getattr(self, name)) < 1:
                raise InvalidValueError(f"{name} must be at least 1, got {getattr(self, name)}")
            setattr(self, name, int(getattr(self, name)))
        self.query_cache = max(1, int(self.query_cache))
