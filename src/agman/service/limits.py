"""What one request may ask of the service and what the server holds at most (no web framework
imported: the CLI reads the defaults).  Every limit is listed with its default in docs/retrieval.md
("Limits and security")."""
from __future__ import annotations

from dataclasses import dataclass

from agman.errors import InvalidValueError

DEFAULT_MAX_K = 100
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_ASPECT = 20.0
DEFAULT_QUERY_CACHE = 256
DEFAULT_QUERY_CACHE_BYTES = 64 * 1024 * 1024
DEFAULT_DECODE_SLOTS = 2
DEFAULT_MAX_REQUESTS = 256
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 60.0
DEFAULT_KEEP_ALIVE = 5.0
QUERY_THUMBNAIL = 512  # longest side of a kept query image


@dataclass
class ServiceLimits:
    """Bounds on what one request may ask for, on the memory the service keeps, and on connections.

    Memory per request: an upload is at most ``max_upload_bytes`` (spooled to disk past 1 MiB while
    it waits), decoded at most ``decode_slots`` at a time (each at most ``max_pixels`` pixels), then
    reduced to the model's input size and a thumbnail before it waits for the model; recent uploads
    are kept within ``query_cache`` entries and ``query_cache_bytes``.
    """

    max_k: int = DEFAULT_MAX_K
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect: float = DEFAULT_MAX_ASPECT
    query_cache: int = DEFAULT_QUERY_CACHE
    query_cache_bytes: int = DEFAULT_QUERY_CACHE_BYTES
    decode_slots: int = DEFAULT_DECODE_SLOTS
    max_requests: int = DEFAULT_MAX_REQUESTS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    keep_alive: float = DEFAULT_KEEP_ALIVE

    def __post_init__(self):
        for name in ("max_k", "max_upload_bytes", "max_pixels", "query_cache", "query_cache_bytes", "decode_slots",
                     "max_requests", "max_connections"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise InvalidValueError(f"{name} must be an integer of at least 1, got {value!r}")
            setattr(self, name, int(value))
        for name in ("max_aspect", "header_timeout", "body_timeout", "keep_alive"):
            value = float(getattr(self, name))
            if not 0 < value < float("inf") or (name == "max_aspect" and value < 1):
                raise InvalidValueError(f"{name} must be a finite number above {1 if name == 'max_aspect' else 0}, "
                                        f"got {getattr(self, name)!r}")
            setattr(self, name, value)
