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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

import numpy as np

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


# --------------------------------------------------------------------------- tokens
_KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false"}
_OPERATORS = ("==", "!=", "<=", ">=", "<", ">")
_PUNCT = "()[],"
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "t": "\t"}
_DIGITS = frozenset("0123456789")  # str.isdigit() would take "²"
_HINTS = {"=": "'=='", "&": "'and'", "|": "'or'", "!": "'not' or '!='"}


@dataclass(frozen=True)
class _Token:
    kind: str  # "op", "punct", "kw", "name", "string", "number", "end"
    value: object
    column: int
    text: str


def _describe(tok: _Token) -> str:
    if tok.kind == "end":
        return "the end of the filter"
    return f"{tok.text!r}" if tok.kind != "string" else f"the string {tok.text}"


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        col = i + 1
        if ch.isspace():
            i += 1
        elif text.startswith(_OPERATORS, i):
            op = next(o for o in _OPERATORS if text.startswith(o, i))
            out.append(_Token("op", op, col, op))
            i += len(op)
        elif ch in _PUNCT:
            out.append(_Token("punct", ch, col, ch))
            i += 1
        elif ch in "\"'":
            value, end = _read_string(text, i)
            out.append(_Token("string", value, col, text[i:end]))
            i = end
        elif ch in _DIGITS or (ch in "-+." and i + 1 < n and (text[i + 1] in _DIGITS or text[i + 1] == ".")):
            value, end = _read_number(text, i)
            out.append(_Token("number", value, col, text[i:end]))
            i = end
        elif ch == "_" or (ch.isascii() and ch.isalpha()):
            end = i + 1
            while end < n and (text[end] == "_" or (text[end].isascii() and text[end].isalnum())):
                end += 1
            word = text[i:end]
            kind = "kw" if word.lower() in _KEYWORDS else "name"
            out.append(_Token(kind, word.lower() if kind == "kw" else word, col, word))
            i = end
        elif ch == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise FilterSyntaxError("unterminated `quoted field name`: expected a closing backquote", text, col)
            name = text[i + 1 : end]
            if not name.strip():
                raise FilterSyntaxError("empty `quoted field name`", text, col)
            out.append(_Token("name", name, col, text[i : end + 1]))
            i = end + 1
        else:
            hint = f" (write {_HINTS[ch]})" if ch in _HINTS else ""
            raise FilterSyntaxError(f"unexpected character {ch!r}{hint}", text, col)
    out.append(_Token("end", None, n + 1, ""))
    return out


def _read_string(text: str, start: int) -> tuple[str, int]:
    quote = text[start]
    chars: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return "".join(chars), i + 1
        if ch in "\r\n":
            raise FilterSyntaxError("a string cannot contain a line break", text, i + 1)
        if ch == "\\":
            esc = text[i + 1 : i + 2]
            if esc not in _ESCAPES:
                raise FilterSyntaxError(f"unknown escape \\{esc} in a string (use \\\", \\', \\\\ or \\t)", text, i + 1)
            chars.append(_ESCAPES[esc])
            i += 2
            continue
        chars.append(ch)
        i += 1
    raise FilterSyntaxError(f"unterminated string: expected a closing {quote}", text, start + 1)


def _read_number(text: str, start: int) -> tuple[float, int]:
    i = start + (text[start] in "-+")
    digits = 0
    while i < len(text) and text[i] in _DIGITS:
        i, digits = i + 1, digits + 1
    if i < len(text) and text[i] == ".":
        i += 1
        while i < len(text) and text[i] in _DIGITS:
            i, digits = i + 1, digits + 1
    if digits and i < len(text) and text[i] in "eE":
        j = i + 1 + (text[i + 1 : i + 2] in ("-", "+"))
        if j < len(text) and text[j] in _DIGITS:
            i = j
            while i < len(text) and text[i] in _DIGITS:
                i += 1
    if i < len(text) and (text[i].isalnum() or text[i] in "._"):
        raise FilterSyntaxError(f"malformed number {text[start : i + 1]!r}", text, start + 1)
    if not digits:
        raise FilterSyntaxError(f"malformed number {text[start:i]!r}", text, start + 1)
    value = float(text[start:i])
    if not math.isfinite(value):
        raise FilterSyntaxError(f"number {text[start:i]} is out of range", text, start + 1)
    return value, i


