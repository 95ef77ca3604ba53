"""`agman train / eval / ablate / demo` end to end on tiny data, and their user-error messages."""
from __future__ import annotations

import json

import pytest
from conftest import make_asen

from agman.cli import main
from agman.engine.compose import packaged_config_dir

TINY = ["model.embedding_dim=16", "model.attention_dim=16", "data.input_size=32", "train.workers=0",
        "train.batch_size=4", "train.triplets_per_epoch=8", "train.epochs=1", "eval.batch_size=16",
        "output.tensorboard=false", "train.threads=1", "warmup.epochs=1", "warmup.batch_size=8"]


def tiny_train_args(root, out):
    return ["train", "--config", "configs/synthetic/agman.yaml", "--out", str(out), "--no-progress",
            f"data.root={root}", "data.synthetic=null", *TINY]


def test_train_then_eval(asen_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_train_args(asen_root, run)) == 0
    assert "best validation score" in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "train.epochs=2", "--no-progress"]) == 0
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--split", "test", "--device", "cpu",
                 "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "MAP (%) per attribute and overall" in out and "attr0" in out and "R@10" in out
    for name in ("eval-test.csv", "eval-test.md", "eval-test.json"):
        assert (run / name).is_file()
    assert "published" not in out  # a dataset the paper does not report on: no paper rows
    assert 0 <= json.loads((run / "eval-test.json").read_text())["map"] <= 1
    # the engine's report writes the same files the CLI does, and its JSON is what `--json` prints
    from agman.engine.eval_report import evaluate_and_report

    report = evaluate_and_report(run / "best.pt", "test", out=tmp_path / "lib", figures=2)
    assert [f.name for f in report.files] == ["eval-test.csv", "eval-test.md", "eval-test.json",
                                              *(f.name for f in report.figures)]
    assert all(f.is_file() for f in report.files) and report.figures  # Fig. 9: a tiny model fails somewhere
    assert (tmp_path / "lib" / "eval-test.csv").read_text() == (run / "eval-test.csv").read_text()
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--device", "cpu", "--workers", "0", "--json",
                 "--out", str(tmp_path / "lib"), "--figures", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = report.to_json()
    assert printed["files"] == expected["files"] and printed["model"] == expected["model"]
    assert printed["metrics"]["map"] == expected["metrics"]["map"]
    # a second fresh run into the same folder is refused without a traceback
    assert main(tiny_train_args(asen_root, run)) == 2
    assert "--resume" in capsys.readouterr().err


def test_eval_prints_the_published_numbers_beside_the_measured(tmp_path, capsys):
    # a dataset whose folder is called FashionAI: the paper's Table 2 (AG-MAN's row) beside the measured MAP
    root = make_asen(tmp_path / "FashionAI")
    run = tmp_path / "run"
    assert main(tiny_train_args(root, run)) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--device", "cpu", "--workers", "0",
                 "--figures", "2"]) == 0
    out = capsys.readouterr().out
    assert "Measured and published (FashionAI, MAP (%))" in out
    # Fig. 9 where a top-ranked result is wrong; no Fig. 8 without triplet lists
    assert (run / "fig9-failures-test.png").is_file() and "fig9-failures-test.png" in out
    assert not (run / "fig8-triplets-test.png").exists()
    lines = {line.split()[1]: line.split() for line in out.splitlines() if line.startswith("agman ")}
    measured = 100 * json.loads((run / "eval-test.json").read_text())["map"]
    assert float(lines["measured"][-1]) == pytest.approx(measured, abs=0.005)
    assert lines["paper"][2:4] == ["(Table", "2)"] and lines["paper"][-1] == "62.88"  # AG-MAN, FashionAI overall
    # attr0/attr1 are not the paper's attributes: no per-attribute paper figure
    assert lines["paper"][4:-1] == ["-", "-"]


