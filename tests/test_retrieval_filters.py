"""The filter language: grammar, checking against fields, numpy evaluation, the Milvus expression
(checked against Milvus Lite), and a fuzz run that lets nothing but FilterError escape."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agman.errors import UsageError
from agman.retrieval.backends.milvus.expression import to_milvus
from agman.retrieval.filter_ast import (
    MAX_DEPTH,
    And,
    Compare,
    Field,
    FilterError,
    FilterFieldError,
    FilterSyntaxError,
    In,
    IsNull,
    Not,
    Or,
    annotated,
)
from agman.retrieval.filters import Column, compile_filter, evaluate, parse

FIELDS = {
    "category": Field("category", "string"),
    "price": Field("price", "number"),
    "in_stock": Field("in_stock", "bool"),
    "neckline": Field("neckline", "label", ("v_neck", "round", "o'neck")),
    "brand name": Field("brand name", "string"),
}

# the catalog rows the evaluation tests use (None = no value)
TRICKY = ["dress", 'a"b', "c\\d", "it's", "tab\there", "ünï €😀", 'x\\"y', "", "and", "\\"]
ROWS = [
    {
        "category": TRICKY[i % len(TRICKY)] if i % 7 else None,
        "price": [10.0, 49.5, 50.0, -3.0, 1e-5, 1e20, 0.0][i % 7] if i % 5 else None,
        "in_stock": (i % 3 == 0) if i % 4 else None,
        "neckline": ("v_neck", "round", "o'neck")[i % 3] if i % 6 else None,
        "brand name": ("Acme", "Zed")[i % 2] if i % 9 else None,
    }
    for i in range(63)
]


def columns(rows=ROWS):
    return {name: Column.build(f, [r[name] for r in rows]) for name, f in FIELDS.items()}


# --------------------------------------------------------------------------- a reference evaluator
def reference(expr, row) -> bool:
    """Plain-Python meaning of an expression for one row (the documented semantics)."""
    if isinstance(expr, And):
        return all(reference(e, row) for e in expr.operands)
    if isinstance(expr, Or):
        return any(reference(e, row) for e in expr.operands)
    if isinstance(expr, Not):
        return not reference(expr.operand, row)
    v = row[expr.field]
    if isinstance(expr, IsNull):
        return (v is not None) if expr.negate else (v is None)
    if v is None:
        return False
    if isinstance(expr, In):
        return (v not in expr.values) if expr.negate else (v in expr.values)
    return {
        "==": v == expr.value,
        "!=": v != expr.value,
        "<": v < expr.value if not isinstance(v, str) else None,
        "<=": v <= expr.value,
        ">": v > expr.value,
        ">=": v >= expr.value,
    }[expr.op]


def text_of(expr) -> str:
    """Filter text for an AST (the inverse of parse, fully parenthesised)."""

    def name(f):
        return f if f.replace("_", "a").isalnum() and f.isascii() and f.lower() not in ("and", "or") else f"`{f}`"

    def lit(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return repr(v)
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    if isinstance(expr, (And, Or)):
        return "(" + (" and " if isinstance(expr, And) else " or ").join(text_of(e) for e in expr.operands) + ")"
    if isinstance(expr, Not):
        return f"not {text_of(expr.operand)}"
    if isinstance(expr, IsNull):
        return f"{name(expr.field)} is {'not ' if expr.negate else ''}null"
    if isinstance(expr, In):
        return f"{name(expr.field)} {'not in' if expr.negate else 'in'} [{', '.join(lit(v) for v in expr.values)}]"
    return f"{name(expr.field)} {expr.op} {lit(expr.value)}"


# --------------------------------------------------------------------------- grammar
def test_parse_builds_the_documented_ast():
    assert parse('category == "dress" and price < 50') == And(
        (Compare("category", "==", "dress"), Compare("price", "<", 50.0))
    )
    assert parse('colour in ["red", "blue",]') == In("colour", ("red", "blue"))
    assert parse("not in_stock == false") == Not(Compare("in_stock", "==", False))
    # and binds tighter than or; keywords in any case
    assert parse("a == 1 OR b == 2 And c == 3") == Or(
        (Compare("a", "==", 1.0), And((Compare("b", "==", 2.0), Compare("c", "==", 3.0))))
    )
    assert parse("(a == 1 or b == 2) and c == 3") == And(
        (Or((Compare("a", "==", 1.0), Compare("b", "==", 2.0))), Compare("c", "==", 3.0))
    )
    assert parse("x not in [1, -2.5e3] or y is not null or z is null") == Or(
        (In("x", (1.0, -2500.0), negate=True), IsNull("y", negate=True), IsNull("z"))
    )
    assert parse("`brand name` != 'it\\'s' and in_stock") == And(
        (Compare("brand name", "!=", "it's"), Compare("in_stock", "==", True, bare=True))
    )
    assert parse("price>=-.5") == Compare("price", ">=", -0.5)
    assert parse("`and` == 'x'") == Compare("and", "==", "x")


@pytest.mark.parametrize(
    "text, column, expected",
    [
        ("price <", 8, "expected a value"),
        ("price = 5", 7, "write '=='"),
        ("price == 5 && in_stock", 12, "write 'and'"),
        ("(price < 5", 11, "expected ')'"),
        ("price < 5 price", 11, "'and', 'or' or the end"),
        ("price in []", 11, "expected a value"),
        ("price in 5", 10, "'[' to start the list"),
        ('"a" == price', 1, "expected a field name"),
        ("price == 1e999", 10, "out of range"),
        ("price == 1.2.3", 10, "malformed number"),
        ("price == 'abc", 10, "unterminated string"),
        ("price == 'a\\qb'", 12, "unknown escape"),
        ("price == 'a\nb'", 12, "line break"),
        ("category is dress", 13, "'null' after 'is'"),
        ("category", None, None),  # syntax is fine; checking refuses it (below)
        ("", 1, "expected a condition"),
        ("and == 3", 1, "write `and`"),
        ("price == 5 )", 12, "'and', 'or' or the end"),
        ("`unclosed == 3", 1, "closing backquote"),
    ],
)
def test_syntax_errors_name_the_column_and_what_was_expected(text, column, expected):
    if column is None:
        parse(text)
        return
    with pytest.raises(FilterSyntaxError) as err:
        parse(text)
    assert err.value.column == column
    assert expected in str(err.value)
    assert f"column {column}" in str(err.value)
    assert isinstance(err.value, UsageError)  # exit code 2 on the CLI, 400 in the service


def test_nesting_and_length_are_bounded():
    deep = "(" * (MAX_DEPTH + 1) + "price < 1" + ")" * (MAX_DEPTH + 1)
    with pytest.raises(FilterSyntaxError, match="nested deeper"):
        parse(deep)
    with pytest.raises(FilterSyntaxError, match="nested deeper"):
        parse("not " * (MAX_DEPTH + 1) + "price < 1")
    parse("(" * MAX_DEPTH + "price < 1" + ")" * MAX_DEPTH)
    with pytest.raises(FilterSyntaxError, match="longer than"):
        parse("price < 1 or " * 2000 + "price < 2")


# --------------------------------------------------------------------------- checking
@pytest.mark.parametrize(
    "text, expected",
    [
        ("colour == 'red'", "unknown field 'colour'; the catalog has: brand name, category, in_stock, neckline, price"),
        ("price == 'cheap'", "number field 'price' is compared with string 'cheap'; expected a number"),
        ("category < 'm'", "'<' compares numbers, and 'category' is a string field"),
        ("in_stock == 1", "bool field 'in_stock' is compared with number 1; expected a bool"),
        ("neckline == 'vneck'", "'vneck' is not a value of attribute 'neckline'; its values: v_neck, round, o'neck"),
        ("neckline in ['round', 3]", "attribute 'neckline' is compared with number 3"),
        ("category", "only a bool field stands alone"),
        ("price > 3 and `brand` == 'x'", "unknown field 'brand'"),
    ],
)
def test_unknown_fields_and_kind_mismatches_are_clear_errors(text, expected):
    with pytest.raises(FilterFieldError) as err:
        compile_filter(text, FIELDS)
    assert expected in str(err.value)
    assert err.value.column is not None


# --------------------------------------------------------------------------- numpy evaluation
@pytest.mark.parametrize(
    "text",
    [
        'category == "dress" and price < 50',
        "category == 'a\"b' or category == 'c\\\\d' or category == \"it's\"",
        "category in ['tab\tthere', 'ünï €😀', '\\\\', '', 'and']",
        "not in_stock == false",
        "in_stock",
        "not in_stock",
        "price != 50",
        "not price == 50",
        "price not in [10, 0] and in_stock is not null",
        'neckline == "o\'neck" or neckline is null',
        "(neckline != 'round' or price >= 1e20) and not (`brand name` == 'Acme' and price <= -3)",
        "category == 'never there'",
        "category != 'never there'",
    ],
)
def test_evaluation_matches_the_documented_semantics_row_by_row(text):
    flt = compile_filter(text, FIELDS)
    mask = evaluate(flt.expr, columns(), len(ROWS))
    assert mask.dtype == bool and mask.shape == (len(ROWS),)
    assert mask.tolist() == [reference(flt.expr, r) for r in ROWS]


def test_missing_values_fail_every_comparison_but_not_its_negation():
    cols = columns()
    no_price = np.array([r["price"] is None for r in ROWS])
    assert no_price.any()
    neq = compile_filter("price != 50", FIELDS).mask(cols, len(ROWS))
    not_eq = compile_filter("not price == 50", FIELDS).mask(cols, len(ROWS))
    assert not neq[no_price].any() and not_eq[no_price].all()
    assert compile_filter("price is null", FIELDS).mask(cols, len(ROWS)).tolist() == no_price.tolist()
    both_attrs = evaluate(annotated(["neckline"]), cols, len(ROWS))
    assert both_attrs.tolist() == [r["neckline"] is not None for r in ROWS]


# --------------------------------------------------------------------------- generated expressions
_field_values = {
    "category": st.sampled_from(TRICKY + ["never there"]),
    "price": st.sampled_from([10.0, 49.5, 50.0, -3.0, 1e-5, 1e20, 0.0, 7.25]),
    "in_stock": st.booleans(),
    "neckline": st.sampled_from(FIELDS["neckline"].values),
    "brand name": st.sampled_from(["Acme", "Zed", "acme"]),
}


@st.composite
def atoms(draw):
    name = draw(st.sampled_from(sorted(FIELDS)))
    kind = FIELDS[name].kind
    form = draw(st.sampled_from(["cmp", "in", "null"]))
    if form == "null":
        return IsNull(name, draw(st.booleans()))
    if form == "in":
        return In(name, tuple(draw(st.lists(_field_values[name], min_size=1, max_size=4))), draw(st.booleans()))
    ops = ["==", "!=", "<", "<=", ">", ">="] if kind == "number" else ["==", "!="]
    return Compare(name, draw(st.sampled_from(ops)), draw(_field_values[name]))


expressions = st.recursive(
    atoms(),
    lambda inner: st.one_of(
        inner.map(Not),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: And(tuple(xs))),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs))),
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions)
def test_generated_expressions_round_trip_and_evaluate_like_the_reference(expr):
    text = text_of(expr)
    flt = compile_filter(text, FIELDS)
    assert flt.expr == expr
    assert flt.mask(columns(), len(ROWS)).tolist() == [reference(expr, r) for r in ROWS]


# --------------------------------------------------------------------------- fuzzing: only FilterError escapes
_pieces = st.sampled_from(
    [
        "price",
        "category",
        "in_stock",
        "neckline",
        "`brand name`",
        "`",
        "==",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "=",
        "!",
        "and",
        "or",
        "not",
        "in",
        "is",
        "null",
        "true",
        "false",
        "(",
        ")",
        "[",
        "]",
        ",",
        "'",
        '"',
        "\\",
        "-",
        ".",
        "1",
        "2.5",
        "-3e2",
        "1e400",
        "'dress'",
        '"o\'neck"',
        "'round'",
        " ",
        "\t",
        "\n",
        "é",
        "\x00",
        "😀",
        "&&",
    ]
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(_pieces, max_size=25).map(" ".join), st.lists(_pieces, max_size=25).map("".join), st.text()))
def test_fuzzed_filter_text_raises_only_filter_errors(text):
    try:
        flt = compile_filter(text, FIELDS)
    except FilterError as exc:
        assert str(exc).startswith("invalid filter")
        return
    mask = flt.mask(columns(), len(ROWS))
    assert mask.dtype == bool
    to_milvus(flt.expr, {name: (f"f{j}", f"f{j}_set") for j, name in enumerate(FIELDS)})


# --------------------------------------------------------------------------- Milvus
@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    """A Milvus Lite collection holding ROWS with the translation's field layout."""
    pymilvus = pytest.importorskip("pymilvus")
    dt = pymilvus.DataType
    client = pymilvus.MilvusClient(str(tmp_path_factory.mktemp("lite") / "filters.db"))
    names = {name: (f"f{j:02d}", f"f{j:02d}_set") for j, name in enumerate(FIELDS)}
    schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("pk", dt.INT64, is_primary=True)
    schema.add_field("vector", dt.FLOAT_VECTOR, dim=2)
    for name, (value, present) in names.items():
        kind = FIELDS[name].kind
        if kind in ("label", "string"):
            schema.add_field(value, dt.VARCHAR, max_length=256)
        else:
            schema.add_field(value, dt.DOUBLE if kind == "number" else dt.BOOL)
        schema.add_field(present, dt.BOOL)
    index = client.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
    client.create_collection("rows", schema=schema, index_params=index, consistency_level="Strong")
    records = []
    for i, r in enumerate(ROWS):
        e = {"pk": i, "vector": [1.0, 0.0]}
        for name, (value, present) in names.items():
            e[present] = r[name] is not None
            e[value] = r[name] if r[name] is not None else {"number": 0.0, "bool": False}.get(FIELDS[name].kind, "")
        records.append(e)
    client.insert("rows", records)
    client.load_collection("rows")
    yield client, names
    client.close()


