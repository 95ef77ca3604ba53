"""`agman data check`: counts, problems, exit codes."""
from __future__ import annotations

import json

from conftest import REAL_FASHIONAI_SPLIT, needs_real_split

from agman.cli import main
from agman.data.check import check_dataset
from agman.data.layouts import read_asen


def test_clean_dataset_passes(asen_root, capsys):
    assert main(["data", "check", str(asen_root)]) == 0
    out = capsys.readouterr().out
    assert "train: 24 images, 0 queries, 0 candidates" in out
    assert "valid: 10 images, 2 queries, 8 candidates" not in out  # 2 attributes per image
    assert "valid: 10 images, 4 queries, 16 candidates" in out
    assert "attr0: 24 labelled, per value [8, 8, 8]" in out
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
    (asen_root / "candidate_valid.txt").write_text("".join(l + "\n" for l in lines if l.split()[1] != "1"))
    spec = read_asen(asen_root, allow_singletons=True)
    report = check_dataset(spec, check_images=False)
    assert not report.ok
    assert any("2 queries of attribute attr1 have no candidate" in p for p in report.problems)


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
