"""The filter language's tree (:mod:`agman.retrieval.filters`): fields and their kinds, the
expression nodes, and the filter errors (each naming the column of the filter text)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Union

from agman.errors import InvalidValueError

FIELD_KINDS = ("label", "string", "number", "bool")
"""``label``: an attribute's value name (one of the checkpoint's values); ``string``, ``number``
(float64), ``bool``: typed metadata."""

MAX_LENGTH = 10_000  # characters of filter text
MAX_DEPTH = 64  # nested parentheses / not


# --------------------------------------------------------------------------- errors
class FilterError(InvalidValueError):
    """A filter that cannot be used: the message names the column (1-based) and what was expected."""

    def __init__(self, message: str, text: str = "", column: int | None = None):
        self.column = column
        self.text = text
        if column is None:
            super().__init__(f"invalid filter: {message}")
            return
        lo = max(0, column - 1 - 50)
        snippet = text[lo : column - 1 + 30].replace("\n", " ").replace("\r", " ").replace("\t", " ")
        caret = " " * (column - 1 - lo) + "^"
        super().__init__(f"invalid filter at column {column}: {message}\n  {snippet}\n  {caret}")


class FilterSyntaxError(FilterError):
    """The filter text does not follow the grammar."""


class FilterFieldError(FilterError):
    """The filter names an unknown field, or compares a field with a value of another kind."""


# --------------------------------------------------------------------------- fields and AST
@dataclass(frozen=True)
class Field:
    """A field a filter may name: its kind, and for labels the attribute's value names."""

    name: str
    kind: str
    values: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in FIELD_KINDS:
            kinds = ", ".join(FIELD_KINDS)
            raise InvalidValueError(f"field {self.name!r}: kind must be one of {kinds}, got {self.kind!r}")


Literal = Union[str, float, bool]


@dataclass(frozen=True)
class Compare:
    """``field op value`` (op one of == != < <= > >=); ``bare``: written as a lone bool field."""

    field: str
    op: str
    value: Literal
    column: int = field(default=0, compare=False)
    bare: bool = False


@dataclass(frozen=True)
class In:
    """``field in [values]`` (``negate``: ``not in``)."""

    field: str
    values: tuple[Literal, ...]
    negate: bool = False
    column: int = field(default=0, compare=False)


@dataclass(frozen=True)
class IsNull:
    """``field is null`` (``negate``: ``is not null``)."""

    field: str
    negate: bool = False
    column: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Not:
    operand: Expr


@dataclass(frozen=True)
class And:
    operands: tuple[Expr, ...]


@dataclass(frozen=True)
class Or:
    operands: tuple[Expr, ...]


Expr = Union[Compare, In, IsNull, Not, And, Or]


def annotated(attributes: Sequence[str]) -> Expr:
    """Items annotated with every one of ``attributes`` (``a is not null and ...``)."""
    return And(tuple(IsNull(a, negate=True) for a in attributes))


def both(a: Expr | None, b: Expr | None) -> Expr | None:
    """``a and b``, either side optional."""
    if a is None or b is None:
        return b if a is None else a
    return And((a, b))
