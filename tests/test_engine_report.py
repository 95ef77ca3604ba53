"""Report tables (terminal, CSV, Markdown) and the training-curve picture."""
from __future__ import annotations

import csv

from PIL import Image

from agman.engine import report

NAMES = ["skirt", "sleeve"]
METRICS = {
    "CSN": {"map": 0.5, "map_per_attribute": {"skirt": 0.6, "sleeve": 0.4},
            "recall": {1: 0.1, 10: 0.5}, "precision": {1: 0.6, 10: 0.5}},
    "AG-MAN": {"map": 0.62888, "map_per_attribute": {"skirt": 0.655674, "sleeve": 0.55084},
               "recall": {1: 0.2, 10: 0.6}, "precision": {1: 0.7, 10: 0.6}},
}


def test_asfr_table_like_table_2(tmp_path):
    header, rows = report.asfr_table(METRICS, NAMES)
    assert header == ["method", "skirt", "sleeve", "MAP"]
    assert rows[1][0] == "AG-MAN" and abs(rows[1][3] - 62.888) < 1e-9
    text = report.format_table(header, rows)
    assert "62.89" in text and text.splitlines()[0].startswith("method")
    md = report.markdown_table(header, rows)
    assert md.splitlines()[1] == "|---|---:|---:|---:|"
    assert "| AG-MAN | 65.57 | 55.08 | 62.89 |" in md


def test_write_report_tables(tmp_path):
    text = report.write_report_tables(tmp_path, "eval", METRICS, NAMES, title="FashionAI",
                                      extra={"ASA": ["-", "✓"]})
    assert "Recall@k" in text and "R@10" in text
    rows = list(csv.reader(open(tmp_path / "eval.csv", encoding="utf-8")))
    assert rows[0] == ["method", "ASA", "skirt", "sleeve", "MAP"]
    assert rows[2][1:] == ["✓", "65.5674", "55.0840", "62.8880"]
    md = (tmp_path / "eval.md").read_text(encoding="utf-8")
    assert md.startswith("# FashionAI") and "## MAP (%) per attribute and overall" in md
    assert (tmp_path / "eval-recallk.csv").is_file()


def test_tr_table():
    tr = {"AG-MAN": {"tr_accuracy": 0.9332, "tr_loss": 0.039, "tr_accuracy_per_attribute": {"skirt": 0.9, "sleeve": 0.96}}}
    tables = report.result_tables(tr, NAMES)
    assert [t[0] for t in tables] == ["Triplet relation prediction: accuracy (%) and average loss"]
    header, rows = tables[0][1:]
    assert header[-2:] == ["average loss", "accuracy"] and abs(rows[0][-1] - 93.32) < 1e-9


def test_training_curves_png(tmp_path):
    history = [{"epoch": e, "lr": 1e-3 * 0.9 ** e, "train_total": 1 / e, "train_triplet": 0.5 / e,
                "weight_triplet": 0.5, "valid_score": 0.3 + 0.1 * e, "valid_map_skirt": 0.2 * e} for e in (1, 2, 3)]
    path = report.plot_training_curves(history, tmp_path / "curves.png", title="run")
    with Image.open(path) as im:
        assert im.size[0] > 600
    report.plot_training_curves([{"epoch": 1, "lr": 0.1}], tmp_path / "empty.png")
