"""The shared parser of dataset files: text, JSON and integer rows, each value with the line it came from.

Every reader (ASEN, CSN, catalog CSV, attribute sources) goes through these functions, so a file that
cannot be read at all (missing, a folder, not UTF-8, invalid JSON) fails the same way everywhere: a
:class:`DatasetError` naming the file and, where there is one, the 1-based line.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from agman.data.spec import DatasetError


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The whole file as text; any read or decoding failure as a DatasetError naming the file."""
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path) from None
    except FileNotFoundError:
        raise DatasetError("file not found", path) from None
    except OSError as exc:  # a folder, no permission, an I/O error
        raise DatasetError(f"cannot read the file ({exc.strerror or exc})", path) from None


def read_lines(path: Path) -> list[str]:
    """The file's lines (line ``n`` is element ``n - 1``)."""
    return read_text(path).splitlines()


def read_json(path: Path):
    """The file parsed as JSON; invalid JSON names the line of the first error."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"invalid JSON ({exc.msg})", path, exc.lineno) from None
    except RecursionError:
        raise DatasetError("invalid JSON (nested too deeply)", path) from None


def int_rows(path: Path, n_fields: int | None) -> Iterator[tuple[int, list[int]]]:
    """Yield (line number, integers) for each non-blank line.

    ``n_fields`` is the exact field count, or None for the label format
    ``img attr value [attr value ...]`` (an odd count of at least 3).
    """
    for lineno, raw in enumerate(read_lines(path), start=1):
        fields = raw.split()
        if not fields:
            continue
        if n_fields is not None and len(fields) != n_fields:
            raise DatasetError(
                f"expected {n_fields} integer fields, got {len(fields)}: {raw.strip()!r}", path, lineno
            )
        if n_fields is None and (len(fields) < 3 or len(fields) % 2 == 0):
            raise DatasetError(
                "expected 'image attribute value [attribute value ...]' (an odd number of at least 3 "
                f"integer fields), got {len(fields)}: {raw.strip()!r}",
                path,
                lineno,
            )
        try:
            values = [int(f) for f in fields]
        except ValueError:
            bad = next(f for f in fields if not _is_int(f))
            raise DatasetError(f"expected integers, got {bad!r} in {raw.strip()!r}", path, lineno) from None
        yield lineno, values


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def read_path_list(path: Path) -> list[str]:
    """A list of image paths, one per line (line number = image index); trailing blank lines are
    ignored, a blank line inside the list is an error (it would shift every index after it)."""
    lines = read_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            raise DatasetError("blank line inside the filenames list (every line is one image path)", path, lineno)
    return [line.strip() for line in lines]


def positive_int(value) -> bool:
    """True for an int >= 1 (not a bool: JSON/YAML ``true`` is no count)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
