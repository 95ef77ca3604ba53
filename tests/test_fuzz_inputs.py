"""Fuzz suite (issue #12): every input parser of the data layer, the image decoder and the checkpoint
loader, fed generated and mutated files.  Nothing but the documented errors may escape:
``DatasetError`` from the dataset readers, ``ImageLoadError`` from the decoder, ``CheckpointError``
from the checkpoint loader (all ``AgmanError``).  Any other exception fails the test with the input
that caused it (hypothesis shrinks it).

Bounded in time: each test runs a fixed number of examples with no per-example deadline (the
machine may be loaded); the whole file runs in well under a minute on 2 cores.
``AGMAN_FUZZ_SCALE=20 pytest tests/test_fuzz_inputs.py`` runs 20 times as many examples (a longer hunt
before a release).  Index and config parsers are fuzzed beside their own code.
"""
from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_asen, make_csn
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from agman.data.decode import ImageLimits, ImageLoadError, decode_image
from agman.data.layouts import read_asen, read_catalog_csv, read_catalog_table, read_csn
from agman.data.lines import int_rows, read_path_list
from agman.data.spec import DatasetError
from agman.engine.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, weights_identity

SCALE = float(os.environ.get("AGMAN_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=int(60 * SCALE), deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_FAST = settings(FUZZ, max_examples=int(150 * SCALE))
FUZZ_IMAGES = settings(FUZZ, max_examples=int(400 * SCALE))


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="agman-fuzz-") as d:
        yield Path(d)


def _fresh(workdir: Path, name: str) -> Path:
    """A fresh copy of a small dataset for one example (the readers must not see the last one's edits)."""
    import shutil

    src = workdir / f"_{name}"
    if not src.exists():
        (make_csn if name == "csn" else make_asen)(src, **({} if name == "csn" else {"with_images": False}))
    dst = workdir / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- strategies
_tokens = st.one_of(
    st.integers(-3, 40).map(str),
    st.sampled_from(["", "x", "1.5", "-", "+1", "١", "0x1", "1e3", "\t", "99999999999999999999", "\x00", "\ufeff"]),
)
_line = st.lists(_tokens, max_size=7).map(" ".join)
_text_file = st.lists(_line, max_size=10).map("\n".join)
_raw = st.binary(max_size=200)

_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**12), st.floats(allow_nan=True), st.text(max_size=8),
    st.sampled_from(["attr0", "attr1", "a", ""]),
)
_json_key = st.sampled_from(["ATTRIBUTES", "ATTRIBUTES_NUM", "ATTRIBUTES_VALUES", "attr0", "attr1", "FashionAI", "x"])
_json = st.recursive(
    _json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_json_key, inner, max_size=4), max_leaves=20
)

_META = {
    "ATTRIBUTES": ["attr0", "attr1"],
    "ATTRIBUTES_NUM": {"attr0": 3, "attr1": 2},
    "ATTRIBUTES_VALUES": {"attr0": ["a", "b", "c"], "attr1": ["d", "e"]},
}


@st.composite
def _meta_documents(draw):
    """meta.json text: a valid document with one part replaced, free JSON, or raw bytes."""
    kind = draw(st.sampled_from(["edit", "free", "per-dataset", "raw"]))
    if kind == "raw":
        return draw(_raw)
    if kind == "free":
        return json.dumps(draw(_json)).encode()
    doc = json.loads(json.dumps(_META))
    key = draw(st.sampled_from(list(_META)))
    if draw(st.booleans()):
        doc[key] = draw(_json)
    else:
        inner = doc[key]
        if isinstance(inner, dict):
            inner[draw(st.sampled_from(["attr0", "attr1", "zz"]))] = draw(_json)
        else:
            inner[draw(st.integers(0, len(inner) - 1))] = draw(_json)
    if kind == "per-dataset":
        doc = {"FashionAI": doc, draw(st.sampled_from(["DARN", "x"])): draw(_json)}
    return json.dumps(doc).encode()


# --------------------------------------------------------------------------- dataset files
@FUZZ_FAST
@given(text=st.text(alphabet=st.sampled_from(list("0123456789 -x\n\t,\r\x00")), max_size=120),
       n_fields=st.sampled_from([None, 3]))
def test_int_rows(workdir, text, n_fields):
    path = workdir / "rows.txt"
    path.write_text(text, encoding="utf-8", newline="")
    try:
        for lineno, row in int_rows(path, n_fields):
            assert lineno >= 1 and all(isinstance(v, int) for v in row)
            assert n_fields is None or len(row) == n_fields
    except DatasetError as exc:
        assert exc.path == str(path) and exc.line is not None