@pytest.mark.parametrize("override, words", [
    ("train.lrr=1", ["train.lrr", "configs/synthetic/agman.yaml"]),
    ("train.epochs=abc", ["train.epochs", "abc"]),
    ("model.colour=red", ["colour", "configs/synthetic/agman.yaml"]),
])
def test_train_user_errors_are_one_line(override, words, tmp_path, capsys):
    code = main(["train", "--config", "configs/synthetic/agman.yaml", "--out", str(tmp_path / "r"), override])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("agman: error:") and "Traceback" not in err
    for w in words:
        assert w in err


def test_missing_data_and_missing_checkpoint(tmp_path, capsys):
    code = main(["train", "--config", "configs/fashionai/agman.yaml", "--out", str(tmp_path / "r"),
                 f"data.root={tmp_path / 'nothing'}", "model.pretrained=none"])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "--config" in capsys.readouterr().err


def test_ablate_runs_a_grid_and_reuses_finished_runs(tmp_path, capsys):
    asen_root = make_asen(tmp_path / "DeepFashion")  # named so: the paper's Table 6 rows are printed beside
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "agman.yaml").write_text(f"base: {packaged_config_dir() / 'synthetic' / 'agman.yaml'}\n")
    args = ["ablate", "--config", str(folder / "agman.yaml"), "--grid", "hierarchy", "--out", str(tmp_path / "ab"),
            f"data.root={asen_root}", "data.synthetic=null", "output.progress=false", *TINY]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "hierarchical" in out and "agman-h0-c0" in out
    assert "Measured and published (DeepFashion, MAP (%))" in out
    paper = {line.split()[0]: line.split()[-1] for line in out.splitlines() if "paper (Table" in line}
    # Table 6's hierarchy rows, and Table 3's for the full model (the first table with an AG-MAN row)
    assert paper == {"agman-h0-c0": "8.81", "agman-h1-c0": "8.84", "agman-h0-c1": "9.05", "agman": "8.98"}
    assert (tmp_path / "ab" / "ablation-published.md").is_file()
    for name in ("ablation.md", "ablation.csv", "ablation-hierarchy.md", "ablation-hierarchy.csv",
                 "ablation-times.json"):
        assert (tmp_path / "ab" / name).is_file(), name
    runs = sorted(p.name for p in (tmp_path / "ab" / "runs").iterdir())
    assert runs == ["agman", "agman-h0-c0", "agman-h0-c1", "agman-h1-c0"]
    times = json.loads((tmp_path / "ab" / "ablation-times.json").read_text())
    assert main(args) == 0  # everything reused: nothing retrained
    again = json.loads((tmp_path / "ab" / "ablation-times.json").read_text())
    # a reusing call keeps what each run cost when it ran (its own wall time is the call's)
    assert again["runs"] == times["runs"] and again["runs_seconds"] == pytest.approx(sum(times["runs"].values()))
    assert "Measured and published (DeepFashion" in capsys.readouterr().out  # the dataset kept with the metrics
    assert "done before" not in capsys.readouterr().out  # (logged, not printed)


@pytest.fixture(scope="module")
def boxed_root(tmp_path_factory):
    """A tiny synthetic set: it has regions files, so the attention is scored."""
    from agman.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("boxed") / "s", n_images=120, size=48, seed=1, progress=False)


ATTRIBUTES = ["sleeve_length", "neckline_design", "garment_length", "waist_detail", "pattern"]


