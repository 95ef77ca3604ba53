"""What one request may ask of the service and what the server holds at most (no web framework
imported: the CLI reads the defaults and the options from here).  Every limit is listed with its
default in docs/retrieval.md ("Limits and security")."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from agman.errors import InvalidValueError

QUERY_THUMBNAIL = 512  # longest side of a kept query image
MiB = 2**20


@dataclass
class ServiceLimits:
    """Bounds on what one request may ask for, on the memory the service keeps, and on connections.

    Memory per request: an upload is at most ``max_upload_bytes`` (spooled to disk past 1 MiB while
    it waits), decoded at most ``decode_slots`` at a time (each at most ``max_pixels`` pixels), then
    reduced to the model's input size and a thumbnail before it waits for the model; recent uploads
    are kept within ``query_cache`` entries and ``query_cache_bytes``.  Uploads waiting for the model
    share a forward pass: at most ``batch_size`` of them, the first waiting ``batch_wait_ms`` for
    the others (``batch_size`` 1: one forward pass per upload).  Whole numbers are ints,
    aspect and seconds floats; every value must be above 0 (``max_aspect`` at least 1).
    """

    max_k: int = 100
    max_page: int = 100
    max_upload_bytes: int = 10 * MiB
    max_pixels: int = 40_000_000
    max_aspect: float = 20.0
    query_cache: int = 256
    query_cache_bytes: int = 64 * MiB
    decode_slots: int = 2
    max_requests: int = 256
    max_connections: int = 1000
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keep_alive: float = 5.0
    batch_size: int = 16
    batch_wait_ms: float = 5.0

    def __post_init__(self):
        for f in fields(self):
            value, integer = getattr(self, f.name), f.type == "int"
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value >= 1 if integer or f.name == "max_aspect" else value > 0)
            if not ok or (integer and not float(value).is_integer()):
                expected = ("a whole number >= 1" if integer
                            else "a number >= 1" if f.name == "max_aspect" else "a number > 0")
                raise InvalidValueError(f"{f.name} must be {expected}, got {value!r}")
            setattr(self, f.name, int(value) if integer else float(value))


SERVE_OPTIONS = [  # (option, ServiceLimits field, unit in the field, what it bounds) for `agman serve`
    ("--max-k", "max_k", 1, "largest k a request may ask"),
    ("--max-page", "max_page", 1, "most catalog items one GET /items page lists"),
    ("--max-upload-mb", "max_upload_bytes", MiB, "upload size limit in MiB"),
    ("--max-pixels", "max_pixels", 1, "decoded image size limit (width x height)"),
    ("--max-aspect", "max_aspect", 1, "largest long/short side ratio of an uploaded image"),
    ("--query-cache", "query_cache", 1, "uploaded queries kept for /attention and query=ID"),
    ("--query-cache-mb", "query_cache_bytes", MiB, "memory those kept queries may take, in MiB"),
    ("--decode-slots", "decode_slots", 1, "uploads decoded at once"),
    ("--max-requests", "max_requests", 1, "requests in progress at once; more are answered 503"),
    ("--max-connections", "max_connections", 1,
     "open connections; past it the longest idle one is closed (lowered to fit the open-files limit)"),
    ("--header-timeout", "header_timeout", 1, "seconds a connection has to send its request head"),
    ("--body-timeout", "body_timeout", 1, "seconds a request body has to arrive"),
    ("--keep-alive", "keep_alive", 1, "seconds an idle keep-alive connection is kept"),
    ("--batch-size", "batch_size", 1, "uploads embedded in one forward pass at most (1: one at a time)"),
    ("--batch-wait-ms", "batch_wait_ms", 1, "milliseconds an upload waits for others to share its forward pass"),
]
"""Each limit's command-line option; a value given in the option's unit is multiplied by the unit."""

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
"""uvicorn's log levels, least verbose first: ``agman serve --log-level`` (default warning)."""