def _milvus_mask(client, expression: str) -> list[bool]:
    hits = {e["pk"] for e in client.query("rows", filter=expression, output_fields=["pk"])}
    return [i in hits for i in range(len(ROWS))]


def test_strings_with_quotes_backslashes_and_unicode_reach_milvus_intact(lite):
    client, names = lite
    for value in sorted({r["category"] for r in ROWS if r["category"] is not None}):
        flt = compile_filter(text_of(Compare("category", "==", value)), FIELDS)
        expected = [r["category"] == value for r in ROWS]
        assert any(expected)
        assert _milvus_mask(client, to_milvus(flt.expr, names)) == expected, value


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(expressions)
def test_milvus_expressions_select_the_rows_numpy_selects(lite, expr):
    client, names = lite
    expected = evaluate(expr, columns(), len(ROWS)).tolist()
    assert _milvus_mask(client, to_milvus(expr, names)) == expected


def test_numbers_keep_their_value_in_milvus_expressions():
    for v in (1e-5, 1e20, -0.0, 5e-324, 0.1, 123456789.125):
        text = to_milvus(Compare("price", "==", v), {"price": ("p", "p_set")})
        assert float(text.split("== ")[-1].rstrip(")")) == v
        assert math.isfinite(float(text.split("== ")[-1].rstrip(")")))


