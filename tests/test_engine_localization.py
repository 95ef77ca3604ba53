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
    score_maps,
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


def test_a_map_inside_the_box_scores_one_and_a_uniform_map_scores_the_box_share():
    cover = cell_coverage([(0, 0, 32, 48)], (4, 4), 64)  # 6 of 16 cells
    inside = np.zeros((4, 4))
    inside[0, 0], inside[2, 1], inside[1, 1] = 0.5, 0.3, 0.2
    uniform = np.full((4, 4), 1 / 16)
    s = score_maps(np.stack([inside, uniform]), np.stack([cover, cover]))
    assert s["mass_in_box"] == pytest.approx([1.0, 6 / 16])
    assert s["pointing"] == pytest.approx([1.0, 6 / 16])  # uniform: every cell ties for the peak
    assert s["box_share"] == pytest.approx([6 / 16, 6 / 16])
    outside = np.zeros((4, 4))
    outside[3, 3] = 1.0
    s = score_maps(outside[None], cover[None])
    assert s["mass_in_box"][0] == 0 and s["pointing"][0] == 0


def test_pointing_at_a_cell_half_in_the_box_scores_half_and_maps_are_normalised():
    cover = cell_coverage([(8, 0, 16, 16)], (4, 4), 64)
    peak = np.ones((4, 4))
    peak[0, 0] = 9.0  # unnormalised: divided by its sum
    s = score_maps(peak[None], cover[None])
    assert s["pointing"][0] == pytest.approx(0.5)
    assert s["mass_in_box"][0] == pytest.approx(0.5 * 9 / 24)
    with pytest.raises(ValueError, match="non-negative"):
        score_maps(-peak[None], cover[None])


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
    that looks at it scores pointing 1 and mass near 1, and the box share is exactly 2/16."""
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
    assert r.box_share.mean == pytest.approx(2 / 16)
    assert r.pointing.mean == pytest.approx(1.0)
    assert r.mass_in_box.mean > 0.95
    # attr1's box is a strip along the long side's end, which the crop cuts away
    assert result.row("attr1").pairs == 0 and result.row("attr1").outside_crop == 6
    assert result.meets() == {"attr0": True, "attr1": False}


# --------------------------------------------------------------------------- real models on the synthetic set
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("loc") / "s", n_images=120, size=48, seed=3, progress=False)
    return open_dataset(root)


@pytest.mark.parametrize("name", ["agman", "agman-official", "asenet-v2", "attnfashion"])
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
        assert 0 <= r.mass_in_box.mean <= 1 and 0 < r.box_share.mean < 1 and 0 <= r.pointing.mean <= 1
        assert r.mass_in_box.low <= r.mass_in_box.mean <= r.mass_in_box.high
    assert result.overall.pairs == sum(r.pairs for r in result.rows)


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
    assert "mass in box" in text and "pointing" in text and "3x3 map" in text
    for name in [*synth.attribute_names, "all"]:
        assert name in text
    rows = (result.write_csv(tmp_path / "loc.csv")).read_text().splitlines()
    assert rows[0].startswith("attribute,pairs,outside_crop,mass_in_box,mass_in_box_low,mass_in_box_high")
    assert len(rows) == 1 + synth.n_attributes + 1
    data = json.loads(result.write_json(tmp_path / "loc.json").read_text())
    assert data["grid"] == [3, 3] and data["seed"] == 3 and data["attributes"]["pattern"]["pairs"] == 10
    assert data["attributes"]["pattern"]["mass_in_box"]["mean"] == pytest.approx(result.row("pattern").mass_in_box.mean)
    again = localization(model, synth, "test", input_size=48, crop_ratio=1.0, bootstrap=50, seed=3,
                         max_images=10, annotated_only=True)
    assert again.to_dict() == result.to_dict()  # seeded


def test_a_box_outside_the_image_names_its_line(synth, tmp_path):
    src = (synth.root / "regions_test.jsonl").read_text().splitlines()
    record = json.loads(src[2])
    record["regions"]["pattern"] = [0, 0, 500, 20]
    regions = tmp_path / "regions.jsonl"
    regions.write_text("\n".join([*src[:2], json.dumps(record), *src[3:]]) + "\n")
    model = build_model("asenet-v2", synth.n_attributes, backbone="resnet18", attention_dim=16)
    with pytest.raises(DatasetError, match=r"regions.jsonl, line 3: pattern box \[0.0, 0.0, 500.0, 20.0\] reaches "
                                           r"outside the image \(48 x 48 pixels"):
        localization(model, synth, "test", input_size=48, crop_ratio=1.0, regions=regions)


# --------------------------------------------------------------------------- wired into eval / ablate / demo
def _made(model: str, per_attribute: dict[str, tuple[float, float, float]]) -> dict:
    """A LocalizationResult dict with given (mass in box, box share, pointing) per attribute."""
    from agman.engine.localization import AttributeLocalization, Estimate, LocalizationResult

    def row(name, mass, share, pointing):
        return AttributeLocalization(name, 10, 0, Estimate(mass, mass, mass), Estimate(share, share, share),
                                     Estimate(pointing, pointing, pointing))

    rows = [row(a, *v) for a, v in per_attribute.items()]
    overall = row("all", *(float(np.mean([v[i] for v in per_attribute.values()])) for i in range(3)))
    return LocalizationResult(model, "test", True, 64, 1.0, (4, 4), rows, overall).to_dict()


def test_results_read_back_from_json_and_tables_gain_the_columns():
    from agman.engine.localization import LocalizationResult
    from agman.engine.report import LOCALIZATION_COLUMNS, asfr_table

    made = _made("agman", {"pattern": (0.3, 0.1, 0.5), "sleeve_length": (0.2, 0.25, 0.1)})
    back = LocalizationResult.from_dict(json.loads(json.dumps(made)))
    assert back.to_dict() == made and back.meets() == {"pattern": True, "sleeve_length": False}
    na = LocalizationResult("csn", "test", False, 64, 1.0).to_dict()
    results = {"AG-MAN": {"map": 0.5, "localization": made}, "CSN": {"map": 0.4, "localization": na},
               "histogram": {"map": 0.2}}
    header, rows = asfr_table(results, ["pattern"])
    assert header[-3:] == list(LOCALIZATION_COLUMNS)
    assert rows[0][-3:] == pytest.approx([25.0, 17.5, 30.0])  # the 'all' row, in %
    assert rows[1][-3:] == ["n/a"] * 3 and all(np.isnan(v) for v in rows[2][-3:])
    assert asfr_table({"x": {"map": 0.5}}, ["pattern"])[0][-1] == "MAP"  # no scores, no columns


def test_demo_section_says_which_attributes_meet_the_bar():
    from agman.engine.demo import TRAINED, UNTRAINED, WARM_ONLY, localization_section

    rows = {TRAINED: {"localization": _made("t", {"pattern": (0.3, 0.1, 0.25), "waist_detail": (0.05, 0.07, 0.5)})},
            UNTRAINED: {"localization": _made("u", {"pattern": (0.1, 0.1, 0.1), "waist_detail": (0.07, 0.07, 0.07)})},
            WARM_ONLY: {"localization": _made("w", {"pattern": (0.2, 0.1, 0.0), "waist_detail": (0.1, 0.07, 0.0)})}}
    sentence, table = localization_section(rows)
    assert "4x4 map of the 64-px crop" in sentence and "for 1 of 2 attributes (pattern)" in sentence
    assert "it misses waist_detail (mass 0.05, pointing 0.50, box share 0.07)" in sentence
    assert "mass in box is 0.17 trained, 0.09 untrained, 0.15 warm-up only (a uniform map: 0.09)" in sentence
    lines = table.splitlines()
    assert lines[0].startswith("| attribute | pairs | box share | mass in box, trained | mass in box, untrained")
    assert lines[2].startswith("| pattern | 10 | 0.10 | 0.30 | 0.10 | 0.20 | 0.25 | 0.10 | 0.00 | yes")
    assert "| waist_detail |" in lines[3] and lines[3].endswith("| no |") and lines[4].startswith("| all |")
    pointing_too_low = {TRAINED: {"localization": _made("t", {"pattern": (0.3, 0.1, 0.19)})}}
    assert "for 0 of 1 attributes" in localization_section(pointing_too_low)[0]
    assert localization_section({TRAINED: {"map": 0.5}}) == ("", "")