# --------------------------------------------------------------------------- parser
class _Parser:
    """Recursive descent over the token list; one method per grammar rule."""

    def __init__(self, text: str):
        self.text = text
        self.toks = _tokens(text)
        self.pos = 0
        self.depth = 0

    @property
    def tok(self) -> _Token:
        return self.toks[self.pos]

    def take(self) -> _Token:
        tok = self.toks[self.pos]
        self.pos += 1
        return tok

    def is_kw(self, word: str) -> bool:
        return self.tok.kind == "kw" and self.tok.value == word

    def fail(self, expected: str, tok: _Token | None = None):
        tok = tok or self.tok
        raise FilterSyntaxError(f"expected {expected}, found {_describe(tok)}", self.text, tok.column)

    def nest(self, column: int):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterSyntaxError(f"nested deeper than {MAX_DEPTH} levels", self.text, column)

    def filter(self) -> Expr:
        if self.tok.kind == "end":
            self.fail("a condition such as price < 50")
        expr = self.or_expr()
        if self.tok.kind != "end":
            self.fail("'and', 'or' or the end of the filter")
        return expr

    def or_expr(self) -> Expr:
        return self.chain("or", self.and_expr, Or)

    def and_expr(self) -> Expr:
        return self.chain("and", self.unary, And)

    def chain(self, word: str, operand, node) -> Expr:
        """``operand (word operand)*`` as one n-ary ``node`` (or the single operand)."""
        parts = [operand()]
        while self.is_kw(word):
            self.take()
            parts.append(operand())
        return parts[0] if len(parts) == 1 else node(tuple(parts))

    def unary(self) -> Expr:
        if self.is_kw("not"):
            self.nest(self.take().column)
            operand = self.unary()
            self.depth -= 1
            return Not(operand)
        if self.tok.kind == "punct" and self.tok.value == "(":
            self.nest(self.take().column)
            expr = self.or_expr()
            if not (self.tok.kind == "punct" and self.tok.value == ")"):
                self.fail("')' or 'and' / 'or'")
            self.take()
            self.depth -= 1
            return expr
        return self.predicate()

    def predicate(self) -> Expr:
        tok = self.tok
        if tok.kind != "name":
            quoted = f" (write `{tok.text}` for a field of that name)" if tok.kind == "kw" else ""
            self.fail(f"a field name{quoted}, 'not' or '('")
        self.take()
        name, col = str(tok.value), tok.column
        nxt = self.tok
        if nxt.kind == "op":
            self.take()
            return Compare(name, str(nxt.value), self.literal(), col)
        after = self.toks[self.pos + 1] if nxt.kind != "end" else nxt
        if self.is_kw("in") or (self.is_kw("not") and after.kind == "kw" and after.value == "in"):
            negate = self.take().value == "not"
            if negate:
                self.take()
            return In(name, self.literal_list(), negate, col)
        if self.is_kw("is"):
            self.take()
            negate = self.is_kw("not")
            if negate:
                self.take()
            if not self.is_kw("null"):
                self.fail("'null' after 'is'" if not negate else "'null' after 'is not'")
            self.take()
            return IsNull(name, negate, col)
        if nxt.kind == "end" or (nxt.kind in ("kw", "punct") and nxt.value in ("and", "or", ")")):
            return Compare(name, "==", True, col, bare=True)
        self.fail(f"a comparison (== != < <= > >=), 'in', 'not in' or 'is [not] null' after {name!r}")

    def literal(self) -> Literal:
        tok = self.tok
        if tok.kind in ("string", "number"):
            self.take()
            return tok.value
        if tok.kind == "kw" and tok.value in ("true", "false"):
            self.take()
            return tok.value == "true"
        self.fail('a value (a "string", a number, true or false)')

    def literal_list(self) -> tuple[Literal, ...]:
        if not (self.tok.kind == "punct" and self.tok.value == "["):
            self.fail("'[' to start the list of values")
        self.take()
        values = [self.literal()]
        while self.tok.kind == "punct" and self.tok.value == ",":
            self.take()
            if self.tok.kind == "punct" and self.tok.value == "]":
                break
            values.append(self.literal())
        if not (self.tok.kind == "punct" and self.tok.value == "]"):
            self.fail("',' or ']'")
        self.take()
        return tuple(values)


def parse(text: str) -> Expr:
    """The AST of ``text`` (syntax only; :func:`check` binds it to fields)."""
    if not isinstance(text, str):
        raise FilterSyntaxError(f"a filter is text, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise FilterSyntaxError(f"longer than {MAX_LENGTH} characters ({len(text)})")
    return _Parser(text).filter()


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
