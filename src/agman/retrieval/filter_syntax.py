"""The filter language's syntax (:mod:`agman.retrieval.filters`): the text read into tokens and
parsed into the tree of :mod:`agman.retrieval.filter_ast`, every error naming its column."""
from __future__ import annotations

import math
from dataclasses import dataclass

from agman.retrieval.filter_ast import (
    MAX_DEPTH,
    MAX_LENGTH,
    And,
    Compare,
    Expr,
    FilterSyntaxError,
    In,
    IsNull,
    Literal,
    Not,
    Or,
)

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
