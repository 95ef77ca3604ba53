"""Training and evaluation read the decoded-image cache and end with exactly the weights and scores
of reading the files."""
from __future__ import annotations

import logging

from test_engine_train import assert_same_weights, tiny_config, weights

from agman.data.cache import build_cache
from agman.data.layouts import read_asen
from agman.engine.train import train


def test_training_from_the_cache_equals_training_from_files(asen_root, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("AGMAN_CACHE", "off")
    files = train(tiny_config(asen_root, tmp_path / "files", epochs=2))
    spec = read_asen(asen_root)
    for split in spec.splits.values():
        build_cache(split.paths, spec.root, 32, 1.0, progress=False)
    monkeypatch.setenv("AGMAN_CACHE", "require")  # training and validation fail unless they read the cache
    with caplog.at_level(logging.INFO, logger="agman.data.cache"):
        cached = train(tiny_config(asen_root, tmp_path / "cache", epochs=2))
    read = [r.getMessage() for r in caplog.records if "from the decoded-image cache" in r.getMessage()]
    assert read[0].startswith(f"reading {len(spec.split('train'))} images") and len(read) == 3  # train, 2 x valid
    assert_same_weights(weights(files.last_path), weights(cached.last_path))
    assert [r["valid_score"] for r in files.history] == [r["valid_score"] for r in cached.history]


def test_data_cache_switch_fills_the_cache_and_changes_nothing(asen_root, tmp_path, monkeypatch, caplog):
    """``data.cache: true`` decodes every split into the cache before training (so the run reads it
    throughout) and ends with the weights and scores of a run that decodes the files."""
    monkeypatch.setenv("AGMAN_CACHE", "off")
    files = train(tiny_config(asen_root, tmp_path / "files", epochs=2))
    monkeypatch.delenv("AGMAN_CACHE")
    config = tiny_config(asen_root, tmp_path / "cache", epochs=2)
    config.data.cache = True
    with caplog.at_level(logging.INFO, logger="agman"):
        cached = train(config)
    spec = read_asen(asen_root)
    messages = [r.getMessage() for r in caplog.records]
    filled = [m for m in messages if m.startswith("decoded-image cache:")]
    assert len(filled) == len(spec.splits), messages
    assert any(m.startswith(f"reading {len(spec.split('train'))} images from the decoded-image cache")
               for m in messages)
    assert_same_weights(weights(files.last_path), weights(cached.last_path))
    assert [r["valid_score"] for r in files.history] == [r["valid_score"] for r in cached.history]
