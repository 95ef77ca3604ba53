"""Fuzzing the index folder's parsers (#12): ``index.json`` (``IndexInfo.parse`` / ``read``, and a
whole ``FaissStore`` open) and ``items.jsonl`` (``read_items``) — whatever the bytes, nothing but
``CatalogIndexError`` (the documented error, naming the file) escapes.  Bounded: a few hundred
examples each, no deadline."""
from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_retrieval_index import build_tiny_index

from agman.retrieval.backends.faiss.store import FaissStore
from agman.retrieval.info import CatalogIndexError, IndexInfo
from agman.retrieval.items import Item, read_items

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """A real index folder and its index.json / items.jsonl texts, to mutate."""
    out = build_tiny_index(tmp_path_factory.mktemp("fuzz"))[2]
    return out, json.loads((out / "index.json").read_text()), (out / "items.jsonl").read_text().splitlines()


def mutate(value, path: list, new):
    """``value`` with the element at ``path`` (keys / indexes, taken modulo what exists) replaced by ``new``."""
    if not path or not isinstance(value, (dict, list)) or not value:
        return new
    if isinstance(value, dict):
        key = sorted(value)[path[0] % len(value)]
        return {**value, key: mutate(value[key], path[1:], new)}
    i = path[0] % len(value)
    return value[:i] + [mutate(value[i], path[1:], new)] + value[i + 1:]


def parse_or_documented_error(text: str):
    try:
        return IndexInfo.parse(text, "index.json")
    except CatalogIndexError as exc:
        assert "index.json" in str(exc)
        return None


@FUZZ
@given(doc=JSON)
def test_index_json_of_any_json_value(doc):
    parse_or_documented_error(json.dumps(doc))


@FUZZ
@given(path=st.lists(st.integers(0, 50), max_size=4), new=JSON)
def test_index_json_with_one_value_replaced(valid, path, new):
    _, meta, _ = valid
    parse_or_documented_error(json.dumps(mutate(meta, path, new)))


@FUZZ
@given(cut=st.integers(0, 4000), junk=st.binary(max_size=40))
@example(cut=0, junk=b"[" * 100_000)  # nested past Python's recursion limit
@example(cut=0, junk=b"\xff\xfe{}")  # not UTF-8
def test_index_json_bytes_cut_and_spliced(valid, tmp_path, cut, junk):
    out, meta, _ = valid
    raw = json.dumps(meta).encode()
    path = tmp_path / "index.json"
    path.write_bytes(raw[: cut % (len(raw) + 1)] + junk)
    try:
        IndexInfo.read(path)
    except CatalogIndexError as exc:
        assert str(path) in str(exc)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.lists(st.integers(0, 50), max_size=4), new=JSON)
def test_opening_a_folder_with_a_mutated_index_json(valid, tmp_path_factory, path, new):
    """The whole open (description, items, file checks, FAISS headers) over real files."""
    out, meta, _ = valid
    folder = tmp_path_factory.getbasetemp() / "fuzz-open"
    if not folder.exists():
        shutil.copytree(out, folder)
    (folder / "index.json").write_text(json.dumps(mutate(meta, path, new)))
    try:
        FaissStore(folder, load=True)
    except CatalogIndexError:
        pass


@FUZZ
@given(lines=st.lists(st.one_of(st.binary(max_size=60), JSON.map(lambda d: json.dumps(d).encode())), max_size=6))
@example(lines=[b"[" * 100_000])
@example(lines=[b'{"id": "a", "path": "/x"}', b'{"id": "a", "path": "/y"}'])
def test_items_jsonl_of_any_lines(tmp_path, lines):
    path = tmp_path / "items.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
    try:
        items = read_items(path)
    except CatalogIndexError as exc:
        assert str(path) in str(exc) and ", line " in str(exc)
        return
    assert all(isinstance(it, Item) and isinstance(it.id, str) and isinstance(it.path, str) for it in items)
    assert all(isinstance(k, str) and isinstance(v, str) for it in items for k, v in it.labels.items())
    assert len({it.id for it in items}) == len(items)


@FUZZ
@given(row=st.integers(0, 100), path=st.lists(st.integers(0, 10), max_size=3), new=JSON)
def test_items_jsonl_with_one_value_replaced(valid, tmp_path, row, path, new):
    _, _, lines = valid
    lines = list(lines)
    i = row % len(lines)
    lines[i] = json.dumps(mutate(json.loads(lines[i]), path, new))
    target = tmp_path / "items.jsonl"
    target.write_text("\n".join(lines) + "\n")
    try:
        read_items(target)
    except CatalogIndexError as exc:
        assert f"line {i + 1}" in str(exc) or "already used" in str(exc)
