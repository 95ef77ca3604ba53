"""`agman models`: the table of models and the official preset's parameter count."""
from __future__ import annotations

from agman.cli import main


def test_models_lists_every_model_with_counts(capsys):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    for name in ("agman", "agman-official", "csn", "asenet-v2", "attnfashion"):
        assert f"\n{name} " in text
    assert "26,420,909" in text and "(equal)" in text


def test_models_options(capsys):
    assert main(["models", "--attributes", "4", "--backbone", "resnet18"]) == 0
    text = capsys.readouterr().out
    assert "4 attributes on resnet18" in text and "26,420,909" not in text
