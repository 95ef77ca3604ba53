"""Attention scoring: known answers on hand-made maps, the crop frame on portrait and landscape
images, bootstrap intervals, every model with maps (CSN n/a), and the table / CSV / JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_asen
from PIL import Image

from agman.data.crop import crop_frame
from agman.data.layouts import open_dataset
from agman.data.spec import DatasetError
from agman.data.synthetic import generate
from agman.engine.localization import (
    attention_maps_all,
    bootstrap_means,
    cell_coverage,
    localization,
    region_masks,
    score_maps,
    tolerance,
)
from agman.models.base import AttributeModel
from agman.models.output import ModelOutput
from agman.models.registry import build_model


# --------------------------------------------------------------------------- known answers
def test_coverage_counts_cells_by_their_overlap():
    cover = cell_coverage([(0, 0, 32, 32)], (4, 4), 64)  # exactly the top-left 2x2 cells
    assert cover.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    half = cell_coverage([(8, 0, 16, 16)], (4, 4), 64)  # the right half of cell (0, 0)
    assert half[0, 0] == pytest.approx(0.5) and half.sum() == pytest.approx(0.5)
    # two overlapping boxes count their union once; a box reaching outside the crop is clipped
    union = cell_coverage([(0, 0, 16, 16), (8, 0, 24, 16), (60, 60, 90, 90)], (4, 4), 64)
    assert union[0, 0] == pytest.approx(1.0) and union[0, 1] == pytest.approx(0.5)
    assert union[3, 3] == pytest.approx(16 / 256)
    assert cell_coverage([(0, 0, 64, 64)], (3, 5), 64) == pytest.approx(np.ones((3, 5)))


def _peak_map(size: int, row: int, col: int) -> np.ndarray:
    m = np.zeros((size, size))
    m[row, col] = 1.0
    return m


def _score(maps, boxes, size):
    region, reach = region_masks(boxes, size, tolerance(size))
    n = len(maps)
    return score_maps(np.stack(maps), np.stack([region] * n), np.stack([reach] * n))


def test_a_peak_14_px_from_the_region_is_a_hit_and_16_px_a_miss_at_224():
    box = [(100, 100, 140, 140)]  # region pixels 100..139
    s = _score([_peak_map(224, 120, 100 - 14), _peak_map(224, 120, 100 - 16), _peak_map(224, 120, 139 + 14),
                _peak_map(224, 120, 139 + 16), _peak_map(224, 110, 120)], box, 224)
    assert s["pointing"].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    # diagonally: 10 px left and 10 px above the corner is 14.1 px away (hit); 11 and 11 is 15.6 (miss)
    s = _score([_peak_map(224, 89, 89), _peak_map(224, 90, 90)], box, 224)
    assert s["pointing"].tolist() == [0.0, 1.0]
    assert tolerance(224) == 15


def test_the_tolerance_scales_with_the_input_size():
    assert tolerance(112) == pytest.approx(7.5) and tolerance(448) == pytest.approx(30.0)
    box = [(50, 50, 70, 70)]
    s = _score([_peak_map(112, 60, 50 - 7), _peak_map(112, 60, 50 - 8)], box, 112)
    assert s["pointing"].tolist() == [1.0, 0.0]
    s = _score([_peak_map(448, 60, 50 - 29), _peak_map(448, 60, 50 - 31)], box, 448)
    assert s["pointing"].tolist() == [1.0, 0.0]


def test_a_uniform_map_scores_the_region_share_and_the_random_point_chance():
    parts = [(0, 0, 32, 48), (160, 100, 200, 224)]  # two parts: the region is their union
    share = (32 * 48 + 40 * 124) / 224 ** 2
    for grid in (224, 14, 4):  # at the input size, and coarse maps upsampled to it
        s = _score([np.full((grid, grid), 0.3)], parts, 224)
        assert s["energy"][0] == pytest.approx(share) and s["energy_chance"][0] == pytest.approx(share)
        assert s["pointing"][0] == pytest.approx(s["pointing_chance"][0])  # every pixel ties for the peak
    region, reach = region_masks(parts, 224, tolerance(224))
    assert region.mean() == pytest.approx(share) and region.sum() == 32 * 48 + 40 * 124
    assert reach.mean() > region.mean() and reach[region].all()
    # the chance of a random point: the share of pixels less than 15 px from a pixel of the region
    def dist2(i, j, c0, r0, c1, r1):
        return max(c0 - j, 0, j - c1) ** 2 + max(r0 - i, 0, i - r1) ** 2
    near = sum(1 for i in range(224) for j in range(224)
               if min(dist2(i, j, 0, 0, 31, 47), dist2(i, j, 160, 100, 199, 223)) < 15 ** 2)
    assert reach.sum() == near


def test_energy_counts_the_maps_share_inside_the_region_and_maps_are_checked():
    box = [(0, 0, 112, 224)]  # the left half
    left = np.zeros((224, 224))
    left[:, :112] = 3.0
    left[:, 112:] = 1.0
    s = _score([left], box, 224)
    assert s["energy"][0] == pytest.approx(0.75) and s["energy_chance"][0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="non-negative"):
        _score([-left], box, 224)
    with pytest.raises(ValueError, match="regions, reaches"):
        score_maps(left[None], np.zeros((2, 224, 224), bool), np.zeros((2, 224, 224), bool))


def test_a_region_is_the_union_of_its_parts_rasterised_by_pixel_centres():
    region, _ = region_masks([(10.4, 0, 12.6, 1), (11, 0, 14, 1), (220, 220, 300, 300)], 224, 1.0)
    assert np.flatnonzero(region[0]).tolist() == [10, 11, 12, 13]  # centres 10.5 .. 13.5
    assert region[220:, 220:].all() and region.sum() == 4 + 16


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = {"x": np.random.default_rng(0).random(200), "y": np.full(200, 0.25)}
    a = bootstrap_means(values, 500, np.random.default_rng(1))
    b = bootstrap_means(values, 500, np.random.default_rng(1))
    assert a == b
    assert a["x"].low < a["x"].mean < a["x"].high and a["x"].high - a["x"].low < 0.2
    assert a["y"].low == a["y"].mean == a["y"].high == 0.25


# --------------------------------------------------------------------------- the crop frame, end to end
class BrightCellModel(AttributeModel):
    """A model whose attention is a sharp softmax of each grid cell's brightness (4x4 grid):
    it looks at the white box drawn in the test images, for every attribute."""

    name = "bright-cell"
    DEFAULTS = {"embedding_dim": 4}

    def encode(self, images, with_logits=True):
        return F.adaptive_avg_pool2d(images.mean(dim=1, keepdim=True), (4, 4))[:, 0], None

    def head(self, state, attribute_ids):
        b, k = attribute_ids.shape
        att = (50.0 * state).flatten(1).softmax(-1).view(b, 1, 4, 4).expand(b, k, 4, 4)
        return ModelOutput(embedding=torch.ones(b, k, 4) / 2, attention=att)


@pytest.mark.parametrize("size", [(120, 200), (300, 170)])
def test_boxes_are_mapped_into_the_crop_of_portrait_and_landscape_images(tmp_path, size):
    """A white box covering cells (1, 1) and (1, 2) of the crop, given in original pixels: the model
    that looks at it scores pointing 1 and most of its energy inside, and the area share is exactly 2/16."""
    root = make_asen(tmp_path / "set", n_per_split=(4, 6, 6), values=(2, 2), with_images=False)
    frame = crop_frame(*size, 64, 0.875)
    box = frame.to_original((16, 16, 48, 32))
    for i, path in enumerate((root / "filenames_test.txt").read_text().split()):
        image = Image.new("RGB", size, (20 + 10 * i, 20, 20))
        image.paste((255, 255, 255), tuple(round(v) for v in box))
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / path)
    cut = [0, 0, size[0], 10] if size[1] > size[0] else [0, 0, 10, size[1]]  # a strip the crop cuts away
    lines = [json.dumps({"image": i, "regions": {"attr0": list(box), "attr1": cut}}) for i in range(6)]
    (root / "regions_test.jsonl").write_text("\n".join(lines) + "\n")
    spec = open_dataset(root)
    result = localization(BrightCellModel(2), spec, "test", input_size=64, crop_ratio=0.875, bootstrap=100)
    r = result.row("attr0")
    assert r.pairs == 6 and result.grid == (4, 4)
    assert r.energy_chance.mean == pytest.approx(2 / 16, abs=1e-9)
    assert r.pointing.mean == pytest.approx(1.0)
    assert r.energy.mean > 0.5 and r.pointing_chance.mean < 0.5
    # attr1's box is a strip along the long side's end, which the crop cuts away
    assert result.row("attr1").pairs == 0 and result.row("attr1").outside_crop == 6
    assert result.meets() == {"attr0": True, "attr1": False}


# --------------------------------------------------------------------------- real models on the synthetic set
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("loc") / "s", n_images=120, size=48, seed=3, progress=False)
    return open_dataset(root)


@pytest.mark.parametrize("name", ["agman", "agman-official", "asenet-v2", "attnfashion", "cca"])
def test_every_model_with_maps_is_scored(synth, name):
    torch.manual_seed(0)
    model = build_model(name, synth.n_attributes, backbone="resnet18", embedding_dim=16, attention_dim=16).eval()
    images = torch.randn(3, 3, 48, 48)
    maps = attention_maps_all(model, images)
    assert maps.shape[:2] == (3, synth.n_attributes)
    for a in range(synth.n_attributes):  # equal to the interface's own per-pair maps
        assert torch.allclose(maps[:, a], model.attention_map(images, torch.full((3,), a)).float(), atol=1e-6)
    result = localization(model, synth, "test", input_size=48, crop_ratio=1.0, bootstrap=50)
    assert result.available and result.grid == (3, 3)
    assert [r.attribute for r in result.rows] == synth.attribute_names
    assert all(r.pairs == len(synth.split("test")) for r in result.rows)
    for r in result.rows:
        assert 0 <= r.energy.mean <= 1 and 0 < r.energy_chance.mean < r.pointing_chance.mean <= 1
        assert 0 <= r.pointing.mean <= 1
        assert r.energy.low <= r.energy.mean <= r.energy.high
    assert result.overall.pairs == sum(r.pairs for r in result.rows)
    # 'all' is the mean over attributes (accuracy per attribute, then averaged)
    assert result.overall.pointing.mean == pytest.approx(np.mean([r.pointing.mean for r in result.rows]))


def test_csn_has_no_maps_and_scores_na(synth, tmp_path):
    model = build_model("csn", synth.n_attributes, backbone="resnet18", embedding_dim=16)
    result = localization(model, synth, "test", input_size=48, crop_ratio=1.0)
    assert not result.available and result.rows == []
    assert "n/a" in result.table()
    result.write_csv(tmp_path / "loc.csv")
    assert "n/a" in (tmp_path / "loc.csv").read_text()
    assert json.loads(result.write_json(tmp_path / "loc.json").read_text())["available"] is False


def test_table_csv_and_json(synth, tmp_path):
    torch.manual_seed(0)
    model = build_model("agman", synth.n_attributes, backbone="resnet18", embedding_dim=16, attention_dim=16)
    result = localization(model, synth, "test", input_size=48, crop_ratio=1.0, bootstrap=50, seed=3,
                          max_images=10, annotated_only=True)
    text = result.table()
    assert "energy" in text and "pointing game (tolerance 3.2 px)" in text and "3x3 map" in text
    for name in [*synth.attribute_names, "all"]:
        assert name in text
    rows = (result.write_csv(tmp_path / "loc.csv")).read_text().splitlines()
    assert rows[0].startswith("attribute,pairs,outside_crop,pointing,pointing_low,pointing_high,pointing_chance")
    assert len(rows) == 1 + synth.n_attributes + 1
    data = json.loads(result.write_json(tmp_path / "loc.json").read_text())
    assert data["grid"] == [3, 3] and data["seed"] == 3 and data["attributes"]["pattern"]["pairs"] == 10
    assert data["attributes"]["pattern"]["energy"]["mean"] == pytest.approx(result.row("pattern").energy.mean)
    assert data["tolerance_px"] == pytest.approx(15 * 48 / 224)
    again = localization(model, synth, "test", input_size=48, crop_ratio=1.0, bootstrap=50, seed=3,
                         max_images=10, annotated_only=True)
    assert again.to_dict() == result.to_dict()  # seeded


def test_a_box_outside_the_image_names_its_line(synth, tmp_path):
    src = (synth.root / "regions_test.jsonl").read_text().splitlines()
    record = json.loads(src[2])
    record["parts"]["pattern"] = [[0, 0, 500, 20]]  # scored against the parts by default
    regions = tmp_path / "regions.jsonl"
    regions.write_text("\n".join([*src[:2], json.dumps(record), *src[3:]]) + "\n")
    model = build_model("asenet-v2", synth.n_attributes, backbone="resnet18", attention_dim=16)
    with pytest.raises(DatasetError, match=r"regions.jsonl, line 3: pattern box \[0.0, 0.0, 500.0, 20.0\] reaches "
                                           r"outside the image \(48 x 48 pixels"):
        localization(model, synth, "test", input_size=48, crop_ratio=1.0, regions=regions)


# --------------------------------------------------------------------------- wired into eval / ablate / demo
def _made(model: str, per_attribute: dict[str, tuple[float, float, float, float]]) -> dict:
    """A LocalizationResult dict with given (pointing, pointing chance, energy, energy chance) per attribute."""
    from agman.engine.localization import AttributeLocalization, Estimate, LocalizationResult

    def row(name, *values):
        return AttributeLocalization(name, 10, 0, *(Estimate(v, v, v) for v in values))

    rows = [row(a, *v) for a, v in per_attribute.items()]
    overall = row("all", *(float(np.mean([v[i] for v in per_attribute.values()])) for i in range(4)))
    return LocalizationResult(model, "test", True, 64, 1.0, (4, 4), rows, overall).to_dict()


def test_results_read_back_from_json_and_tables_gain_the_columns():
    from agman.engine.localization import LocalizationResult
    from agman.engine.report import LOCALIZATION_COLUMNS, asfr_table

    made = _made("agman", {"pattern": (0.6, 0.3, 0.3, 0.1), "sleeve_length": (0.2, 0.4, 0.2, 0.25)})
    back = LocalizationResult.from_dict(json.loads(json.dumps(made)))
    assert back.to_dict() == made and back.meets() == {"pattern": True, "sleeve_length": False}
    na = LocalizationResult("csn", "test", False, 64, 1.0).to_dict()
    old = {"available": True, "all": {"mass_in_box": {"mean": 0.2}}}  # written before these measures
    results = {"AG-MAN": {"map": 0.5, "localization": made}, "CSN": {"map": 0.4, "localization": na},
               "histogram": {"map": 0.2}, "old": {"map": 0.1, "localization": old}}
    header, rows = asfr_table(results, ["pattern"])
    assert header[-4:] == list(LOCALIZATION_COLUMNS) == ["pointing", "pointing chance", "energy", "energy chance"]
    assert rows[0][-4:] == pytest.approx([40.0, 35.0, 25.0, 17.5])  # the 'all' row, in %
    assert rows[1][-4:] == ["n/a"] * 4 and all(np.isnan(v) for v in rows[2][-4:]) and rows[3][-4:] == ["n/a"] * 4
    assert asfr_table({"x": {"map": 0.5}}, ["pattern"])[0][-1] == "MAP"  # no scores, no columns


def test_demo_section_says_which_attributes_meet_the_bar():
    from agman.engine.demo import TRAINED, UNTRAINED, WARM_ONLY, localization_section

    rows = {TRAINED: {"localization": _made("t", {"pattern": (0.6, 0.3, 0.3, 0.1),
                                                  "waist_detail": (0.5, 0.4, 0.05, 0.07)})},
            UNTRAINED: {"localization": _made("u", {"pattern": (0.3, 0.3, 0.1, 0.1),
                                                    "waist_detail": (0.4, 0.4, 0.07, 0.07)})},
            WARM_ONLY: {"localization": _made("w", {"pattern": (0.0, 0.3, 0.2, 0.1),
                                                    "waist_detail": (0.0, 0.4, 0.1, 0.07)})}}
    sentence, table = localization_section(rows)
    assert "tolerance 4.3 px on the 64-px crop" in sentence and "4x4 map" in sentence
    assert "above chance on both for 1 of 2 attributes (pattern)" in sentence
    assert "not for waist_detail (pointing 0.50, chance 0.40; energy 0.05, chance 0.07)" in sentence
    assert ("pointing accuracy is 0.55 trained, 0.35 untrained, 0.00 warm-up only (a random point: 0.35) and the "
            "energy share 0.17 trained, 0.09 untrained, 0.15 warm-up only (a uniform map: 0.09)") in sentence
    lines = table.splitlines()
    assert lines[0].startswith("| attribute | pairs | pointing, trained | pointing, untrained | pointing, warm-up "
                               "only | pointing chance | energy, trained")
    assert lines[2].startswith("| pattern | 10 | 0.60 | 0.30 | 0.00 | 0.30 | 0.30 | 0.10 | 0.20 | 0.10 | yes")
    assert "| waist_detail |" in lines[3] and lines[3].endswith("| no |") and lines[4].startswith("| all |")
    at_chance = {TRAINED: {"localization": _made("t", {"pattern": (0.3, 0.3, 0.3, 0.1)})}}
    assert "for 0 of 1 attributes" in localization_section(at_chance)[0]
    assert localization_section({TRAINED: {"map": 0.5}}) == ("", "")
