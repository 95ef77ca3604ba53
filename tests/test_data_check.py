"""`agman data check`: counts, problems, exit codes, the --json schema."""
from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
from conftest import REAL_FASHIONAI_SPLIT, needs_real_split
from PIL import Image

from agman.cli import main
from agman.data.check import PROBLEM_KINDS, check_dataset
from agman.data.layouts import read_asen

DOCS = Path(__file__).resolve().parents[1] / "docs" / "data.md"


def documented_schema() -> dict:
    """The JSON Schema block of docs/data.md (the documentation is the contract)."""
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(r"<!-- data-check-schema -->\s*```json\n(.*?)\n```", text, re.S)
    assert block, "docs/data.md lost its data-check schema block"
    return json.loads(block.group(1))


def check_json(capsys, *argv) -> tuple[int, dict]:
    code = main(["data", "check", *map(str, argv), "--json"])
    report = json.loads(capsys.readouterr().out)
    jsonschema.validate(report, documented_schema())
    return code, report


def test_clean_dataset_passes(asen_root, capsys):
    assert main(["data", "check", str(asen_root)]) == 0
    out = capsys.readouterr().out
    assert "train: 24 images, 0 queries, 0 candidates" in out
    assert "valid: 10 images, 2 queries, 8 candidates" not in out  # 2 attributes per image
    assert "valid: 10 images, 4 queries, 16 candidates" in out
    # value counts carry the value names (issue #14)
    assert "attr0: 24 labelled; per value attr0_v0=8, attr0_v1=8, attr0_v2=8" in out
    assert "attr1: 10 labelled; per value attr1_v0=5, attr1_v1=5; queries 2, candidates 8" in out
    assert "image files checked: 44" in out and "no problems found" in out


