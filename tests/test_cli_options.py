"""How the CLI reads its options: one `-a NAME[:WEIGHT]` parser everywhere, an option that takes one
value refused when given twice (repeatable ones combine), `--item` by id or path, `attention` with
several attributes, `compare` only within one catalog, a dataset root indexed as the dataset, and
the summary of a resumed `index --add`."""
from __future__ import annotations

import argparse

import pytest
from conftest import make_asen, write_image
from PIL import Image
from test_retrieval_cli import run
from test_retrieval_index import tiny_checkpoint

from agman.cli import _StoreOnce, build_parser
from agman.data.layouts import open_dataset


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("options")
    root = make_asen(tmp / "ds", n_per_split=(12, 10, 20), values=(3, 2))
    spec = open_dataset(root)
    ck = tiny_checkpoint(tmp / "a.pt", spec.attributes)
    from agman.cli import main

    assert main(["index", "--checkpoint", str(ck), "--images", str(root), "--split", "test", "--out",
                 str(tmp / "index"), "--no-progress"]) == 0
    return tmp, spec, ck, tmp / "index"


# --------------------------------------------------------------------------- repeated options
def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_every_single_value_option_of_every_command_refuses_a_second_value():
    single, repeatable = 0, set()
    for name, sub in _subparsers(build_parser()):
        for action in sub._actions:
            if not action.option_strings or action.nargs == 0:
                continue  # positionals, flags
            if isinstance(action, argparse._AppendAction):
                repeatable.add(f"{name} {action.option_strings[0]}")
                assert "repeat" in (action.help or "") or "per --index" in (action.help or ""), (name, action.dest)
            else:
                assert isinstance(action, _StoreOnce), (name, action.option_strings)
                single += 1
    assert single > 50
    assert {"search --attribute", "attention --attribute", "compare --attribute", "compare --index",
            "compare --name"} <= repeatable


@pytest.mark.parametrize("argv, option", [
    (["search", "--k", "3", "--k", "5"], "--k"),
    (["search", "--item", "images/test/0001.png"], "--item"),
    (["attention", "--out", "a.png", "--out", "b.png"], "--out"),
    (["compare", "--out", "a.png", "--k", "2", "--k", "2"], "--k"),  # even the same value twice
])
def test_a_single_value_option_given_twice_is_an_error(catalog, capsys, argv, option):
    _tmp, spec, _, out = catalog
    rc, _, err = run(capsys, *argv[:1], "--index", out, "--item", spec.split("test").paths[0], "-a", "attr0",
                     *argv[1:])
    assert rc == 2 and f"{option} given twice" in err


def test_repeated_attributes_combine_and_a_repeated_name_is_refused(catalog, capsys):
    _tmp, spec, _, out = catalog
    item = spec.split("test").paths[0]
    rc, stdout, err = run(capsys, "search", "--index", out, "--item", item, "-a", "attr0", "-a", "attr1:2", "--k", "2")
    assert rc == 0, err and "attr0:1, attr1:2" in stdout.splitlines()[0]
    rc, _, err = run(capsys, "search", "--index", out, "--item", item, "-a", "attr0", "-a", "attr0:2")
    assert rc == 2 and "attribute 'attr0' is given twice" in err


# --------------------------------------------------------------------------- attention
def test_attention_parses_attributes_like_search_and_draws_one_map_each(catalog, capsys, tmp_path):
    _tmp, spec, _, out = catalog
    item = spec.split("test").paths[1]
    base = ["attention", "--index", out, "--item", item]
    rc, _, err = run(capsys, *base, "-a", "attr0:1", "--view", "model", "--out", tmp_path / "one.png")  # search syntax
    assert rc == 0, err
    with Image.open(tmp_path / "one.png") as im:
        assert im.size == (64, 64)
    rc, stdout, err = run(capsys, *base, "-a", "attr0", "-a", "attr1", "--view", "model", "--out", tmp_path / "two.png")
    assert rc == 0, err and "attention of attr0, attr1" in stdout
    with Image.open(tmp_path / "two.png") as im:
        assert im.width > 2 * 160  # two captioned maps side by side
    # by default each attribute's map beside the original, one under the other
    rc, _, err = run(capsys, *base, "-a", "attr0", "--out", tmp_path / "orig1.png")
    assert rc == 0, err
    rc, _, err = run(capsys, *base, "-a", "attr0", "-a", "attr1", "--out", tmp_path / "orig2.png")
    assert rc == 0, err
    with Image.open(tmp_path / "orig1.png") as one, Image.open(tmp_path / "orig2.png") as two:
        assert one.width > 2 * 256 and two.width == one.width and two.height == 2 * one.height
    rc, _, err = run(capsys, *base, "-a", "attr0:2", "--out", tmp_path / "w.png")
    assert rc == 2 and "an attention map has no weight" in err
    for bad, message in (("colour", "unknown attribute 'colour'"), ("attr0,attr0", "given twice"),
                         ("attr0:heavy", "must be a number")):  # the same errors as search
        assert run(capsys, *base, "-a", bad, "--out", tmp_path / "x.png")[2].count(message) == 1
        assert message in run(capsys, "search", "--index", out, "--item", item, "-a", bad)[2]


