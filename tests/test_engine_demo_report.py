"""The demo report says what the classifier row is and where AG-MAN wins and loses against it."""
from __future__ import annotations

from agman.engine.demo import CLASSIFIER, TRAINED, against_classifier


def _row(overall, **per):
    return {"map": overall, "map_per_attribute": per}


def test_against_classifier_names_winners_and_losers_with_their_maps():
    names = ["sleeve", "neckline", "waist"]
    rows = {TRAINED: _row(0.8093, sleeve=0.80, neckline=0.764, waist=0.521),
            CLASSIFIER: _row(0.8215, sleeve=0.8647, neckline=0.7555, waist=0.5886)}
    text = against_classifier(rows, names)
    assert text.startswith("The classifier row is a supervised baseline trained on the very labels being retrieved")
    assert "AG-MAN's test MAP is not above it: 80.93% vs 82.15%" in text
    assert "wins on 1 of 3 attributes: neckline (76.40 vs 75.55)" in text
    assert text.endswith("it loses on sleeve (80.00 vs 86.47), waist (52.10 vs 58.86)")
    rows[TRAINED] = _row(0.83, sleeve=0.9, neckline=0.8, waist=0.6)
    text = against_classifier(rows, names)
    assert "is above it: 83.00% vs 82.15%" in text and "wins on 3 of 3" in text and text.endswith("loses on none")
    assert against_classifier({TRAINED: rows[TRAINED]}, names) == ""  # no classifier row (an older warm-up)
