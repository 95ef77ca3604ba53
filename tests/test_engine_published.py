"""The paper's Tables 2–10 as agman holds them, and measured results put beside them."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from agman.engine import published as P

PAPER = Path(__file__).resolve().parents[2] / "shared" / "seed" / "ag-man-paper.txt"


def _numbers(line: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+\.\d+", line)]


@pytest.mark.skipif(not PAPER.is_file(), reason="the paper's text (../shared/seed) is not beside this checkout")
def test_every_row_is_a_line_of_the_paper():
    text = PAPER.read_text(encoding="utf-8")
    lines = [_numbers(line) for line in text.splitlines()]
    for row in P.TABLES:
        want = [*row.per_attribute.values(), row.overall] if row.average_loss is None else [row.average_loss,
                                                                                            row.overall]
        assert any(found == want for found in lines), (row.table, row.method, want)
    caption = {int(m.group(1)) for m in re.finditer(r"^Table (\d+)\.", text, re.M)}
    assert {r.table for r in P.TABLES} == caption - {1} == set(range(2, 11))  # Table 1 lists the datasets


def test_tables_are_consistent_with_each_other():
    by = {(r.table, r.method, tuple(sorted(r.switches.items()))): r for r in P.TABLES}
    full_fa = by[(2, "Ours", ())]
    assert full_fa.overall == 62.8788 and len(full_fa.per_attribute) == 8
    assert [r for r in P.TABLES if r.table == 5][-1].per_attribute == full_fa.per_attribute  # all switches on
    assert [r for r in P.TABLES if r.table == 7][-1].overall == full_fa.overall
    assert by[(9, "Ours (only AGA)", ())].overall == P.published("FashionAI", "agman-h0-c0").overall == 61.9679
    assert P.published("DeepFashion", "agman").overall == 8.9804
    assert len(P.published("DeepFashion", "csn").per_attribute) == 5
    for dataset, model, overall in (("FashionAI", "csn", 50.8043), ("FashionAI", "asenet-v2", 60.7551),
                                    ("DeepFashion", "attnfashion", 6.8060), ("zappos50k", "agman", 93.32)):
        assert P.published(dataset, model).overall == overall
    assert P.published("Zappos50k", "csn").average_loss == 0.0393


def test_names_of_runs_and_datasets():
    assert P.paper_dataset("FashionAI") == P.paper_dataset("fashionai") == "FashionAI"
    assert P.paper_dataset("zappos50k") == "Zappos50k" and P.paper_dataset("synthetic") is None
    assert P.paper_dataset("fashionai_split") == "FashionAI" and P.paper_dataset(None) is None
    assert P.published("FashionAI", "agman-official") is P.published("FashionAI", "agman")
    assert P.published("FashionAI", "agman-no-sa").table == 7 and P.published("DeepFashion", "agman-no-ca").table == 8
    assert P.published("FashionAI", "agman-h1-c0").switches == {"AGA": True, "hierarchical": True,
                                                                "classification": False}
    assert P.published("FashionAI", "my-model") is None


def test_measured_beside_published_for_fashionai():
    names = ["skirt_length_labels", "neckline_design_labels", "neck_design_labels", "unknown"]
    measured = {"agman-official": {"map": 0.5, "map_per_attribute": {"skirt_length_labels": 0.6,
                                                                      "neckline_design_labels": 0.4}},
                "not-in-the-paper": {"map": 0.1}}
    header, rows = P.beside("FashionAI", measured, names)
    assert header == ["run", "source", *names, "MAP"]
    assert len(rows) == 2  # the run the paper does not report is left out
    got, paper = rows
    assert got[:2] == ["agman-official", "measured"] and got[2] == pytest.approx(60.0) and got[-1] == 50.0
    assert math.isnan(got[4])  # measured nothing for neck_design
    assert paper[:2] == ["agman-official", "paper (Table 2)"]
    assert paper[2:5] == [65.5674, 63.1985, 62.0777]  # skirt, neckline (not neck), neck
    assert math.isnan(paper[5]) and paper[-1] == 62.8788
    text = P.beside_text("FashionAI", measured, names)
    assert text.startswith("Measured and published (FashionAI, MAP (%))") and "62.88" in text


def test_measured_beside_published_for_zappos_and_none_elsewhere():
    header, rows = P.beside("zappos50k", {"csn": {"tr_accuracy": 0.9, "tr_loss": 0.05}}, ["class", "closure"])
    assert header == ["run", "source", "average loss", "accuracy"]
    assert rows == [["csn", "measured", 0.05, 90.0], ["csn", "paper (Table 4)", 0.0393, 93.14]]
    assert P.beside("synthetic", {"agman": {"map": 0.7}}, ["sleeve_length"]) is None
    assert P.beside("FashionAI", {"mine": {"map": 0.7}}, ["skirt_length"]) is None
    assert P.beside_text("synthetic", {"agman": {"map": 0.7}}, ["sleeve_length"]) is None
