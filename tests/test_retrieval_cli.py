"""`agman index / search / attention / compare`: end to end in-process, and every bad input as a CLI error."""
from __future__ import annotations

import json

import pytest
from conftest import make_asen, make_csv
from PIL import Image
from test_retrieval_index import tiny_checkpoint

from agman.cli import main
from agman.data.layouts import open_dataset


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """A dataset, two checkpoints and a flat index of its test split (built through the CLI)."""
    tmp = tmp_path_factory.mktemp("cli")
    root = make_asen(tmp / "ds", n_per_split=(12, 10, 20), values=(3, 2))
    spec = open_dataset(root)
    ck_a = tiny_checkpoint(tmp / "a.pt", spec.attributes, seed=0)
    ck_b = tiny_checkpoint(tmp / "b.pt", spec.attributes, seed=1)
    out = tmp / "index"
    rc = main(["index", "--checkpoint", str(ck_a), "--images", str(root), "--split", "test", "--out", str(out),
               "--batch-size", "8", "--no-progress"])
    assert rc == 0
    return tmp, spec, ck_a, ck_b, out


def run(capsys, *argv):
    """(exit code, stdout, stderr); argparse's own errors exit with 2 as well."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_index_reports_and_refuses_rebuilding_without_add(catalog, capsys):
    tmp, _spec, ck_a, _, out = catalog
    rc, _, err = run(capsys, "index", "--checkpoint", ck_a, "--images", tmp / "ds", "--split", "test", "--out", out)
    assert rc == 2 and "already holds a complete index of 20 items" in err
    rc, stdout, _ = run(capsys, "index", "--checkpoint", ck_a, "--images", tmp / "ds", "--split", "test",
                        "--out", out, "--add", "--no-progress")
    assert rc == 0 and "added 0, already indexed 20" in stdout


def test_index_from_folder_and_csv_with_an_approximate_type(tmp_path, capsys):
    csv_path = make_csv(tmp_path / "cat", n=16)
    spec = open_dataset(csv_path)
    ck = tiny_checkpoint(tmp_path / "c.pt", spec.attributes)
    rc, stdout, err = run(capsys, "index", "--checkpoint", ck, "--images", csv_path, "--out", tmp_path / "i1",
                          "--type", "ivf-sq8", "--nprobe", "4", "--no-progress")
    assert rc == 0, err
    assert "(ivf-sq8): 16 items" in stdout
    meta = json.loads((tmp_path / "i1" / "index.json").read_text())
    assert meta["index"]["nprobe"] == 4
    rc, stdout, err = run(capsys, "index", "--checkpoint", ck, "--images", tmp_path / "cat" / "img", "--out",
                          tmp_path / "i2", "--no-progress", "--batch-size", "5", "--shard-size", "5")
    assert rc == 0, err
    assert "(flat): 16 items" in stdout


def test_search_table_json_and_grid(catalog, capsys):
    tmp, spec, _, _, out = catalog
    item = spec.split("test").paths[3]
    rc, stdout, err = run(capsys, "search", "--index", out, "--item", item, "-a", "attr0", "-a", "attr1:2",
                          "--k", "4", "--exclude-self", "--grid", tmp / "grid.png")
    assert rc == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith(f"query {item}: attr0:1, attr1:2; 4 of 19 items (exact)")
    assert lines[1].split() == ["rank", "score", "attr0", "attr1", "match", "id"]
    assert len([ln for ln in lines if ln.strip().split(" ")[0].isdigit()]) == 4
    with Image.open(tmp / "grid.png") as im:
        assert im.width > 4 * 128
    rc, stdout, _ = run(capsys, "search", "--index", out, "--image", tmp / "ds" / item, "-a", "attr1", "--k", "3",
                        "--json")
    body = json.loads(stdout)
    assert body["query"]["id"] == item and body["attributes"] == {"attr1": 1.0}
    assert [r["rank"] for r in body["results"]] == [1, 2, 3]
    assert body["results"][0]["id"] == item and body["results"][0]["correct"] is True
    rc, stdout, _ = run(capsys, "search", "--index", out, "--item", item, "-a", "attr0:1e6", "-a", "attr1:1e6",
                        "--json")  # the largest weights: finite scores, strict JSON (#12.9)

    def no_constants(name):
        raise AssertionError(f"{name} in the JSON output")

    body = json.loads(stdout, parse_constant=no_constants)
    assert rc == 0 and body["results"][0]["score"] == pytest.approx(2e6, rel=1e-4)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-a", "colour"], "unknown attribute 'colour'"),
        (["-a", "attr0:heavy"], "weight of 'attr0' must be a number"),
        (["-a", "attr0:-2"], "from 0 to 1e+06"),
        (["-a", "attr0:1e308", "-a", "attr1:1e308", "--json"], "from 0 to 1e+06"),  # #12.9: was Infinity
        (["-a", "attr0", "--k", "0"], "positive integer"),
        (["-a", "attr0", "--k", "5000"], "at most 1000"),
        (["-a", "attr0", "--k", "ten"], "positive integer"),
    ],
)
def test_search_bad_input_is_a_cli_error(catalog, capsys, argv, message):
    _, spec, _, _, out = catalog
    rc, _, err = run(capsys, "search", "--index", out, "--item", spec.split("test").paths[0], *argv)
    assert rc == 2 and message in err


def test_search_errors_for_items_images_indexes_and_checkpoints(catalog, capsys, tmp_path):
    tmp, spec, _, ck_b, out = catalog
    rc, _, err = run(capsys, "search", "--index", out, "--item", "nope.png", "-a", "attr0")
    assert rc == 2 and "no item 'nope.png'" in err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    rc, _, err = run(capsys, "search", "--index", out, "--image", bad, "-a", "attr0")
    assert rc == 1 and "cannot read image" in err  # the file exists but is damaged: a runtime error
    thin = tmp_path / "thin.png"
    Image.new("L", (1, 200_000)).save(thin)  # #12.2: resizing its short side made ~800 Mpx
    rc, _, err = run(capsys, "search", "--index", out, "--image", thin, "-a", "attr0")
    assert rc == 1 and "aspect ratio 200000.0:1 exceeds 20:1" in err
    rc, _, err = run(capsys, "search", "--index", out, "--image", tmp_path / "missing.jpg", "-a", "attr0")
    assert rc == 2 and "not found" in err
    rc, _, err = run(capsys, "search", "--index", tmp_path / "no-index", "--item", "x", "-a", "attr0")
    assert rc == 2 and "no index at" in err
    rc, _, err = run(capsys, "search", "--index", out, "--image", tmp / "ds" / spec.split("test").paths[0],
                     "-a", "attr0", "--checkpoint", ck_b)
    assert rc == 2 and "cannot be mixed" in err
    rc, _, err = run(capsys, "index", "--checkpoint", ck_b, "--images", tmp / "ds", "--split", "valid",
                     "--out", out, "--add")
    assert rc == 2 and "cannot be mixed" in err


def test_attention_and_compare_pictures(catalog, capsys, tmp_path):
    tmp, spec, _ck_a, ck_b, out = catalog
    item = spec.split("test").paths[2]
    rc, stdout, err = run(capsys, "attention", "--index", out, "--item", item, "-a", "attr1", "--view", "model",
                          "--out", tmp_path / "h.png")
    assert rc == 0, err
    with Image.open(tmp_path / "h.png") as im:
        assert im.size == (64, 64)
    # by default: the original beside the map drawn on it, the box in yellow
    rc, stdout, err = run(capsys, "attention", "--index", out, "--item", item, "-a", "attr1", "--box", "2,2,20,20",
                          "--out", tmp_path / "o.png")
    assert rc == 0, err
    with Image.open(tmp_path / "o.png") as im:
        assert im.width > 2 * 256 and im.height > 256
        assert (255, 230, 0) in {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    rc, _, err = run(capsys, "attention", "--index", out, "--item", item, "-a", "attr1", "--box", "5,5,2,9",
                     "--out", tmp_path / "y.png")
    assert rc == 2 and "--box '5,5,2,9'" in err
    rc, _, err = run(capsys, "attention", "--index", out, "--item", item, "-a", "attr1", "--alpha", "3",
                     "--out", tmp_path / "x.png")
    assert rc == 2 and "alpha" in err
    rc, _, err = run(capsys, "attention", "--index", out, "--item", item, "-a", "attr1", "--out", tmp_path / "h.txt")
    assert rc == 2 and "h.txt: cannot write a picture as '.txt'" in err and not (tmp_path / "h.txt").exists()
    rc, _, err = run(capsys, "attention", "--index", out, "--item", item, "-a", "attr1", "--out", tmp_path / "h.jpg")
    assert rc == 0, err
    with Image.open(tmp_path / "h.jpg") as im:  # the format follows the extension
        assert im.format == "JPEG"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("h.")) == ["h.jpg", "h.png"]  # no temp left
    out_b = tmp_path / "index-b"
    assert run(capsys, "index", "--checkpoint", ck_b, "--images", tmp / "ds", "--split", "test", "--out", out_b,
               "--no-progress")[0] == 0
    rc, stdout, err = run(capsys, "compare", "--index", out, "--index", out_b, "--name", "seed 0", "--name", "seed 1",
                          "--item", item, "-a", "attr0", "--k", "3", "--out", tmp_path / "cmp.png")
    assert rc == 0, err
    assert "comparison of 2 indexes" in stdout
    with Image.open(tmp_path / "cmp.png") as im:
        assert im.height > 2 * 112
    rc, _, err = run(capsys, "compare", "--index", out, "--name", "a", "--name", "b", "--item", item, "-a", "attr0",
                     "--out", tmp_path / "c2.png")
    assert rc == 2 and "--name given 2 times for 1 --index" in err


def test_index_rejects_a_path_that_is_neither_folder_nor_csv(tmp_path, capsys):
    spec_root = make_asen(tmp_path / "ds", n_per_split=(12, 10, 10))
    ck = tiny_checkpoint(tmp_path / "c.pt", open_dataset(spec_root).attributes)
    (tmp_path / "list.txt").write_text("a.png\n")
    rc, _, err = run(capsys, "index", "--checkpoint", ck, "--images", tmp_path / "list.txt", "--out", tmp_path / "o")
    assert rc == 2 and "not a folder or a .csv file" in err
    rc, _, err = run(capsys, "index", "--checkpoint", tmp_path / "none.pt", "--images", spec_root, "--split", "test",
                     "--out", tmp_path / "o")
    assert rc == 2 and "checkpoint not found" in err


def test_a_full_disk_is_one_line_and_the_rerun_counts_what_it_commits(catalog, capsys, tmp_path, monkeypatch):
    """#19.8: disk full while ``agman index --add`` commits: one line naming the file that could
    not be written, exit 1, nothing committed; the rerun finishes and says how many it added."""
    import errno
    import os
    import shutil

    from agman.retrieval.backends.faiss import writer as faiss_writer

    tmp, _spec, ck_a, _, out = catalog
    index = shutil.copytree(out, tmp_path / "index")
    before = (index / "index.json").read_bytes()
    calls = []

    class FullDisk:
        """``os`` as the index writer sees it, on a disk that fills up after items.jsonl."""

        def __getattr__(self, name):
            return getattr(os, name)

        def fsync(self, fd):
            calls.append(fd)
            if len(calls) == 2:  # items.jsonl went through; the first vector file does not
                raise OSError(errno.ENOSPC, "No space left on device")
            os.fsync(fd)

    monkeypatch.setattr(faiss_writer, "os", FullDisk())
    argv = ["index", "--checkpoint", ck_a, "--images", tmp / "ds", "--split", "valid", "--out", index, "--add",
            "--no-progress"]
    rc, stdout, err = run(capsys, *argv)
    assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"could not write {index / 'vectors' / 'attr-00.f32'}: No space left on device" in err
    assert (index / "index.json").read_bytes() == before  # nothing committed
    monkeypatch.setattr(faiss_writer, "os", os)
    rc, stdout, err = run(capsys, *argv)
    assert rc == 0 and ": 30 items; added 10, already indexed 0" in stdout, stdout


def test_a_full_stdout_is_one_line(catalog):
    """#19.8: ``agman search ... --json > /dev/full``: one line saying the output could not be
    written, exit 1, no traceback."""
    import os
    import subprocess
    import sys

    tmp, spec, _, _, out = catalog
    item = spec.split("test").paths[0]
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "agman", "search", "--index", str(out), "--item", item,
                               "-a", "attr0", "--json"], stdout=full, stderr=subprocess.PIPE, text=True,
                              env={**os.environ}, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == "agman: error: could not write the output (stdout): No space left on device", \
        done.stderr