@FUZZ
@given(
    target=st.sampled_from(["filenames_valid.txt", "label_train.txt", "query_valid.txt", "candidate_test.txt"]),
    content=st.one_of(_text_file.map(str.encode), _raw),
    allow=st.booleans(),
)
def test_asen_split_files(workdir, target, content, allow):
    root = _fresh(workdir, "asen")
    (root / target).write_bytes(content)
    try:
        spec = read_asen(root, allow_singletons=allow)
    except DatasetError as exc:
        assert exc.path is not None  # every error names a file
    else:
        for split in spec.splits.values():
            assert split.labels.shape == (len(split), 2)
            assert ((split.labels >= -1) & (split.labels < 3)).all()


@FUZZ
@given(meta=_meta_documents(), dataset=st.sampled_from([None, "FashionAI", "nope"]))
@example(meta=b"[" * 100_000, dataset=None)
@example(meta=b'{"ATTRIBUTES": ["attr0", "attr1"], "ATTRIBUTES_NUM": {"attr0": 1000000000, "attr1": 2}}', dataset=None)
@example(meta=b'{"ATTRIBUTES": ["attr0", "attr1"], "ATTRIBUTES_NUM": {"attr0": true, "attr1": 2}}', dataset=None)
@example(meta=b'{"ATTRIBUTES": ["attr0", "attr1"], "ATTRIBUTES_NUM": {"attr0": 3, "attr1": 2}, '
              b'"ATTRIBUTES_VALUES": [1]}', dataset=None)
@example(meta=b"\xff\xfe{}", dataset=None)
def test_meta_json(workdir, meta, dataset):
    root = _fresh(workdir, "asen")
    (root / "meta.json").write_bytes(meta)
    try:
        spec = read_asen(root, dataset, allow_singletons=True)
    except DatasetError as exc:
        assert exc.path is not None
    else:
        assert all(a.n_values >= 1 for a in spec.attributes)
        assert len(set(spec.attribute_names)) == spec.n_attributes


_yaml_text = st.text(alphabet=st.sampled_from(list("DATAUMNIBESRT_: -[]{},&*!|>'\"#%@`\n0123x")), max_size=150)


@st.composite
def _yaml_documents(draw):
    kind = draw(st.sampled_from(["edit", "free", "raw"]))
    if kind == "raw":
        return draw(st.one_of(_raw, _yaml_text.map(str.encode)))
    if kind == "free":
        return yaml.safe_dump(draw(_json)).encode()
    doc = {"DATA": {"NUM_ATTRIBUTES": 2, "ATTRIBUTES": {"NAME": ["collar", "sleeve"], "NUM": [3, 2]},
                    "PATH_FILE": {"TRAIN": "filenames_train.txt"}, "GROUNDTRUTH": {"TRAIN": "label_train.txt"}}}
    section = draw(st.sampled_from(["NUM_ATTRIBUTES", "ATTRIBUTES", "PATH_FILE", "GROUNDTRUTH", "NAME", "NUM"]))
    where = doc["DATA"]["ATTRIBUTES"] if section in ("NAME", "NUM") else doc["DATA"]
    where[section] = draw(st.one_of(_json, st.lists(st.one_of(st.integers(-2, 10**9), st.text(max_size=12)),
                                                     max_size=4), st.text(max_size=20)))
    return yaml.safe_dump(doc).encode()


@FUZZ
@given(doc=_yaml_documents())
@example(doc=b"a: &a [*a, *a]\n")
@example(doc=b"DATA:\n  ATTRIBUTES: {NAME: [a, b], NUM: [3, 2]}\n  PATH_FILE: {TRAIN: 'x{0}train'}\n")
@example(doc=b"DATA:\n  ATTRIBUTES: {NAME: [a, a], NUM: [3, 2]}\n")
def test_asen_yaml(workdir, doc):
    root = _fresh(workdir, "asen")
    (root / "meta.json").unlink()
    cfg = workdir / "dataset.yaml"
    cfg.write_bytes(doc)
    try:
        read_asen(root, yaml_config=cfg, allow_singletons=True)
    except DatasetError as exc:
        assert exc.path is not None


_csv_text = st.text(alphabet=st.sampled_from(list('pathab,"\n\r x.png\x00\ufeff\t;é')), max_size=200)


@FUZZ_FAST
@given(content=st.one_of(_csv_text.map(lambda t: ("path,a,b\n" + t).encode()), _csv_text.map(str.encode), _raw),
       min_attributes=st.sampled_from([0, 1]))
