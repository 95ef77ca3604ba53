"""Every `--json` output of the CLI (index, search, eval, models) against the JSON Schema its doc
publishes: the schema blocks are read from the docs themselves, so docs and output cannot drift."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
from conftest import make_asen
from test_engine_cli import TINY
from test_retrieval_cli import run
from test_retrieval_index import tiny_checkpoint

from agman.data.layouts import open_dataset

DOCS = Path(__file__).resolve().parents[1] / "docs"


def documented_schema(doc: str, name: str) -> dict:
    """The JSON block after ``<!-- NAME-schema -->`` in ``docs/DOC``."""
    text = (DOCS / doc).read_text(encoding="utf-8")
    block = re.search(rf"<!-- {name}-schema -->\s*```json\n(.*?)\n```", text, re.S)
    assert block, f"docs/{doc} lost its {name} schema block"
    schema = json.loads(block.group(1))
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def validate(document: dict, doc: str, name: str) -> None:
    jsonschema.validate(document, documented_schema(doc, name), cls=jsonschema.Draft202012Validator)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("json")
    root = make_asen(tmp / "ds", n_per_split=(12, 10, 20), values=(3, 2))
    return tmp, open_dataset(root), tiny_checkpoint(tmp / "a.pt", open_dataset(root).attributes)


def test_index_json_follows_its_schema(catalog, capsys):
    tmp, _spec, ck = catalog
    out = tmp / "idx-json"
    rc, stdout, err = run(capsys, "index", "--checkpoint", ck, "--images", tmp / "ds", "--split", "test", "--out", out,
                          "--no-progress", "--batch-size", "8", "--json")
    assert rc == 0, err
    body = json.loads(stdout)  # stdout holds the JSON document alone
    validate(body, "retrieval.md", "index")
    assert (body["items"], body["added"], body["already_indexed"], body["embedded"]) == (20, 20, 0, 20)
    assert body["index"] == str(out) and body["type"] == "flat" and body["left_out"] == []
    rc, stdout, _ = run(capsys, "index", "--checkpoint", ck, "--images", tmp / "ds", "--split", "valid", "--out", out,
                        "--add", "--no-progress", "--json")
    body = json.loads(stdout)
    validate(body, "retrieval.md", "index")
    assert (body["items"], body["added"], body["already_indexed"]) == (30, 10, 0)


def test_search_json_follows_its_schema(catalog, capsys):
    tmp, spec, ck = catalog
    out = tmp / "idx-search"
    assert run(capsys, "index", "--checkpoint", ck, "--images", tmp / "ds", "--split", "test", "--out", out,
               "--no-progress")[0] == 0
    item = spec.split("test").paths[2]
    for extra in (["--item", item, "-a", "attr0", "-a", "attr1:2"], ["--image", tmp / "ds" / item, "-a", "attr1"],
                  ["--item", item, "-a", "attr0", "--exclude-self", "--annotated-only", "--k", "1"]):
        rc, stdout, err = run(capsys, "search", "--index", out, *extra, "--json")
        assert rc == 0, err
        body = json.loads(stdout)
        validate(body, "retrieval.md", "search")
        assert set(body["predicted"]) == {"attr0", "attr1"} and body["summary"]


def test_models_json_follows_its_schema(capsys):
    rc, stdout, err = run(capsys, "models", "--attributes", "5", "--backbone", "resnet18", "--json")
    assert rc == 0, err
    body = json.loads(stdout)
    validate(body, "model-card.md", "models")
    names = [m["name"] for m in body["models"]]
    assert names == ["agman", "agman-official", "csn", "asenet-v2", "attnfashion", "asenpp", "cca"]
    assert body["released_code_check"] is None  # only for resnet50
    rc, stdout, _ = run(capsys, "models", "--json")
    body = json.loads(stdout)
    validate(body, "model-card.md", "models")
    check = body["released_code_check"]
    assert check["equal"] and check["parameters"] == check["released_code"] == 26_420_909


def test_eval_json_follows_its_schema(tmp_path, capsys):
    root = make_asen(tmp_path / "ds")
    run_dir = tmp_path / "run"
    rc, _, err = run(capsys, "train", "--config", "configs/synthetic/agman.yaml", "--out", run_dir, "--no-progress",
                     f"data.root={root}", "data.synthetic=null", *TINY)
    assert rc == 0, err
    rc, stdout, err = run(capsys, "eval", "--checkpoint", run_dir / "best.pt", "--split", "test", "--device", "cpu",
                          "--workers", "0", "--json")
    assert rc == 0, err
    body = json.loads(stdout)
    validate(body, "training.md", "eval")
    saved = json.loads((run_dir / "eval-test.json").read_text())
    assert body["metrics"]["map"] == pytest.approx(saved["map"]) and body["attributes"] == ["attr0", "attr1"]
    assert [Path(f).name for f in body["files"]] == ["eval-test.csv", "eval-test.md", "eval-test.json"]
    assert all(Path(f).is_file() for f in body["files"])


@pytest.mark.parametrize("doc, name, break_it", [
    ("retrieval.md", "index", lambda d: d.update(added=-1)),
    ("retrieval.md", "search", lambda d: d["results"][0].update(correct="yes")),
    ("retrieval.md", "search", lambda d: d["predicted"]["a"].update(share=1.5)),
    ("model-card.md", "models", lambda d: d["models"][0].pop("parameters")),
    ("training.md", "eval", lambda d: d["metrics"].update(map="high")),
])
def test_schemas_reject_what_they_should(doc, name, break_it):
    good = {
        "index": {"schema": "agman/index/1", "index": "i", "type": "flat", "items": 1, "added": 1, "updated": 0, "unreadable": 0,
                  "already_indexed": 0,
                  "embedded": 1, "resumed_from": 0, "seconds": 0.1, "images_per_second": 10.0, "source": "folder x",
                  "left_out": []},
        "search": {"query": {"id": None, "labels": {}}, "attributes": {"a": 1.0}, "filter": None, "k": 1, "exact": True,
                   "candidates": 3, "seconds": 0.0,
                   "predicted": {"a": {"value": "v", "share": 1.0, "votes": 1, "of": 1, "counts": {"v": 1}}},
                   "summary": {"a": {"value": "v", "source": "predicted", "matches": 1, "of": 1, "unknown": 0,
                                     "queried": True}},
                   "results": [{"rank": 1, "id": "x", "path": "/x", "score": 0.5, "scores": {"a": 0.5},
                                "labels": {"a": "v"}, "metadata": {}, "correct": None,
                                "matches": {"a": True}}]},
        "models": {"schema": "agman/models/1", "attributes": 8, "backbone": "resnet18",
                   "models": [{"name": "agman", "parameters": 1, "description": "d"}], "released_code_check": None},
        "eval": {"schema": "agman/eval/1", "checkpoint": "c.pt", "model": "agman", "attributes": ["a"],
                 "files": [], "metrics": {"split": "test", "score": 0.5, "seconds": 1.0, "images": 4, "map": 0.5}},
    }[name]
    validate(good, doc, name)
    bad = copy.deepcopy(good)
    break_it(bad)
    with pytest.raises(jsonschema.ValidationError):
        validate(bad, doc, name)
