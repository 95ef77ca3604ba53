"""Filter expressions over catalog items: parse once, check against the fields, evaluate anywhere.

The language (docs/retrieval.md, "Filters", has the full description)::

    category == "dress" and price < 50
    colour in ["red", "blue"] and not in_stock == false
    (neckline_design == "v_neck" or sleeve_length is null) and `brand name` != 'Acme'

* comparisons ``== != < <= > >=`` between a field and a literal (``< <= > >=`` on numbers only),
  ``FIELD in [..]`` / ``FIELD not in [..]``, ``FIELD is null`` / ``FIELD is not null``, and a bare
  bool field (``in_stock`` = ``in_stock == true``);
* ``and`` binds tighter than ``or``; ``not`` applies to what follows it (a comparison or a
  parenthesised group); keywords are case-insensitive;
* literals: ``"..."`` or ``'...'`` strings (escapes ``\\"`` ``\\'`` ``\\\\`` ``\\t``; no line
  breaks), numbers (``50``, ``-3.5``, ``1e3``), ``true``/``false``;
* field names as written (``price``), or between backquotes for any other name (```brand name```).

**Missing values.**  An item without a value for a field (no label for an attribute, an empty
metadata cell) fails every comparison on it, ``!=`` and ``not in`` included; ``not`` negates the
whole sub-expression, so ``not price == 5`` keeps items without a price and ``price != 5`` does not.
``is null`` / ``is not null`` test for the missing value.

:func:`compile_filter` parses the text into a small AST and checks it against the catalog's fields
(names, kinds, label values).  The same checked expression then gives a boolean mask over columnar
numpy data (:func:`evaluate`, vectorised) or, in the Milvus backend, a boolean expression
(:mod:`agman.retrieval.backends.milvus.expression`).
Every problem is a :class:`FilterError` (a ``UsageError``) naming the column of the filter text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# the language's tree and errors are named here too: `from agman.retrieval.filters import And, FilterError`
from agman.retrieval.filter_ast import FIELD_KINDS, MAX_DEPTH, MAX_LENGTH, Expr, Field, Literal  # noqa: F401
from agman.retrieval.filter_ast import And, Compare, In, IsNull, Not, Or, annotated, both  # noqa: F401
from agman.retrieval.filter_ast import FilterError, FilterFieldError, FilterSyntaxError  # noqa: F401
from agman.retrieval.filter_syntax import parse


# --------------------------------------------------------------------------- checking
def _kind_of(value: Literal) -> str:
    return "bool" if isinstance(value, bool) else "number" if isinstance(value, float) else "string"


def _literal_text(value: Literal) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else f"{value:g}"


def check(expr: Expr, fields: Mapping[str, Field], text: str = "") -> Expr:
    """Raise :class:`FilterFieldError` unless every field exists and every value fits its kind."""

    def fail(message: str, column: int):
        raise FilterFieldError(message, text, column or None)

    def lookup(name: str, column: int) -> Field:
        if name not in fields:
            known = sorted(fields)
            listed = ", ".join(known[:30]) + (f", ... ({len(known)} in all)" if len(known) > 30 else "")
            fail(f"unknown field {name!r}; the catalog has: {listed or 'no fields'}", column)
        return fields[name]

    def value(f: Field, v: Literal, column: int) -> None:
        kind = "string" if f.kind == "label" else f.kind
        if _kind_of(v) != kind:
            what = f"attribute {f.name!r}" if f.kind == "label" else f"{f.kind} field {f.name!r}"
            fail(f"{what} is compared with {_kind_of(v)} {_literal_text(v)}; expected a {kind}", column)
        if f.kind == "label" and v not in f.values:
            fail(f"{v!r} is not a value of attribute {f.name!r}; its values: {', '.join(f.values)}", column)

    def walk(e: Expr) -> None:
        if isinstance(e, (And, Or)):
            for x in e.operands:
                walk(x)
        elif isinstance(e, Not):
            walk(e.operand)
        elif isinstance(e, IsNull):
            lookup(e.field, e.column)
        elif isinstance(e, In):
            f = lookup(e.field, e.column)
            for v in e.values:
                value(f, v, e.column)
        else:
            f = lookup(e.field, e.column)
            if e.op not in ("==", "!=") and f.kind != "number":
                fail(f"{e.op!r} compares numbers, and {f.name!r} is a {f.kind} field", e.column)
            if e.bare and f.kind != "bool":
                fail(f"{f.name!r} is a {f.kind} field; only a bool field stands alone (write {f.name} == …)", e.column)
            value(f, e.value, e.column)

    walk(expr)
    return expr


@dataclass(frozen=True)
class Filter:
    """A parsed and checked filter: its text and AST."""

    text: str
    expr: Expr

    def mask(self, columns: Mapping[str, Column], n: int) -> np.ndarray:
        return evaluate(self.expr, columns, n)


def compile_filter(text: str, fields: Mapping[str, Field]) -> Filter:
    """Parse ``text`` and check it against ``fields``: the one entry point for user filters."""
    return Filter(text, check(parse(text), fields, text))


# --------------------------------------------------------------------------- numpy evaluation
@dataclass(frozen=True)
class Column:
    """One field over the catalog rows: ``values`` (float64 numbers, bools, or int32 codes into
    ``categories`` for labels and strings) and ``present`` (False where the item has no value)."""

    kind: str
    values: np.ndarray
    present: np.ndarray
    categories: tuple[str, ...] = ()

    @classmethod
    def build(cls, field: Field, cells: Sequence[Literal | None]) -> Column:
        """The column of ``field`` from one Python value (or None) per row."""
        present = np.fromiter((c is not None for c in cells), dtype=bool, count=len(cells))
        if field.kind in ("label", "string"):
            categories = field.values if field.kind == "label" else tuple(sorted({c for c in cells if c is not None}))
            code = {v: i for i, v in enumerate(categories)}
            values = np.fromiter((-1 if c is None else code[c] for c in cells), dtype=np.int32, count=len(cells))
            return cls(field.kind, values, present, tuple(categories))
        dtype = np.float64 if field.kind == "number" else bool
        values = np.fromiter((0 if c is None else c for c in cells), dtype=dtype, count=len(cells))
        return cls(field.kind, values, present)

    @property
    def coded(self) -> bool:
        """Labels and strings: ``values`` are codes into ``categories`` (which may be empty)."""
        return self.kind in ("label", "string")

    def codes(self, literals: Sequence[Literal]) -> np.ndarray:
        """The column values ``literals`` correspond to (categories: their codes; unknown ones dropped)."""
        if self.coded:
            index = {v: i for i, v in enumerate(self.categories)}
            return np.asarray([index[v] for v in literals if v in index], dtype=np.int32)
        return np.asarray(literals, dtype=self.values.dtype)


_NUMPY_OPS = {
    "==": np.equal,
    "!=": np.not_equal,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
}


def evaluate(expr: Expr, columns: Mapping[str, Column], n: int) -> np.ndarray:
    """Boolean mask ``[n]`` of the rows ``expr`` (a checked expression) keeps."""
    if isinstance(expr, And):
        out = np.ones(n, dtype=bool)
        for e in expr.operands:
            out &= evaluate(e, columns, n)
        return out
    if isinstance(expr, Or):
        out = np.zeros(n, dtype=bool)
        for e in expr.operands:
            out |= evaluate(e, columns, n)
        return out
    if isinstance(expr, Not):
        return ~evaluate(expr.operand, columns, n)
    col = columns[expr.field]
    if isinstance(expr, IsNull):
        return col.present.copy() if expr.negate else ~col.present
    if isinstance(expr, In):
        hit = np.isin(col.values, col.codes(expr.values))
        return col.present & (~hit if expr.negate else hit)
    if col.coded:  # labels and strings: compare codes; a string no row has matches nothing
        code = col.codes([expr.value])
        equal = col.values == code[0] if len(code) else np.zeros(n, dtype=bool)
        return col.present & (equal if expr.op == "==" else ~equal)
    return col.present & _NUMPY_OPS[expr.op](col.values, expr.value)
