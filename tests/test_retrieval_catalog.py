"""Catalog CSVs with declared label, metadata and id columns: typed items, errors naming the line and
the column, the schema filters are checked against, and numpy columns for filtering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_csv

from agman.data.spec import Attribute, DatasetError
from agman.errors import InvalidValueError, UsageError
from agman.data.catalog_csv import CatalogColumns, CatalogSchemaError, parse_metadata_declarations
from agman.retrieval.catalog import CatalogSchema
from agman.retrieval.filters import compile_filter
from agman.retrieval.imagesets import read_catalog
from agman.retrieval.info import IndexConfig, IndexedCheckpoint, IndexInfo
from agman.retrieval.items import Item

ATTRS = (Attribute("collar", ("round", "v", "square")), Attribute("pattern", ("solid", "stripes")))
META = {"sku": "string", "price": "number", "in_stock": "bool", "title": "string"}


def write(tmp_path: Path, text: str, name: str = "shop.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


SHOP = '''path,sku,collar,price,in_stock,title,pattern
img/a.png,A-1,round,19.5,yes,"Dress, red",solid
img/b.png,B-2,,1e3,FALSE,,stripes
img/c.png,C-3,v,,1,"He said ""hi""",
'''


def test_a_row_becomes_id_path_labels_and_typed_metadata(tmp_path):
    cat = read_catalog(write(tmp_path, SHOP), ATTRS, CatalogColumns(metadata=META))
    assert [it.id for it in cat.items] == ["img/a.png", "img/b.png", "img/c.png"]  # ids: the path cells
    a, b, c = cat.items
    assert a == Item(
        "img/a.png",
        "img/a.png",
        {"collar": "round", "pattern": "solid"},
        {"sku": "A-1", "price": 19.5, "in_stock": True, "title": "Dress, red"},
    )
    assert b.labels == {"pattern": "stripes"} and b.metadata == {"sku": "B-2", "price": 1000.0, "in_stock": False}
    assert c.metadata == {"sku": "C-3", "in_stock": True, "title": 'He said "hi"'}  # empty cell = missing
    assert cat.root == tmp_path.resolve()
    s = cat.image_set()
    assert s.paths[0] == str(tmp_path.resolve() / "img/a.png") and s.labels[1] == {"pattern": "stripes"}


def test_id_column_and_prefix(tmp_path):
    cols = CatalogColumns(
        metadata={"price": "number", "in_stock": "bool", "title": "string"}, id_column="sku", id_prefix="shopA/"
    )
    cat = read_catalog(write(tmp_path, SHOP), ATTRS, cols)
    assert [it.id for it in cat.items] == ["shopA/A-1", "shopA/B-2", "shopA/C-3"]
    assert "sku" not in cat.items[0].metadata
    assert [f for f in cat.schema.fields()] == ["collar", "pattern", "price", "in_stock", "title"]
    # a prefix alone keeps two folders with the same file names apart
    other = read_catalog(write(tmp_path, SHOP), ATTRS, CatalogColumns(metadata=META, id_prefix="shopB/"))
    assert other.items[0].id == "shopB/img/a.png"


def test_labels_can_be_restricted_and_the_plain_import_csv_format_still_reads(tmp_path):
    csv_path = make_csv(tmp_path / "cat", n=12)
    cat = read_catalog(csv_path, ATTRS)
    assert len(cat) == 12 and cat.items[0].labels == {"collar": "round"}
    assert cat.items[1].labels == {"collar": "v", "pattern": "stripes"}
    with pytest.raises(CatalogSchemaError, match="column 'pattern' is neither an attribute"):
        read_catalog(csv_path, ATTRS, CatalogColumns(labels=("collar",)))
    # declared as metadata instead: the column is typed payload, not a label
    plain = read_catalog(csv_path, (ATTRS[0],), CatalogColumns(metadata={"pattern": "string"}))
    assert plain.items[1].labels == {"collar": "v"} and plain.items[1].metadata == {"pattern": "stripes"}


@pytest.mark.parametrize(
    "text, line, message",
    [
        (
            "path,collar\na.png,round\nb.png,vneck\n",
            3,
            "column 'collar': 'vneck' is not a value of this attribute (round, square, v)",
        ),
        ("path,price\na.png,12\nb.png,cheap\n", 3, "column 'price': 'cheap' is not a number"),
        ("path,price\na.png,nan\n", 2, "column 'price': 'nan' is not a finite number"),
        ("path,price\na.png,inf\n", 2, "not a finite number"),
        ("path,in_stock\na.png,maybe\n", 2, "column 'in_stock': 'maybe' is not a bool"),
        ("path,collar\na.png,round,extra\n", 2, "expected 2 comma-separated fields"),
        ("path,collar\n,round\n", 2, "column 'path': empty image path"),
        ("path,collar\na.png,round\n\na.png,v\n", 4, "image 'a.png' is listed twice (first on line 2)"),
        ('path,title\na.png,"unterminated\n', None, "unreadable CSV"),
        ("path,sku\na.png,\n", 2, "column 'sku': empty item id"),
    ],
)
def test_bad_cells_name_the_line_and_the_column(tmp_path, text, line, message):
    header = text.splitlines()[0].split(",")
    cols = CatalogColumns(
        metadata={k: v for k, v in META.items() if k in header and k != "sku"},
        id_column="sku" if "sku" in header else None,
    )
    path = write(tmp_path, text)
    with pytest.raises(DatasetError) as err:
        read_catalog(path, ATTRS, cols)
    assert message in str(err.value)
    assert str(path) in str(err.value)
    if line is not None:
        assert err.value.line == line and f"line {line}" in str(err.value)


def test_declaration_errors(tmp_path):
    path = write(tmp_path, SHOP)
    # a metadata column named like an attribute: refused at import
    with pytest.raises(CatalogSchemaError, match="metadata column 'collar' has the name of one of the checkpoint's"):
        read_catalog(path, ATTRS, CatalogColumns(metadata={**META, "collar": "string"}))
    # an undeclared extra column no longer becomes a label silently
    with pytest.raises(
        CatalogSchemaError, match="column 'sku' is neither an attribute of the checkpoint .* --metadata sku:string"
    ):
        read_catalog(path, ATTRS, CatalogColumns(metadata={k: v for k, v in META.items() if k != "sku"}))
    with pytest.raises(CatalogSchemaError, match="no column 'colour' in the header"):
        read_catalog(path, ATTRS, CatalogColumns(metadata={**META, "colour": "string"}))
    with pytest.raises(CatalogSchemaError, match="label column 'sleeve' is not an attribute"):
        read_catalog(write(tmp_path, "path,sleeve\na,b\n", "s.csv"), ATTRS, CatalogColumns(labels=("sleeve",)))
    with pytest.raises(CatalogSchemaError, match="type must be one of string, number, bool"):
        CatalogSchema.create(ATTRS, {"price": "float"})
    with pytest.raises(DatasetError, match="column 'collar' appears twice"):
        read_catalog(write(tmp_path, "path,collar,collar\na,round,v\n", "d.csv"), ATTRS)
    with pytest.raises(DatasetError, match="catalog CSV not found"):
        read_catalog(tmp_path / "missing.csv", ATTRS)
    with pytest.raises(DatasetError, match="no item rows"):
        read_catalog(write(tmp_path, "path,collar\n", "e.csv"), ATTRS)
    assert issubclass(CatalogSchemaError, UsageError)


def test_metadata_declarations_parse():
    assert parse_metadata_declarations("price:number, title ,in_stock:BOOL") == {
        "price": "number",
        "title": "string",
        "in_stock": "bool",
    }
    assert parse_metadata_declarations(["a:string", "b:number"]) == {"a": "string", "b": "number"}
    with pytest.raises(CatalogSchemaError, match="type must be one of"):
        parse_metadata_declarations("price:money")
    with pytest.raises(CatalogSchemaError, match="declared twice"):
        parse_metadata_declarations(["a", "a:number"])


def test_schema_round_trip_fields_and_item_checks():
    schema = CatalogSchema.create(ATTRS, {"price": "number", "in_stock": "bool"})
    info = IndexInfo(IndexedCheckpoint("0" * 16, Path("c.pt"), "agman", 64, 1.0), list(ATTRS), 8, IndexConfig(),
                     metadata={"price": "number", "in_stock": "bool"})
    assert CatalogSchema.of(IndexInfo.parse(info.to_json(), "index.json")) == schema  # what an index records
    fields = schema.fields()
    assert fields["collar"].kind == "label" and fields["collar"].values == ("round", "v", "square")
    assert fields["price"].kind == "number"
    good = schema.check_item(Item("x", "x.png", {"collar": "v"}, {"price": 3, "in_stock": False}))
    assert good.metadata == {"price": 3.0, "in_stock": False} and isinstance(good.metadata["price"], float)
    for bad, message in [
        (Item("x", "p", {"collar": "vneck"}), "'vneck' is not a value of attribute 'collar'"),
        (Item("x", "p", {"sleeve": "long"}), "'sleeve' is not an attribute"),
        (Item("x", "p", {}, {"price": "3"}), "item 'x', metadata 'price': expected a finite number, got '3'"),
        (Item("x", "p", {}, {"price": float("nan")}), "expected a finite number"),
        (Item("x", "p", {}, {"in_stock": 1}), "expected a bool"),
        (Item("x", "p", {}, {"colour": "red"}), "no metadata column 'colour'"),
    ]:
        with pytest.raises(InvalidValueError, match=message):
            schema.check_item(bad)


def test_columns_feed_filters(tmp_path):
    cat = read_catalog(write(tmp_path, SHOP), ATTRS, CatalogColumns(metadata=META))
    cols = cat.columns()
    assert cols["price"].values.dtype == np.float64 and cols["price"].present.tolist() == [True, True, False]
    assert cols["collar"].categories == ("round", "v", "square")
    flt = compile_filter("price < 100 or collar == 'v'", cat.schema.fields())
    assert flt.mask(cols, len(cat)).tolist() == [True, False, True]
    flt = compile_filter("in_stock and title is null", cat.schema.fields())
    assert flt.mask(cols, len(cat)).tolist() == [False, False, False]
    assert compile_filter("not in_stock", cat.schema.fields()).mask(cols, len(cat)).tolist() == [False, True, False]


def test_the_id_column_declared_as_metadata_is_stored_for_every_item(tmp_path):
    """#19.1: ``--id-column sku --metadata sku,...`` recorded ``sku`` in the schema but stored it for
    no item (``sku is null`` matched all); the id column's cells are stored as metadata too."""
    cols = CatalogColumns(metadata=META, id_column="sku", id_prefix="shopA/")
    cat = read_catalog(write(tmp_path, SHOP), ATTRS, cols)
    assert [it.id for it in cat.items] == ["shopA/A-1", "shopA/B-2", "shopA/C-3"]
    assert [it.metadata["sku"] for it in cat.items] == ["A-1", "B-2", "C-3"]
    fields = cat.schema.fields()
    assert compile_filter("sku is null", fields).mask(cat.columns(), len(cat)).tolist() == [False] * 3
    assert compile_filter('sku == "B-2"', fields).mask(cat.columns(), len(cat)).tolist() == [False, True, False]
    # the path column too, and the typed check applies to its cells
    cat = read_catalog(write(tmp_path, SHOP), ATTRS, CatalogColumns(metadata={**META, "path": "string"}))
    assert cat.items[1].metadata["path"] == "img/b.png"
    with pytest.raises(DatasetError, match="line 2.*column 'sku'.*not a number"):
        read_catalog(write(tmp_path, SHOP), ATTRS, CatalogColumns(metadata={**META, "sku": "number"}, id_column="sku"))


def test_filters_on_a_string_column_without_any_value(tmp_path):
    """#19.4: a string metadata column no item has a value for: ``==`` / ``!=`` / ``in`` / ``not in``
    match nothing (a missing value fails every comparison) instead of a numpy error."""
    text = SHOP.replace("path,sku,", "path,brand,sku,").replace("img/a.png,", "img/a.png,,").replace(
        "img/b.png,", "img/b.png,,").replace("img/c.png,", "img/c.png,,")
    cat = read_catalog(write(tmp_path, text), ATTRS, CatalogColumns(metadata={**META, "brand": "string"}))
    fields, cols = cat.schema.fields(), cat.columns()
    assert cols["brand"].categories == () and not cols["brand"].present.any()
    for text, expected in [('brand == "acme"', False), ('brand != "acme"', False), ('brand in ["acme"]', False),
                           ('brand not in ["acme", "b"]', False), ('not brand == "acme"', True),
                           ("brand is null", True)]:
        assert compile_filter(text, fields).mask(cols, len(cat)).tolist() == [expected] * 3, text