def test_item_help_says_whether_a_model_is_loaded(capsys):
    for command, words in (("attention", "checkpoint is loaded"), ("search", "no model needed"),
                           ("compare", "no model needed")):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert words in text and "its id, or its image file's path" in text, command


# --------------------------------------------------------------------------- items by path
def test_item_queries_accept_the_catalog_path(catalog, capsys, monkeypatch):
    tmp, spec, _, out = catalog
    item = spec.split("test").paths[4]
    by_id = run(capsys, "search", "--index", out, "--item", item, "-a", "attr0", "--k", "3")[1]
    by_path = run(capsys, "search", "--index", out, "--item", tmp / "ds" / item, "-a", "attr0", "--k", "3")[1]
    assert by_id == by_path and by_id.startswith(f"query {item}:")
    monkeypatch.chdir(tmp / "ds")
    assert run(capsys, "search", "--index", out, "--item", item, "-a", "attr0", "--k", "3")[1] == by_id
    rc, _, err = run(capsys, "search", "--index", out, "--item", tmp / "elsewhere.png", "-a", "attr0")
    assert rc == 2 and "neither an item id nor the path of an indexed image" in err


# --------------------------------------------------------------------------- compare
def test_compare_refuses_indexes_of_different_catalogs(catalog, capsys, tmp_path):
    tmp, spec, ck, out = catalog
    other = tmp_path / "valid-index"
    assert run(capsys, "index", "--checkpoint", ck, "--images", tmp / "ds", "--split", "valid", "--out", other,
               "--no-progress")[0] == 0
    rc, _, err = run(capsys, "compare", "--index", out, "--index", other, "--item", spec.split("test").paths[0],
                     "-a", "attr0", "--out", tmp_path / "c.png")
    assert rc == 2 and "holds another catalog" in err and "10 vs 20 items" in err
    assert "'images/test/0000.png'" in err and "'images/valid/0000.png'" in err
    assert not (tmp_path / "c.png").exists()
    same = tmp_path / "same-catalog"
    ck_b = tiny_checkpoint(tmp_path / "b.pt", spec.attributes, seed=3)
    assert run(capsys, "index", "--checkpoint", ck_b, "--images", tmp / "ds", "--split", "test", "--out", same,
               "--no-progress")[0] == 0
    rc, stdout, err = run(capsys, "compare", "--index", out, "--index", same, "--item", spec.split("test").paths[0],
                          "-a", "attr0", "--out", tmp_path / "c.png")
    assert rc == 0, err and "comparison of 2 indexes" in stdout


# --------------------------------------------------------------------------- index
def test_a_dataset_root_is_indexed_as_the_dataset_without_its_other_pictures(tmp_path, capsys):
    root = make_asen(tmp_path / "ds", n_per_split=(12, 10, 10), values=(3, 2))
    write_image(root / "contact_sheet.png", seed=99, size=64)
    write_image(root / "docs" / "figure.png", seed=98)
    ck = tiny_checkpoint(tmp_path / "c.pt", open_dataset(root).attributes)
    rc, stdout, err = run(capsys, "index", "--checkpoint", ck, "--images", root, "--out", tmp_path / "idx",
                          "--no-progress")
    assert rc == 0, err
    assert "32 items" in stdout
    assert "left out 2 image file(s) of dataset root" in stdout and "contact_sheet.png, docs/figure.png" in stdout
    from agman.retrieval.search import Retriever

    r = Retriever.open(tmp_path / "idx")
    assert r.row_of_path(root / "contact_sheet.png") is None
    assert r.item("images/train/0001.png").labels == {"attr0": "attr0_v1", "attr1": "attr1_v1"}
    # its image folder alone is a plain folder: every image, no labels
    from agman.retrieval.imagesets import from_directory

    assert len(from_directory(root / "images")) == 32 and from_directory(root / "images").left_out == []
    (root / "meta.json").write_text("{not json")
    rc, _, err = run(capsys, "index", "--checkpoint", ck, "--images", root, "--out", tmp_path / "idx2")
    assert rc == 2 and "dataset root (meta.json) that cannot be opened" in err and "meta.json" in err


def test_a_resumed_add_reports_the_rows_it_added(catalog, capsys, tmp_path):
    tmp, spec, ck, _ = catalog
    out = tmp_path / "grow"
    assert run(capsys, "index", "--checkpoint", ck, "--images", tmp / "ds", "--split", "valid", "--out", out,
               "--no-progress")[0] == 0
    from agman.retrieval.build import build_index
    from agman.retrieval.imagesets import from_split

    def crash(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # --add of the test split, stopped after its first shard
        build_index(out, from_split(spec, "test"), ck, add=True, batch_size=4, shard_size=4, on_shard=crash)
    rc, stdout, err = run(capsys, "index", "--checkpoint", ck, "--images", tmp / "ds", "--split", "test", "--out", out,
                          "--add", "--no-progress", "--batch-size", "4", "--shard-size", "4")
    assert rc == 0, err
    assert "30 items; added 20, already indexed 0, embedded 16 now" in stdout and "resumed with 4 embedded" in stdout
    rc, stdout, _ = run(capsys, "index", "--checkpoint", ck, "--images", tmp / "ds", "--split", "test", "--out", out,
                        "--add", "--no-progress")
    assert "added 0, already indexed 20, embedded 0 now" in stdout