# --------------------------------------------------------------------------- #19.4: a string column with no values
_vendor = st.builds(lambda form, negate, values, op, value: (
    IsNull("vendor", negate) if form == "null" else In("vendor", tuple(values), negate) if form == "in"
    else Compare("vendor", op, value)),
    st.sampled_from(["null", "in", "cmp"]), st.booleans(), st.lists(st.sampled_from(TRICKY), min_size=1, max_size=3),
    st.sampled_from(["==", "!="]), st.sampled_from(TRICKY))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(st.one_of(_vendor, atoms()), lambda inner: st.one_of(
    inner.map(Not), st.lists(inner, min_size=2, max_size=3).map(lambda xs: And(tuple(xs))),
    st.lists(inner, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs)))), max_leaves=6))
def test_a_string_column_no_item_has_a_value_for_evaluates_like_the_reference(expr):
    """A string metadata column without a single value (no categories) takes every comparison: a
    missing value fails them all (it used to raise numpy's UFuncNoLoopError / ValueError)."""
    fields = {**FIELDS, "vendor": Field("vendor", "string")}
    rows = [{**r, "vendor": None} for r in ROWS]
    cols = {name: Column.build(f, [r[name] for r in rows]) for name, f in fields.items()}
    flt = compile_filter(text_of(expr), fields)
    assert flt.mask(cols, len(rows)).tolist() == [reference(expr, r) for r in rows]