def test_eval_scores_the_attention_where_the_data_has_boxes(boxed_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_train_args(boxed_root, run)) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--device", "cpu", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "attention localisation, agman on test: pointing game (tolerance 2.1 px) and energy share of the 2x2 " \
           "map upsampled to the 32-px crop" in out
    for word in ("energy", "pointing", "chance", *ATTRIBUTES):
        assert word in out.split("attention localisation")[1]
    scores = json.loads((run / "eval-test.json").read_text())["localization"]
    assert list(scores["attributes"]) == ATTRIBUTES and scores["available"]
    assert scores["all"]["pairs"] == 5 * scores["attributes"]["pattern"]["pairs"] > 0
    header = (run / "eval-test.csv").read_text().splitlines()[0]
    assert header.endswith("MAP,pointing,pointing chance,energy,energy chance")
    rows = (run / "eval-test-localization.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 + 1 and rows[-1].startswith("all,")
    # --json: the scores are in the metrics and the CSV among the files, within the documented schema
    from test_cli_json import validate

    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--device", "cpu", "--workers", "0", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    validate(body, "training.md", "eval")
    assert body["metrics"]["localization"]["all"]["pairs"] == scores["all"]["pairs"]
    assert body["files"][3].endswith("eval-test-localization.csv")
    # not asked for, or no boxes: no scores
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--device", "cpu", "--workers", "0",
                 "--no-localization", "--out", str(tmp_path / "plain")]) == 0
    assert "localization" not in json.loads((tmp_path / "plain" / "eval-test.json").read_text())
    assert "attention localisation" not in capsys.readouterr().out


def test_ablate_table_gains_a_localisation_column_csn_na(boxed_root, tmp_path, capsys):
    args = ["ablate", "--config", "configs/synthetic/agman.yaml", "--grid", "models", "--out", str(tmp_path / "ab"),
            f"data.root={boxed_root}", "data.synthetic=null", "output.progress=false", *TINY]
    assert main(args) == 0
    out = capsys.readouterr().out
    table = (tmp_path / "ab" / "ablation-models.csv").read_text().splitlines()
    assert table[0].endswith("MAP,pointing,pointing chance,energy,energy chance")
    cells = {line.split(",")[0]: line.split(",")[-4:] for line in table[1:]}
    assert cells["CSN"] == ["n/a"] * 4
    for model in ("ASENet_V2", "AttnFashion", "AG-MAN"):
        pointing, pointing_chance, energy, energy_chance = (float(v) for v in cells[model])
        assert 0 <= pointing <= 100 and 0 <= energy <= 100 and 0 < energy_chance < pointing_chance <= 100
    assert "energy chance" in out


def test_ablation_plan_dedupes_the_full_model():
    from agman.engine.ablate import plan

    per_grid, runs = plan(["models", "hierarchy", "aga"])
    assert [len(v) for v in per_grid.values()] == [4, 4, 5]
    assert len(runs) == 11 and [r.name for r in runs].count("agman") == 1
    with pytest.raises(ValueError, match="unknown grid"):
        plan(["tables"])


@pytest.mark.slow
def test_demo_end_to_end_on_a_small_set(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--data", str(tmp_path / "synth"), "--no-progress",
                 "data.synthetic={images: 300, size: 48, seed: 0, mode: all}", *TINY])
    assert code == 0
    printed = capsys.readouterr().out
    assert "AG-MAN (trained)" in printed and "colour histogram" in printed and "report:" in printed
    assert "warm-up value classifier (value probabilities)" in printed  # the strongest simple baseline
    for name in ("report.md", "metrics.md", "metrics.csv", "curves.png"):
        assert (out / name).is_file(), name
    attrs = ("sleeve_length", "neckline_design", "garment_length", "waist_detail", "pattern")
    for a in attrs:
        assert (out / "grids" / f"{a}.png").is_file() and (out / "attention" / f"{a}.png").is_file()
    report = (out / "report.md").read_text()
    assert "every attribute above random" in report
    assert "a supervised baseline trained on the very labels being retrieved" in report and "AG-MAN wins on" in report
    assert "a supervised baseline trained on the very labels being retrieved" in printed
    where = report.split("## Where the attention looks")[1]
    assert "above chance on both for" in where and "of 5 attributes" in where
    assert ("| attribute | pairs | pointing, trained | pointing, untrained | pointing, warm-up only | "
            "pointing chance | energy, trained") in where
    assert "above chance on both" in printed


def test_train_help_lists_what_can_be_composed(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in ("fashionai", "deepfashion", "zappos50k", "synthetic", "agman-official", "asenet-v2", "attnfashion",
                 "csn", "synthetic/demo"):
        assert name in text, name