@example(content=b"path,a\n" + b"x" * 200_000 + b",1\n", min_attributes=1)
def test_catalog_csv(workdir, content, min_attributes):
    path = workdir / "catalog.csv"
    path.write_bytes(content)
    try:
        table = read_catalog_table(path, min_attributes=min_attributes)
        assert len(table.paths) == len(set(table.paths)) == len(table.labels)
        if table.attributes:
            spec = read_catalog_csv(path)
            assert sum(len(s) for s in spec.splits.values()) == len(table.paths)
    except DatasetError as exc:
        assert "catalog.csv" in str(exc)


@FUZZ
@given(
    filenames=st.one_of(st.just(None), st.builds(lambda v: json.dumps(v).encode(), _json), _raw),
    triplets=st.one_of(st.just(None), _text_file.map(str.encode), _raw),
    meta=st.one_of(st.just(None), _meta_documents()),
)
def test_csn_files(workdir, filenames, triplets, meta):
    root = _fresh(workdir, "csn")
    if filenames is not None:
        (root / "filenames.json").write_bytes(filenames)
    if triplets is not None:
        (root / "tripletlists" / "gender_tripletlist_val.txt").write_bytes(triplets)
    if meta is not None:
        (root / "meta.json").write_bytes(meta)
    try:
        spec = read_csn(root)
    except DatasetError as exc:
        assert exc.path is not None
    else:
        for split in spec.splits.values():
            for rows in split.triplets.values():
                assert ((rows >= 0) & (rows < len(split))).all()


@FUZZ
@given(content=st.one_of(_text_file.map(str.encode), _raw))
def test_path_lists(workdir, content):
    path = workdir / "filenames_x.txt"
    path.write_bytes(content)
    try:
        paths = read_path_list(path)
        assert all(p and p == p.strip() for p in paths)
    except DatasetError as exc:
        assert exc.path == str(path)


# --------------------------------------------------------------------------- images
def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _corpus() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    rgba = rgb.convert("RGBA")
    grey = rgb.convert("L")
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    return [
        ("png-rgb", _encode(rgb, "PNG")),
        ("png-rgba", _encode(rgba, "PNG")),
        ("png-palette", _encode(pal, "PNG", transparency=0)),
        ("png-16bit", _encode(Image.fromarray(rng.integers(0, 65535, (12, 16), dtype=np.uint16)), "PNG")),
        ("png-grey", _encode(grey, "PNG")),
        ("jpeg", _encode(rgb, "JPEG", quality=80)),
        ("jpeg-progressive", _encode(rgb, "JPEG", progressive=True)),
        ("jpeg-grey", _encode(grey, "JPEG")),
        ("jpeg-cmyk", _encode(rgb.convert("CMYK"), "JPEG")),
        ("tiff", _encode(rgb, "TIFF")),
        ("tiff-lzw", _encode(rgb, "TIFF", compression="tiff_lzw")),
        ("tiff-deflate", _encode(rgba, "TIFF", compression="tiff_adobe_deflate")),
        ("tiff-palette", _encode(pal, "TIFF")),
        ("gif", _encode(pal, "GIF")),
        ("gif-animated", _encode(pal, "GIF", save_all=True, append_images=[grey.convert("P")], duration=10)),
        ("webp-lossy", _encode(rgb, "WEBP", quality=50)),
        ("webp-lossless", _encode(rgba, "WEBP", lossless=True)),
        ("bmp", _encode(rgb, "BMP")),
        ("bmp-palette", _encode(pal, "BMP")),
        ("ppm", _encode(rgb, "PPM")),
    ]


