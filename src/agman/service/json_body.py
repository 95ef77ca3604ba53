"""Reading a JSON request body within bounds: at most ``MAX_JSON_BYTES``, its nesting depth is counted before it is parsed
(a body nested 100,000 deep would exhaust the parser's recursion), numbers longer than
``MAX_NUMBER_CHARS`` and ``NaN`` / ``Infinity`` are refused while it is parsed (a 400-digit integer
overflows a float later), and a string holding a lone UTF-16 surrogate (``"\\ud800"``, which no
UTF-8 text can hold) is refused after.  Every refusal is a 400 naming what was wrong."""
from __future__ import annotations

import json
import re

import numpy as np
from fastapi import HTTPException

MAX_JSON_BYTES = 1 << 20  # a search or an item change takes a few hundred bytes
MAX_JSON_DEPTH = 32  # nested objects / arrays; a search or an item change needs 3
MAX_NUMBER_CHARS = 40  # characters of one JSON number (a float64 needs at most 24)
OPENERS = np.frombuffer(b"[{", dtype=np.uint8)
CLOSERS = np.frombuffer(b"]}", dtype=np.uint8)

# a string, closed by its quote or by the end of the body (so no text is scanned twice)
_STRING = re.compile(rb'"(?:[^"\\]|\\.?)*(?:"|\Z)', re.DOTALL)


class _Refused(ValueError):
    """A number or constant the body may not hold (raised from inside ``json.loads``)."""


def _number(text: str) -> str:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"a number of {len(text)} characters ({text[:12]}...): at most {MAX_NUMBER_CHARS} are allowed")
    return text


def _int(text: str) -> int:
    return int(_number(text))


def _float(text: str) -> float:
    value = float(_number(text))
    if value in (float("inf"), float("-inf")):
        raise _Refused(f"the number {text} is out of range")
    return value


def _constant(text: str):
    raise _Refused(f"{text} is not a JSON value (JSON numbers are finite)")


def nesting_depth(raw: bytes) -> int:
    """The deepest nesting of objects and arrays in ``raw`` (brackets inside strings skipped);
    linear in the body's length, in C (a regex and numpy)."""
    codes = np.frombuffer(_STRING.sub(b"", raw), dtype=np.uint8)
    step = np.isin(codes, OPENERS).astype(np.int32) - np.isin(codes, CLOSERS)
    return int(np.cumsum(step).max(initial=0))


def parse_json(raw: bytes, what: str = "the body"):
    """``raw`` parsed, or a 400 (413 past ``MAX_JSON_BYTES``) saying why not (see the module)."""
    if len(raw) > MAX_JSON_BYTES:
        raise HTTPException(413, f"{what} has {len(raw)} bytes: a JSON body may have at most {MAX_JSON_BYTES}")
    if nesting_depth(raw) > MAX_JSON_DEPTH:
        raise HTTPException(400, f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(raw, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except _Refused as exc:
        raise HTTPException(400, f"{what}: {exc}") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise HTTPException(400, f"{what} is not valid JSON: {exc}") from None
    where = _surrogate(data, "")
    if where is not None:
        raise HTTPException(400, f"{what}: {where or 'the value'} holds a lone UTF-16 surrogate (e.g. \\ud800), "
                                 "which is not Unicode text")
    return data


def _surrogate(value, where: str) -> str | None:
    """Where in ``value`` a string (or key) holds a lone surrogate, or None."""
    if isinstance(value, str):
        return None if _encodable(value) else where
    if isinstance(value, dict):
        for key, v in value.items():
            inner = f"{where}.{key}" if where else str(key)
            if not _encodable(key):
                return f"a key of {where or 'the object'}"
            found = _surrogate(v, inner)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _surrogate(v, f"{where}[{i}]")
            if found is not None:
                return found
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
