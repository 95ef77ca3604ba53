"""Readers of the ASEN, CSN and catalog-CSV layouts: the happy path and every documented error."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_FASHIONAI_SPLIT, make_asen, needs_real_split

from agman.data.layouts import (
    open_dataset,
    read_asen,
    read_catalog_csv,
    read_catalog_table,
    read_csn,
    write_asen,
)
from agman.data.spec import UNLABELED, DatasetError


# --------------------------------------------------------------------------- real FashionAI split
@needs_real_split
def test_real_fashionai_validation_split():
    spec = open_dataset(REAL_FASHIONAI_SPLIT)
    meta = json.loads((REAL_FASHIONAI_SPLIT / "meta.json").read_text())
    assert spec.attribute_names == meta["ATTRIBUTES"]
    assert spec.value_counts == [meta["ATTRIBUTES_NUM"][a] for a in meta["ATTRIBUTES"]]
    assert [list(a.values) for a in spec.attributes] == [meta["ATTRIBUTES_VALUES"][a] for a in meta["ATTRIBUTES"]]
    valid = spec.split("valid")
    assert len(valid) == 18_000
    assert valid.queries.shape == (3_600, 3)
    assert valid.candidates.shape == (14_400, 3)
    # Per-attribute counts equal counting the files directly.
    for kind, arr in (("query", valid.queries), ("candidate", valid.candidates)):
        direct = {}
        for line in (REAL_FASHIONAI_SPLIT / f"{kind}_valid.txt").read_text().splitlines():
            a = int(line.split()[1])
            direct[a] = direct.get(a, 0) + 1
        assert dict(enumerate(np.bincount(arr[:, 1]).tolist())) == direct
    # FashionAI: every image carries at most one attribute.
    assert ((valid.labels != UNLABELED).sum(axis=1) <= 1).all()
    assert ((valid.labels != UNLABELED).sum(axis=1) == 1).sum() == 18_000


# --------------------------------------------------------------------------- ASEN layout
def test_asen_reads_all_splits(asen_root):
    spec = read_asen(asen_root)
    assert list(spec.splits) == ["train", "valid", "test"]
    assert spec.attribute_names == ["attr0", "attr1"]
    assert spec.attributes[0].values == ("attr0_v0", "attr0_v1", "attr0_v2")
    train = spec.split("train")
    assert len(train) == 24 and train.labels.shape == (24, 2)
    assert train.labels_of(4) == {0: 1, 1: 0}
    assert (spec.root / train.paths[0]).is_file()
    valid = spec.split("valid")
    assert len(valid.queries) == 2 * 2 and len(valid.candidates) == 8 * 2
    assert set(valid.images_with(0, 1).tolist()) == {1, 4, 7}


def test_asen_dataset_subfolder_and_multi_dataset_meta(tmp_path):
    make_asen(tmp_path / "data" / "FashionAI")
    one = json.loads((tmp_path / "data" / "FashionAI" / "meta.json").read_text())
    (tmp_path / "data" / "FashionAI" / "meta.json").unlink()
    (tmp_path / "data" / "meta.json").write_text(json.dumps({"FashionAI": one, "DARN": one}))
    spec = read_asen(tmp_path / "data", "fashionai")
    assert spec.attribute_names == ["attr0", "attr1"]
    with pytest.raises(DatasetError, match="several datasets"):
        read_asen(tmp_path / "data" / "FashionAI")
    with pytest.raises(DatasetError, match="has no dataset 'Nope'"):
        read_asen(tmp_path / "data" / "FashionAI", meta=tmp_path / "data" / "meta.json", dataset="Nope")


def test_asen_yaml_alternative(asen_root, tmp_path):
    (asen_root / "meta.json").unlink()
    yml = tmp_path / "ds.yaml"
    yml.write_text("DATA:\n  NUM_ATTRIBUTES: 2\n  ATTRIBUTES:\n    NAME: [collar, sleeve]\n    NUM: [3, 2]\n")
    spec = read_asen(asen_root, yaml_config=yml)
    assert spec.attribute_names == ["collar", "sleeve"] and spec.value_counts == [3, 2]
    yml.write_text("DATA:\n  NUM_ATTRIBUTES: 3\n  ATTRIBUTES:\n    NAME: [collar, sleeve]\n    NUM: [3, 2]\n")
    with pytest.raises(DatasetError, match="NUM_ATTRIBUTES is 3"):
        read_asen(asen_root, yaml_config=yml)
    yml.write_text("DATA:\n  DATASET: x\n")
    with pytest.raises(DatasetError, match=r"ds\.yaml: missing entry DATA\.ATTRIBUTES"):
        read_asen(asen_root, yaml_config=yml)


def test_write_asen_round_trip(asen_root, tmp_path):
    spec = read_asen(asen_root)
    out = write_asen(spec, tmp_path / "copy")
    again = read_asen(out)
    assert again.attributes == spec.attributes
    for name in spec.splits:
        a, b = spec.split(name), again.split(name)
        assert np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.queries, b.queries) and np.array_equal(a.candidates, b.candidates)
        assert [(again.root / p).resolve() for p in b.paths] == [(spec.root / p).resolve() for p in a.paths]


# --- every documented error names the file and the line
def _edit(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "file,line,text,message",
    [
        ("label_train.txt", 3, "2 0", r"expected 'image attribute value"),
        ("label_train.txt", 3, "2 0 x", r"expected integers, got 'x'"),
        ("label_train.txt", 5, "4 7 0", r"attribute index 7 out of range \(expected 0\.\.1\)"),
        ("label_train.txt", 5, "4 0 3", r"value 3 out of range for attribute 0 \(attr0: expected 0\.\.2\)"),
        ("label_train.txt", 2, "99 0 1", r"image index 99 is past the filenames list filenames_train\.txt"),
        ("query_valid.txt", 1, "0 0 0 1", r"expected 3 integer fields, got 4"),
        ("query_valid.txt", 4, "5 0 1",
         r"image 5 is given value 1 of attribute 0 \(attr0\), but query_valid\.txt line 3 gave it value 2"),
        ("candidate_test.txt", 4, "10 1 1", r"image index 10 is past the filenames list filenames_test\.txt"),
    ],
)
def test_asen_malformed_lines(asen_root, file, line, text, message):
    _edit(asen_root / file, line, text)
    with pytest.raises(DatasetError, match=message) as err:
        read_asen(asen_root)
    assert err.value.path.endswith(file)
    assert err.value.line == line
    assert f"{file}, line {line}:" in str(err.value)


def test_asen_blank_line_in_filenames(asen_root):
    _edit(asen_root / "filenames_valid.txt", 3, "")
    with pytest.raises(DatasetError, match=r"filenames_valid\.txt, line 3: blank line inside the filenames list"):
        read_asen(asen_root)


def test_asen_missing_meta_entries(asen_root):
    meta = json.loads((asen_root / "meta.json").read_text())
    del meta["ATTRIBUTES_NUM"]["attr1"]
    (asen_root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError,
                       match=r"meta\.json: \['ATTRIBUTES_NUM'\] has no positive integer count for attribute 'attr1'"):
        read_asen(asen_root)
    (asen_root / "meta.json").write_text(json.dumps({"ATTRIBUTES": ["a"]}))
    with pytest.raises(DatasetError, match=r"missing key \['ATTRIBUTES_NUM'\]"):
        read_asen(asen_root)
    (asen_root / "meta.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"meta\.json, line 1: invalid JSON"):
        read_asen(asen_root)
    (asen_root / "meta.json").unlink()
    with pytest.raises(DatasetError, match="no meta.json found"):
        read_asen(asen_root)


def test_asen_value_that_cannot_form_a_triplet(asen_root):
    # Give image 5 of train a value (2 of attr1 has... only 2 values; use attr0) no other image has.
    meta = json.loads((asen_root / "meta.json").read_text())
    meta["ATTRIBUTES_NUM"]["attr0"] = 4
    meta["ATTRIBUTES_VALUES"]["attr0"].append("attr0_v3")
    (asen_root / "meta.json").write_text(json.dumps(meta))
    _edit(asen_root / "label_train.txt", 6, "5 0 3 1 1")
    with pytest.raises(DatasetError,
                       match=r"label_train\.txt, line 6: value 3 of attribute 0 \(attr0\) has a single image"):
        read_asen(asen_root)
    spec = read_asen(asen_root, allow_singletons=True)  # skip-and-count mode
    assert len(spec.warnings) == 1 and "single image" in spec.warnings[0]
    # image 5 listed twice: the error names the line that gave it the value, not its first line
    _edit(asen_root / "label_train.txt", 6, "5 1 1")
    with (asen_root / "label_train.txt").open("a") as f:
        f.write("5 0 3\n")
    with pytest.raises(DatasetError, match=r"label_train\.txt, line 25: value 3 of attribute 0"):
        read_asen(asen_root)


def test_asen_attribute_with_one_value_cannot_form_a_triplet(asen_root):
    lines = (asen_root / "label_train.txt").read_text().splitlines()
    (asen_root / "label_train.txt").write_text("".join(f"{x.split()[0]} 1 0\n" for x in lines))
    with pytest.raises(DatasetError, match=r"attribute 1 \(attr1\) has only one value \(0\) in the train split"):
        read_asen(asen_root)


def test_asen_query_attribute_without_candidates(asen_root):
    lines = (asen_root / "candidate_valid.txt").read_text().splitlines()
    (asen_root / "candidate_valid.txt").write_text("".join(x + "\n" for x in lines if x.split()[1] != "1"))
    with pytest.raises(DatasetError, match=r"query_valid\.txt, line 2: queries of attribute 1 \(attr1\) have no cand"):
        read_asen(asen_root)
    # the line comes from the parser: blank lines before it count
    query = asen_root / "query_valid.txt"
    query.write_text("\n\n" + query.read_text())
    with pytest.raises(DatasetError, match=r"query_valid\.txt, line 4: queries of attribute 1"):
        read_asen(asen_root)


def test_asen_split_without_labels_or_queries(asen_root):
    (asen_root / "query_test.txt").unlink()
    with pytest.raises(DatasetError, match=r"query_test\.txt: missing"):
        read_asen(asen_root)
    (asen_root / "candidate_test.txt").unlink()
    with pytest.raises(DatasetError, match="neither label_test.txt nor query/candidate files"):
        read_asen(asen_root)


# --------------------------------------------------------------------------- CSN layout
def test_csn_reads_triplet_lists(csn_root):
    spec = open_dataset(csn_root)
    assert spec.attribute_names == ["class", "closure", "gender", "heel"]
    assert set(spec.splits) == {"train", "valid", "test"}
    train = spec.split("train")
    assert set(train.triplets) == {0, 1, 2, 3} and train.triplets[0].shape == (6, 3)
    first = (csn_root / "tripletlists" / "class_tripletlist_train.txt").read_text().split("\n")[0].split()
    assert train.triplets[0][0].tolist() == [int(x) for x in first]  # (anchor, far, close)
    assert (spec.root / train.paths[0]).is_file()  # image root found under ut-zap50k-images/


def test_csn_errors(csn_root):
    path = csn_root / "tripletlists" / "gender_tripletlist_val.txt"
    _edit(path, 2, "1 2 12")
    with pytest.raises(DatasetError, match=r"gender_tripletlist_val\.txt, line 2: image index 12 is past filenames"):
        read_csn(csn_root)
    _edit(path, 2, "1 2")
    with pytest.raises(DatasetError, match=r"line 2: expected 3 integer fields, got 2"):
        read_csn(csn_root)
    (csn_root / "filenames.json").write_text(json.dumps(["a.jpg", 3]))
    with pytest.raises(DatasetError, match=r"entry 1 is 3"):
        read_csn(csn_root)


# --------------------------------------------------------------------------- catalog CSV
def test_catalog_csv_split_and_write(catalog_csv, tmp_path):
    spec = read_catalog_csv(catalog_csv, seed=3)
    assert spec.attribute_names == ["collar", "pattern"]
    assert spec.attributes[0].values == ("round", "square", "v")
    sizes = {k: len(v) for k, v in spec.splits.items()}
    assert sizes == {"train": 48, "valid": 6, "test": 6}
    all_paths = sorted(p for s in spec.splits.values() for p in s.paths)
    assert all_paths == sorted(f"img/{i:03d}.png" for i in range(60))
    # empty cell = not annotated
    test = spec.split("test")
    for i, p in enumerate(test.paths):
        k = int(Path(p).stem)
        assert (test.labels[i, 1] == UNLABELED) == (k % 7 == 0)
    # queries:candidates 1:4 by image, one row per annotated attribute
    q_images = set(spec.split("valid").queries[:, 0].tolist())
    assert len(q_images) == round(0.2 * 6)
    # same seed, same split; another seed, another split
    assert read_catalog_csv(catalog_csv, seed=3).split("test").paths == test.paths
    assert read_catalog_csv(catalog_csv, seed=4).split("test").paths != test.paths
    out = write_asen(spec, tmp_path / "asen")
    again = read_asen(out, allow_singletons=True)
    assert np.array_equal(again.split("valid").queries, spec.split("valid").queries)
    assert (again.root / again.split("train").paths[0]).is_file()


@pytest.mark.parametrize(
    "content,message",
    [
        ("file,a\nx.png,1\n", r"catalog\.csv, line 1: header must be 'path,<attribute1>"),
        ("path,a,a\nx.png,1,2\n", r"line 1: column names in the header must be non-empty and distinct: column 'a'"),
        ("path,a,b\nx.png,1,2\ny.png,1\n", r"catalog\.csv, line 3: expected 3 comma-separated fields"),
        ("path,a\nx.png,1\nx.png,2\n", r"line 3: image 'x.png' is listed twice \(first on line 2\)"),
        ("path,a\n,1\n", r"line 2: column 'path': empty image path"),
        ("path,a\nx.png,\n", r"attribute column 'a' has no annotated value"),
    ],
)
def test_catalog_csv_errors(tmp_path, content, message):
    path = tmp_path / "catalog.csv"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        read_catalog_csv(path)


def test_unreadable_and_odd_meta_files(asen_root):
    meta = asen_root / "meta.json"
    good = json.loads(meta.read_text())
    cases = [
        (b"\xff\xfe{}", r"meta\.json: not UTF-8 text"),
        (json.dumps({**good, "ATTRIBUTES": ["attr0", "attr0"]}).encode(), r"names an attribute twice"),
        (json.dumps({**good, "ATTRIBUTES_NUM": {"attr0": True, "attr1": 2}}).encode(), r"got True; expected 1\.\.10"),
        (json.dumps({**good, "ATTRIBUTES_NUM": {"attr0": 10**9, "attr1": 2}}).encode(), r"got 1000000000"),
        (json.dumps({**good, "ATTRIBUTES_VALUES": ["a"]}).encode(), r"\['ATTRIBUTES_VALUES'\] must be an object"),
        (json.dumps({**good, "ATTRIBUTES_VALUES": {"attr0": 3}}).encode(), r"must be a list of value names"),
        (b"[" * 100_000, r"meta\.json: invalid JSON \(nested too deeply\)"),
    ]
    for content, message in cases:
        meta.write_bytes(content)
        with pytest.raises(DatasetError, match=message):
            read_asen(asen_root)
    meta.unlink()
    meta.mkdir()
    with pytest.raises(DatasetError, match=r"meta\.json: cannot read the file"):
        read_asen(asen_root, meta=meta)


def test_yaml_names_and_counts_are_checked(asen_root, tmp_path):
    (asen_root / "meta.json").unlink()
    yml = tmp_path / "ds.yaml"
    for text, message in [
        ("DATA:\n  ATTRIBUTES:\n    NAME: [a, a]\n    NUM: [3, 2]\n", "names an attribute twice"),
        ("DATA:\n  ATTRIBUTES:\n    NAME: [a, b]\n    NUM: [3, true]\n", r"NUM for 'b' must be a positive integer"),
        ("a: &x [*x]\nDATA: 1\n", "missing entry DATA.ATTRIBUTES"),
    ]:
        yml.write_text(text)
        with pytest.raises(DatasetError, match=message):
            read_asen(asen_root, yaml_config=yml)


def test_catalog_csv_lines_count_quoted_newlines_and_table_without_attributes(tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text('path,a\n"x\ny.png",1\nz.png,2\nz.png,3\n')
    with pytest.raises(DatasetError, match=r"catalog\.csv, line 5: image 'z\.png' is listed twice \(first on line 4\)"):
        read_catalog_csv(path)
    path.write_text("path\nb.png\na.png\n")
    table = read_catalog_table(path, min_attributes=0)
    assert table.paths == ["b.png", "a.png"] and table.attributes == [] and table.labels.shape == (2, 0)
    with pytest.raises(DatasetError, match="header must be"):
        read_catalog_csv(path)


# Fuzzing of these readers: tests/test_fuzz_inputs.py


def test_catalog_csv_columns_have_one_rule_for_training_and_indexing(tmp_path):
    """#20: one reader gives every header column a role; an untyped ``price`` is an attribute for
    training and an error for indexing; typed (``price:number``) it is metadata for both."""
    from agman.data.catalog_csv import CatalogColumns, CatalogSchemaError
    from agman.data.spec import Attribute

    path = tmp_path / "shop.csv"
    path.write_text("path,color,price\na.png,red,10\nb.png,blue,12.5\nc.png,red,\n")
    assert [a.name for a in read_catalog_csv(path).attributes] == ["color", "price"]
    color = [Attribute("color", ("blue", "red"))]
    with pytest.raises(CatalogSchemaError, match="column 'price' is neither an attribute"):
        read_catalog_table(path, color)
    path.write_text("path,color,price:number\na.png,red,10\nb.png,blue,12.5\nc.png,red,\n")
    spec = read_catalog_csv(path, ratios=(1.0, 0.0, 0.0))
    assert [a.name for a in spec.attributes] == ["color"]
    for attributes in (None, color):
        table = read_catalog_table(path, attributes)
        assert table.metadata == [{"price": 10.0}, {"price": 12.5}, {}] and table.metadata_types == {"price": "number"}
        assert [table.named_labels(i) for i in range(3)] == [{"color": "red"}, {"color": "blue"}, {"color": "red"}]
    with pytest.raises(CatalogSchemaError, match="column 'price' is typed number in the header, declared string"):
        read_catalog_table(path, color, CatalogColumns(metadata={"price": "string"}))
    path.write_text("path,color,price:number\na.png,red,10\nb.png,blue,cheap\n")
    with pytest.raises(DatasetError, match=r"shop\.csv, line 3: column 'price': 'cheap' is not a number"):
        read_catalog_csv(path)