CORPUS = _corpus()
_EXTREMES = [0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]
LIMITS = [
    ImageLimits(max_source_pixels=2_000_000, max_pixels=4096),
    ImageLimits(max_source_pixels=2_000_000, max_pixels=64, max_aspect=4),
]
"""The default pixel limit would let a mutated header ask for 160 MB per example; the check is the same."""


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@st.composite
def mutated_images(draw):
    name, data = draw(st.sampled_from(CORPUS))
    data = bytearray(data)
    how = draw(st.sampled_from(["bytes", "header", "field", "truncate", "splice", "png-ihdr"]))
    if how in ("bytes", "header"):
        span = len(data) if how == "bytes" else min(len(data), 64)
        for pos, value in draw(st.lists(st.tuples(st.integers(0, span - 1), st.integers(0, 255)), min_size=1,
                                        max_size=8)):
            data[pos] = value
    elif how == "field":
        pos = draw(st.integers(0, min(len(data), 48) - 4))
        fmt = draw(st.sampled_from(["<H", ">H", "<I", ">I"]))
        value = draw(st.sampled_from(_EXTREMES)) & (0xFFFF if fmt.endswith("H") else 0xFFFFFFFF)
        struct.pack_into(fmt, data, pos, value)
    elif how == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif how == "splice":
        pos = draw(st.integers(0, len(data)))
        data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
    elif how == "png-ihdr":  # a consistent (CRC-correct) IHDR with odd values, so the decoder sees them
        w, h = draw(st.integers(0, 3000)), draw(st.integers(0, 3000))
        depth, colour = draw(st.sampled_from([1, 2, 4, 8, 16, 3, 0])), draw(st.sampled_from([0, 2, 3, 4, 6, 5]))
        interlace = draw(st.sampled_from([0, 1, 2]))
        ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, interlace))
        png = bytes(CORPUS[0][1])
        data = bytearray(png[:8] + ihdr + png[8 + 25:])
    return name, how, bytes(data)


@FUZZ_IMAGES
@given(case=mutated_images(), limits=st.sampled_from(LIMITS), as_file=st.booleans())
def test_image_decode(workdir, case, limits, as_file):
    name, how, data = case
    source = data
    if as_file:
        source = workdir / f"image-{name}"
        source.write_bytes(data)
    try:
        im = decode_image(source, limits)
    except ImageLoadError as exc:
        assert (str(source) if as_file else "upload") in str(exc)
    else:
        assert im.mode == "RGB" and 1 <= im.width * im.height <= limits.max_pixels
        assert max(im.size) <= limits.max_aspect * min(im.size) + 1  # +1: rounding when shrinking


def test_corpus_decodes_unmutated():
    """The fuzz corpus itself is valid, so mutations start from images the decoder reads."""
    for name, data in CORPUS:
        assert decode_image(data).size == (16, 12), name


# --------------------------------------------------------------------------- checkpoints
def _tiny_checkpoint() -> bytes:
    state = {"w": torch.arange(64, dtype=torch.float32).reshape(8, 8), "b": torch.ones(8)}
    buf = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, "model_name": "agman", "model_config": {},
                "attributes": [{"name": "a", "values": ["x", "y"]}], "input_size": 32, "state_dict": state,
                "identity": weights_identity(state)}, buf)
    return buf.getvalue()


CHECKPOINT = _tiny_checkpoint()


@FUZZ_FAST
@given(edits=st.lists(st.tuples(st.integers(0, len(CHECKPOINT) - 1), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, len(CHECKPOINT) - 1)))
def test_checkpoint_load(workdir, edits, cut):
    data = bytearray(CHECKPOINT)
    for pos, value in edits:
        data[pos] = value
    if cut is not None:
        data = data[:cut]
    path = workdir / "model.pt"
    path.write_bytes(bytes(data))
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        assert str(path) in str(exc) and "weights_only" not in str(exc)
    else:  # whatever survived is what was saved: the weights hash to the recorded identity
        assert ckpt["identity"] == weights_identity(ckpt["state_dict"])
        assert torch.equal(ckpt["state_dict"]["w"], torch.arange(64, dtype=torch.float32).reshape(8, 8))


# --------------------------------------------------------------------------- JSON request bodies (#19.5, #19.7)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@FUZZ_FAST
@given(body=st.binary(max_size=300) | _json_values.map(lambda v: json.dumps(v).encode()),
       cut=st.integers(0, 400), junk=st.sampled_from([b"", b"[" * 50, b"\\ud800", b'"\\udfff"', b"1" * 60, b"NaN"]))
@example(body=b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", cut=10**6, junk=b"")
@example(body=b'{"k": 1' + b"0" * 400 + b"}", cut=10**6, junk=b"")
@example(body=b'"\\' * 5000, cut=10**6, junk=b"")
def test_json_bodies_parse_or_are_a_400(body, cut, junk):
    """Any body: a JSON value whose every string encodes as UTF-8, or an HTTPException 400 (never a
    RecursionError, OverflowError or UnicodeEncodeError later)."""
    from fastapi import HTTPException

    from agman.service.json_body import MAX_JSON_DEPTH, nesting_depth, parse_json

    raw = body[:cut] + junk + body[cut:]
    try:
        value = parse_json(raw)
    except HTTPException as exc:
        assert exc.status_code in (400, 413) and str(exc.detail).encode("utf-8")
        return
    json.dumps(value, ensure_ascii=False).encode("utf-8")
    assert nesting_depth(raw) <= MAX_JSON_DEPTH
