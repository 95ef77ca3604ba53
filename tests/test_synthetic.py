"""The generated synthetic set: determinism, layouts, balance, regions, triplets, and colour as a nuisance."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agman.data.check import check_dataset
from agman.data.layouts import open_dataset
from agman.data.spec import UNLABELED
from agman.data.synthetic import (
    PlannedImage,
    generate,
    image_params,
    minimum_images,
    plan_dataset,
    split_sizes,
)
from agman.data.synthetic_lists import read_regions
from agman.data.synthetic_render import ATTRIBUTES, SHAPE_ATTRIBUTES

SMALL = {"n_images": 200, "size": 64, "seed": 7, "progress": False}


def tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "all", **SMALL)


@pytest.fixture(scope="module")
def single_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "single"
    return generate(root, n_images=450, size=48, seed=1, mode="single", progress=False)


# --------------------------------------------------------------------------- determinism
def test_same_arguments_give_identical_bytes(small_set, tmp_path):
    again = generate(tmp_path / "again", **SMALL, workers=2)  # another process layout, same bytes
    assert tree_hash(again) == tree_hash(small_set)


def test_seed_changes_the_images(small_set, tmp_path):
    other = generate(tmp_path / "other", **{**SMALL, "seed": 8})
    a = (small_set / "images/train/000000.png").read_bytes()
    b = (other / "images/train/000000.png").read_bytes()
    assert a != b


def test_images_do_not_depend_on_render_order(small_set):
    plan = plan_dataset(200, 7)
    from agman.data.synthetic_render import render

    item = plan[123]
    expected = render(image_params(7, item), 64).image
    with Image.open(small_set / item.path) as im:
        assert np.array_equal(np.asarray(im), np.asarray(expected))


def test_regenerating_into_a_previous_set_replaces_it(small_set, tmp_path):
    out = generate(tmp_path / "re", n_images=100, size=48, seed=0, progress=False)
    before = tree_hash(out)
    stamp = (out / "synth.json").stat().st_mtime_ns
    generate(out, n_images=100, size=48, seed=0, progress=False, reuse=True)
    assert (out / "synth.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    generate(out, n_images=120, size=48, seed=0, progress=False)
    assert len(list((out / "images" / "train").iterdir())) == split_sizes(120)["train"]
    assert tree_hash(out) != before


def test_refuses_a_folder_that_is_not_a_synthetic_set(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        generate(tmp_path, **SMALL)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        generate(tmp_path / "a", **SMALL, mode="some")
    with pytest.raises(ValueError, match="too few"):
        generate(tmp_path / "b", n_images=50, size=64, progress=False)
    with pytest.raises(ValueError, match="at least 398"):
        generate(tmp_path / "c", n_images=300, size=64, mode="single", progress=False)
    with pytest.raises(ValueError, match="size"):
        generate(tmp_path / "d", n_images=200, size=16, progress=False)
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- layouts and balance
def test_asen_layout_reads_back_with_8_1_1_split_and_1_to_4_queries(small_set):
    spec = open_dataset(small_set)
    assert spec.attribute_names == [a.name for a in ATTRIBUTES]
    assert [a.values for a in spec.attributes] == [a.values for a in ATTRIBUTES]
    assert {k: len(s) for k, s in spec.splits.items()} == {"train": 160, "valid": 20, "test": 20}
    for name in ("valid", "test"):
        split = spec.splits[name]
        query_images = set(split.queries[:, 0].tolist())
        candidate_images = set(split.candidates[:, 0].tolist())
        assert not query_images & candidate_images
        assert len(query_images) * 4 == len(candidate_images)
        # mode 'all': one row per image-attribute pair
        assert len(split.queries) == len(query_images) * len(ATTRIBUTES)
    assert (spec.splits["train"].labels != UNLABELED).all()


@pytest.mark.parametrize("fixture", ["small_set", "single_set"])
def test_every_value_has_two_images_in_every_split(fixture, request):
    spec = open_dataset(request.getfixturevalue(fixture))
    for name, split in spec.splits.items():
        for a, attr in enumerate(spec.attributes):
            counts = np.bincount(split.labels[:, a][split.labels[:, a] != UNLABELED], minlength=attr.n_values)
            assert counts.min() >= 2, (name, attr.name, counts)
            assert counts.max() - counts.min() <= 1, "values are balanced within a split"


def test_single_mode_annotates_one_attribute_per_image(single_set):
    spec = open_dataset(single_set)
    for split in spec.splits.values():
        assert ((split.labels != UNLABELED).sum(axis=1) == 1).all()
    test = spec.splits["test"]
    for a in range(spec.n_attributes):
        q = (test.queries[:, 1] == a).sum()
        c = (test.candidates[:, 1] == a).sum()
        assert q >= 1 and 3 <= c / q <= 5


@pytest.mark.parametrize("fixture", ["small_set", "single_set"])
def test_data_check_passes(fixture, request):
    root = request.getfixturevalue(fixture)
    for folder in (root, root / "triplets"):
        report = check_dataset(open_dataset(folder), check_images=True)
        assert report.ok, report.problems
        assert report.images_checked > 0


def test_triplet_layout(small_set):
    spec = open_dataset(small_set / "triplets")
    asen = open_dataset(small_set)
    assert spec.attribute_names == asen.attribute_names
    plan = plan_dataset(200, 7)
    truth = np.array([p.values for p in plan])
    paths = json.loads((small_set / "triplets" / "filenames.json").read_text())
    assert paths == [p.path for p in plan]
    assert (spec.root / paths[0]).is_file()
    for csn_split, counts_key in (("train", "train"), ("valid", "valid"), ("test", "test")):
        split = spec.splits[csn_split]
        in_split = {p.number for p in plan if p.split == counts_key}
        for a, rows in split.triplets.items():
            assert len(rows) == 5 * split_sizes(200)[counts_key]
            anchor, far, close = rows.T
            assert set(rows.ravel().tolist()) <= in_split
            assert (truth[anchor, a] == truth[close, a]).all()
            assert (truth[anchor, a] != truth[far, a]).all()
            assert (anchor != close).all()


def test_triplet_counts_are_configurable(tmp_path):
    out = generate(tmp_path / "t", n_images=100, size=32, seed=0, progress=False, triplets=(7, 3, 0))
    spec = open_dataset(out / "triplets")
    assert {len(t) for t in spec.splits["train"].triplets.values()} == {7}
    assert {len(t) for t in spec.splits["valid"].triplets.values()} == {3}


def test_regions_file(small_set):
    spec = open_dataset(small_set)
    for name, split in spec.splits.items():
        boxes = read_regions(small_set, name)
        assert boxes.shape == (len(split), len(ATTRIBUTES), 4)
        assert (boxes[..., 0] < boxes[..., 2]).all() and (boxes[..., 1] < boxes[..., 3]).all()
        assert boxes.min() >= 0 and boxes.max() <= 64
        records = [json.loads(line) for line in (small_set / f"regions_{name}.jsonl").read_text().splitlines()]
        assert [r["path"] for r in records] == split.paths
        for i, rec in enumerate(records[:20]):
            for a, attr in enumerate(ATTRIBUTES):
                assert attr.values.index(rec["values"][attr.name]) == split.labels[i, a]
        parts = read_regions(small_set, name, parts=True)
        assert all(len(p["sleeve_length"]) == 2 for p in parts)


def test_minimum_images_is_tight():
    for mode in ("all", "single"):
        n = minimum_images(mode)
        plan_dataset(n, 0, mode)
        with pytest.raises(ValueError):
            plan_dataset(n - 1, 0, mode)


def test_plan_keeps_a_candidate_for_every_query_value():
    plan = plan_dataset(minimum_images("all"), 3)
    for split in ("valid", "test"):
        items = [p for p in plan if p.split == split]
        for a in range(len(ATTRIBUTES)):
            query_values = {p.values[a] for p in items if p.is_query}
            candidate_values = {p.values[a] for p in items if not p.is_query}
            assert query_values <= candidate_values
    assert isinstance(plan[0], PlannedImage) and plan[0].path == "images/train/000000.png"


# --------------------------------------------------------------------------- colour is a nuisance
def colour_histograms(paths: list[Path]) -> np.ndarray:
    """8x8x8 RGB histograms, L1-normalised."""
    out = []
    for path in paths:
        with Image.open(path) as im:
            q = np.asarray(im.convert("RGB")) // 32
        bins = (q[..., 0].astype(np.int64) * 64 + q[..., 1] * 8 + q[..., 2]).ravel()
        out.append(np.bincount(bins, minlength=512) / bins.size)
    return np.array(out)


def average_precision(relevant: np.ndarray) -> float:
    """Mean of the precision at each relevant rank; 0 without a relevant item."""
    hits = np.flatnonzero(relevant)
    if not len(hits):
        return 0.0
    return float(np.mean(np.arange(1, len(hits) + 1) / (hits + 1)))


def histogram_map(hists, labels, queries, candidates, rng, n_random=20) -> tuple[float, float]:
    """MAP of ranking candidates by histogram intersection with each query, and of random rankings."""
    ranked, random = [], []
    for q in queries:
        similarity = np.minimum(hists[q], hists[candidates]).sum(axis=1)
        relevant = labels[candidates] == labels[q]
        ranked.append(average_precision(relevant[np.argsort(-similarity, kind="stable")]))
        random.append(np.mean([average_precision(relevant[rng.permutation(len(candidates))]) for _ in range(n_random)]))
    return float(np.mean(ranked)), float(np.mean(random))


@pytest.fixture(scope="module")
def colour_study(tmp_path_factory):
    """1000 images: every fifth is a query against the other 800."""
    root = generate(tmp_path_factory.mktemp("synth") / "colour", n_images=1000, size=48, seed=5, progress=False)
    spec = open_dataset(root)
    paths, labels, plan = [], [], plan_dataset(1000, 5)
    for split in spec.splits.values():
        paths += [spec.root / p for p in split.paths]
        labels.append(split.labels)
    hists = colour_histograms(paths)
    index = np.arange(len(paths))
    return hists, np.concatenate(labels), index[::5], np.setdiff1d(index, index[::5]), plan


@pytest.mark.parametrize("attribute", [a.name for a in ATTRIBUTES])
def test_colour_histograms_do_not_solve_attributes(attribute, colour_study):
    hists, labels, queries, candidates, _ = colour_study
    a = [x.name for x in ATTRIBUTES].index(attribute)
    ranked, random = histogram_map(hists, labels[:, a], queries, candidates, np.random.default_rng(0))
    if attribute in SHAPE_ATTRIBUTES:
        assert abs(ranked - random) <= 0.05, (attribute, ranked, random)
    else:  # texture: not required by the issue, but it holds here too (the accent colour is random)
        assert ranked - random <= 0.05, (attribute, ranked, random)


def test_colour_histogram_ranking_does_find_colour(colour_study):
    """Control: the same ranking does recover a colour label, so the test above has power.

    The label is the background colour's octant of the RGB cube (8 classes); the background covers
    most pixels, so histograms that match it rank the same octant first."""
    hists, _, queries, candidates, plan = colour_study
    background = np.array([image_params(5, p).background for p in plan])
    octant = (background // 128) @ np.array([4, 2, 1])
    ranked, random = histogram_map(hists, octant, queries, candidates, np.random.default_rng(0))
    assert ranked > random + 0.06, (ranked, random)