def test_missing_and_corrupt_images_are_reported(asen_root, capsys):
    (asen_root / "images/train/0003.png").unlink()
    (asen_root / "images/valid/0002.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    jpg = asen_root / "images/test/0001.png"
    jpg.write_bytes(jpg.read_bytes()[:60])  # truncated
    assert main(["data", "check", str(asen_root)]) == 1
    out = capsys.readouterr().out
    assert "3 problem(s)" in out
    assert f"missing image file: {asen_root / 'images/train/0003.png'}" in out
    assert f"unreadable image file: {asen_root / 'images/valid/0002.png'}" in out
    assert f"unreadable image file: {asen_root / 'images/test/0001.png'}" in out


def test_singleton_values_and_malformed_files(asen_root, capsys):
    meta = json.loads((asen_root / "meta.json").read_text())
    meta["ATTRIBUTES_NUM"]["attr0"] = 4
    meta["ATTRIBUTES_VALUES"]["attr0"].append("extra")
    (asen_root / "meta.json").write_text(json.dumps(meta))
    lines = (asen_root / "label_train.txt").read_text().splitlines()
    lines[5] = "5 0 3 1 1"
    (asen_root / "label_train.txt").write_text("\n".join(lines) + "\n")
    assert main(["data", "check", str(asen_root), "--no-images"]) == 1
    out = capsys.readouterr().out
    assert "value 3 of attribute 0 (attr0) has a single image" in out
    assert "train: value 3 of attribute attr0 has only one image" in out
    lines[5] = "5 0 9"
    (asen_root / "label_train.txt").write_text("\n".join(lines) + "\n")
    assert main(["data", "check", str(asen_root)]) == 1  # a malformed file: runtime error, exit 1
    err = capsys.readouterr().err
    assert "label_train.txt, line 6: value 9 out of range" in err


def test_queries_without_candidates_reported(asen_root):
    lines = (asen_root / "candidate_valid.txt").read_text().splitlines()
    (asen_root / "candidate_valid.txt").write_text("".join(x + "\n" for x in lines if x.split()[1] != "1"))
    spec = read_asen(asen_root, allow_singletons=True)
    report = check_dataset(spec, check_images=False)
    assert not report.ok
    assert any("2 queries of attribute attr1 have no candidate" in p.message for p in report.problems)
    assert {"reader", "queries-without-candidates"} <= {p.kind for p in report.problems}


def test_csn_and_csv_layouts(csn_root, catalog_csv, capsys):
    assert main(["data", "check", str(csn_root)]) == 0
    out = capsys.readouterr().out
    assert "train: 12 images, 0 queries, 0 candidates, 24 triplets" in out
    assert main(["data", "check", str(catalog_csv), "--seed", "1"]) in (0, 1)
    assert "train: 48 images" in capsys.readouterr().out


@needs_real_split
def test_real_split_counts(capsys):
    assert main(["data", "check", str(REAL_FASHIONAI_SPLIT), "--no-images"]) == 0
    out = capsys.readouterr().out
    assert "valid: 18000 images, 3600 queries, 14400 candidates" in out
    assert "neckline_design: 3317 labelled" in out


def test_import_csv(catalog_csv, tmp_path, capsys):
    out = tmp_path / "asen"
    assert main(["data", "import-csv", str(catalog_csv), "--out", str(out), "--seed", "2"]) == 0
    assert "train 48, valid 6, test 6 images" in capsys.readouterr().out
    assert (out / "meta.json").is_file() and (out / "query_test.txt").is_file()


# --------------------------------------------------------------------------- issue #12.11: zero labels
def test_train_split_with_zero_labels_is_a_problem(asen_root, capsys):
    (asen_root / "label_train.txt").write_text("")
    assert main(["data", "check", str(asen_root), "--no-images"]) == 1
    out = capsys.readouterr().out
    assert "train: split 'train' cannot form any triplet" in out
    assert "(0 of 24 images labelled); `agman train` refuses this split" in out
    assert "no problems found" not in out


def test_train_split_with_one_trainable_attribute_is_fine_but_noted(asen_root, capsys):
    lines = (asen_root / "label_train.txt").read_text().splitlines()
    (asen_root / "label_train.txt").write_text("".join(" ".join(x.split()[:3]) + "\n" for x in lines))
    assert main(["data", "check", str(asen_root), "--no-images"]) == 0
    assert "note: train: no image is labelled with attr1: they are not trained" in capsys.readouterr().out


# --------------------------------------------------------------------------- --json (issue #14)
def test_json_output_follows_the_documented_schema(asen_root, capsys):
    code, report = check_json(capsys, asen_root)
    assert code == 0 and report["ok"] is True and report["problems"] == []
    assert report["images_checked"] == 44
    attr0 = report["splits"]["train"]["attributes"]["attr0"]
    assert attr0["labelled"] == 24
    assert attr0["values"] == [{"index": i, "name": f"attr0_v{i}", "images": 8} for i in range(3)]
    assert report["splits"]["valid"]["attributes"]["attr1"]["queries"] == 2


def test_json_problems_have_kinds_and_paths(asen_root, capsys):
    (asen_root / "images/train/0003.png").unlink()
    (asen_root / "images/valid/0002.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.new("RGB", (21, 1)).save(asen_root / "images/test/0001.png")  # aspect 21:1 > 20:1
    (asen_root / "label_train.txt").write_text("")
    code, report = check_json(capsys, asen_root)
    assert code == 1 and report["ok"] is False
    by_kind = {p["kind"]: p for p in report["problems"]}
    assert set(by_kind) == {"missing-image", "unreadable-image", "image-too-large", "no-triplets"}
    assert by_kind["missing-image"]["path"] == str(asen_root / "images/train/0003.png")
    assert by_kind["image-too-large"]["path"] == str(asen_root / "images/test/0001.png")
    assert "aspect ratio 21.0:1 exceeds 20:1" in by_kind["image-too-large"]["message"]
    assert by_kind["no-triplets"]["split"] == "train"


def test_json_for_a_triplet_list_dataset(csn_root, capsys):
    code, report = check_json(capsys, csn_root)
    assert code == 0
    train = report["splits"]["train"]
    assert train["triplets"] == 24 and train["attributes"]["class"] == {
        "labelled": 0, "values": [], "queries": 0, "candidates": 0, "triplets": 6
    }


def test_schema_lists_every_problem_kind():
    schema = documented_schema()
    assert schema["properties"]["problems"]["items"]["properties"]["kind"]["enum"] == list(PROBLEM_KINDS)


def test_schema_rejects_what_it_should():
    bad = {"schema": "agman/data-check/1", "dataset": "x", "root": "/", "ok": True, "images_checked": -1,
           "splits": {}, "problems": [], "notes": []}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, documented_schema())


def test_an_evaluation_split_with_an_empty_query_list_is_a_problem(asen_root, capsys):
    """#19.14: a test split whose query list is empty passed the check ("no problems found") while
    `agman eval` refuses it: it is reported (``no-queries``, exit 1)."""
    (asen_root / "query_test.txt").write_text("")
    code, report = check_json(capsys, asen_root)
    assert code == 1 and report["ok"] is False
    found = [p for p in report["problems"] if p["kind"] == "no-queries"]
    assert len(found) == 1 and found[0]["split"] == "test" and "agman eval" in found[0]["message"]
