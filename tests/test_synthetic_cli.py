"""`agman data synth`: writes the set, prints a summary, refuses foreign folders with exit code 2."""
from __future__ import annotations

from agman.cli import main
from agman.data.layouts import open_dataset


def test_synth_command_writes_a_readable_set(tmp_path, capsys):
    out = tmp_path / "synth"
    code = main(["data", "synth", "--out", str(out), "--images", "100", "--size", "40", "--seed", "3",
                 "--triplets", "10,4,4", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: 100 images of 40 px, mode all, seed 3" in printed
    assert "train 80" in printed and "sleeve_length (4)" in printed
    spec = open_dataset(out)
    assert len(spec.splits["train"]) == 80
    assert {len(t) for t in open_dataset(out / "triplets").splits["train"].triplets.values()} == {10}
    assert (out / "README.md").is_file() and (out / "contact_sheet.png").is_file()
    capsys.readouterr()
    assert main(["data", "check", str(out)]) == 0  # `agman data check` finds no problem
    assert "no problems found" in capsys.readouterr().out
    assert main(["data", "check", str(out / "triplets")]) == 0


def test_synth_command_refuses_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    code = main(["data", "synth", "--out", str(tmp_path), "--images", "100", "--size", "40", "--no-progress"])
    assert code == 2
    assert "holds no synthetic set" in capsys.readouterr().err


def test_synth_command_rejects_too_few_images(tmp_path, capsys):
    code = main(["data", "synth", "--out", str(tmp_path / "s"), "--images", "100", "--mode", "single", "--no-progress"])
    assert code == 2
    assert "at least 398" in capsys.readouterr().err
