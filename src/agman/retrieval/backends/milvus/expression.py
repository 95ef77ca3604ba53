"""The filter language (:mod:`agman.retrieval.filters`) translated to a Milvus boolean expression
over a collection's fields (labels and metadata, each guarded by its presence field)."""
from __future__ import annotations

from collections.abc import Mapping

from agman.retrieval.filters import And, Expr, In, IsNull, Literal, Not, Or


def milvus_literal(value: Literal) -> str:
    """``value`` as a Milvus expression literal.  Strings are double-quoted with ``\\`` and ``"``
    escaped, line breaks as ``\\n`` / ``\\r`` (a filter's strings have none, an item id may), and
    every other character as is (the escapes Milvus's parsers agree on)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + escaped + '"'


def to_milvus(expr: Expr, names: Mapping[str, tuple[str, str]]) -> str:
    """A Milvus boolean expression equal to ``expr`` (a checked expression).

    ``names[field] = (value_field, present_field)``: the Milvus scalar field holding the value and
    the bool field saying whether the item has one.  Every comparison is guarded by its presence
    field, so an item without a value fails it whatever logic the server applies to empty values.
    """
    if isinstance(expr, (And, Or)):
        joiner = " and " if isinstance(expr, And) else " or "
        return "(" + joiner.join(to_milvus(e, names) for e in expr.operands) + ")"
    if isinstance(expr, Not):
        return f"(not {to_milvus(expr.operand, names)})"
    value_field, present = names[expr.field]
    if isinstance(expr, IsNull):
        return f"({present} == {'true' if expr.negate else 'false'})"
    if isinstance(expr, In):
        listed = ", ".join(milvus_literal(v) for v in expr.values)
        test = f"{value_field} {'not in' if expr.negate else 'in'} [{listed}]"
    else:
        test = f"{value_field} {expr.op} {milvus_literal(expr.value)}"
    return f"({present} == true and {test})"


def milvus_expression(expr, names: dict, unlabelled: set[str]) -> str:
    """``to_milvus`` with the conditions on attributes that have no label field (added by ``--extend``)
    decided as for an item without a label: ``is null`` holds, every other test fails."""
    if not unlabelled:
        return to_milvus(expr, names)
    if isinstance(expr, (And, Or)):
        joiner = " and " if isinstance(expr, And) else " or "
        return "(" + joiner.join(milvus_expression(e, names, unlabelled) for e in expr.operands) + ")"
    if isinstance(expr, Not):
        return f"(not {milvus_expression(expr.operand, names, unlabelled)})"
    if expr.field in unlabelled:
        return "(pk >= 0)" if isinstance(expr, IsNull) and not expr.negate else "(pk < 0)"
    return to_milvus(expr, names)
