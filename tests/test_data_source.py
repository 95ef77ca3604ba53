"""Opening a run's dataset: a training/eval/demo command never overwrites an existing dataset
(issue #12, item 13); the synthetic generation settings apply only to an absent or empty folder."""
from __future__ import annotations

import json

import pytest

from agman.data.source import open_data
from agman.data.synthetic import generate
from agman.errors import AlreadyExistsError, NotFoundError, UsageError

SETTINGS = {"images": 80, "size": 32, "seed": 0, "mode": "all", "workers": 1}


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_renders_into_an_absent_or_empty_folder_and_reuses_the_same_set(tmp_path):
    absent, empty = tmp_path / "absent", tmp_path / "empty"
    empty.mkdir()
    for root in (absent, empty):
        spec = open_data(root, synthetic=SETTINGS)
        assert len(spec.split("train")) + len(spec.split("valid")) + len(spec.split("test")) == 80
    before = snapshot(absent)
    assert open_data(absent, synthetic=SETTINGS).attribute_names == spec.attribute_names
    assert snapshot(absent) == before  # the same settings: used as it is, nothing rewritten


def test_a_set_rendered_with_other_settings_is_never_replaced(tmp_path):
    """`agman data synth --out DIR --images 100`, then a config that asks for 80 images at DIR."""
    root = generate(tmp_path / "mine", 100, 32, seed=3, progress=False)
    before = snapshot(root)
    with pytest.raises(AlreadyExistsError) as err:
        open_data(root, synthetic=SETTINGS)
    message = str(err.value)
    assert "images 100 there, 80 in the config" in message and "seed 3 there, 0 in the config" in message
    assert "data.synthetic=null" in message and "size" not in message.split("(")[1].split(")")[0]
    assert isinstance(err.value, UsageError)
    assert snapshot(root) == before
    spec = open_data(root)  # data.synthetic=null: the folder as it is
    assert sum(len(s) for s in spec.splits.values()) == 100


def test_a_folder_of_other_files_is_never_rendered_into(asen_root, tmp_path):
    before = snapshot(asen_root)
    with pytest.raises(AlreadyExistsError, match="holds no synthetic set.*data.synthetic=null"):
        open_data(asen_root, synthetic=SETTINGS)
    assert snapshot(asen_root) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(AlreadyExistsError, match="is a file"):
        open_data(tmp_path / "file", synthetic=SETTINGS)


def test_an_interrupted_rendering_of_the_same_settings_is_finished(tmp_path):
    root = generate(tmp_path / "s", 80, 32, seed=0, progress=False)
    record = json.loads((root / "synth.json").read_text())
    (root / "synth.json").write_text(json.dumps({**record, "complete": False}))
    (root / "meta.json").unlink()
    assert len(open_data(root, synthetic=SETTINGS).split("train")) == 64
    assert json.loads((root / "synth.json").read_text())["complete"] is True


def test_missing_root(tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        open_data(tmp_path / "missing")
    with pytest.raises(UsageError, match="data.root"):
        open_data(None)
