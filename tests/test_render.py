"""Pictures: top-k grid frames (Fig. 5), attention overlay (Fig. 7), ranking comparison (Fig. 6)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from agman.data.crop import crop_frame
from agman.render import (
    BOX_YELLOW,
    GREEN,
    QUERY_BLUE,
    RED,
    attention_beside_original,
    attention_on_original,
    attention_overlay,
    captioned_strip,
    fit_image,
    heat_colors,
    ranking_comparison,
    result_grid,
)


def _img(color=(128, 128, 128), size=(60, 90)):
    return Image.new("RGB", size, color)


def test_result_grid_frames_green_red_none():
    results = [(_img(), 0.9, True), (_img(), 0.5, False), (_img(), 0.1, None)]
    grid = result_grid(_img(), results, tile_size=100, columns=10)
    assert grid.mode == "RGB"
    # tiles start at gap 6; query at x=6, results at 2*6 + (100+6)*(1+i)
    assert grid.getpixel((6, 6 + 50)) == QUERY_BLUE
    xs = [12 + 106 * (1 + i) for i in range(3)]
    assert grid.getpixel((xs[0], 56)) == GREEN
    assert grid.getpixel((xs[1], 56)) == RED
    assert grid.getpixel((xs[2], 56)) not in (GREEN, RED)
    assert grid.width == 6 + 106 * 4 + 6


def test_result_grid_wraps_and_title_adds_height():
    results = [(_img(), 1.0 - i / 10, None) for i in range(7)]
    plain = result_grid(_img(), results, tile_size=64, columns=3)
    titled = result_grid(_img(), results, title="sleeve_length", tile_size=64, columns=3)
    assert plain.width == 6 + 70 * 4 + 6
    assert titled.height > plain.height
    one_row = result_grid(_img(), results[:3], tile_size=64, columns=3)
    assert plain.height > 2 * one_row.height  # three rows
    with pytest.raises(ValueError, match="columns"):
        result_grid(_img(), results, columns=0)
    with pytest.raises(ValueError, match=r"results\[0\]"):
        result_grid(_img(), [("not an image", 1.0, None)])


def test_result_grid_with_no_results_is_the_query_alone():
    grid = result_grid(_img(), [], tile_size=64)
    assert grid.width < 3 * 70


def test_fit_image_keeps_aspect_ratio():
    tile = fit_image(_img((255, 0, 0), (100, 50)), 40)
    assert tile.size == (40, 40)
    assert tile.getpixel((20, 20)) == (255, 0, 0)
    assert tile.getpixel((20, 2)) == (255, 255, 255)


def test_attention_overlay_puts_heat_where_the_map_is_high():
    image = _img((128, 128, 128), (80, 120))
    att = np.zeros((4, 4), np.float32)
    att[0, 3] = 1.0  # top-right cell
    out = attention_overlay(image, att, alpha=0.6)
    assert out.size == image.size
    hot = np.asarray(out)[:10, -10:].mean(axis=(0, 1))
    cold = np.asarray(out)[-10:, :10].mean(axis=(0, 1))
    assert hot[0] > hot[2]  # red dominates where attention is high
    assert cold[2] > cold[0]  # blue where low
    assert np.array_equal(np.asarray(attention_overlay(image, att, alpha=0.0)), np.asarray(image))


def test_attention_overlay_constant_map_and_bad_input():
    image = _img()
    out = attention_overlay(image, np.full((3, 3), 1 / 9), alpha=0.5)
    assert out.size == image.size
    with pytest.raises(ValueError, match="2-D"):
        attention_overlay(image, np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        attention_overlay(image, np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError, match="alpha"):
        attention_overlay(image, np.zeros((2, 2)), alpha=2)


def test_heat_colors_blue_to_red():
    c = heat_colors(np.array([0.0, 0.5, 1.0]))
    assert c.dtype == np.uint8 and c.shape == (3, 3)
    assert c[0, 2] > c[0, 0] and c[2, 0] > c[2, 2] and c[1, 1] == 255


def test_ranking_comparison_one_row_per_model():
    rows = {
        "agman": [(_img(), 0.9, True)] * 4,
        "csn": [(_img(), 0.4, False)] * 2,
    }
    one = ranking_comparison(_img(), {"agman": rows["agman"]}, tile_size=64)
    two = ranking_comparison(_img(), rows, tile_size=64, title="neckline_design")
    assert two.height > 2 * one.height - 20
    assert two.width == one.width
    with pytest.raises(ValueError):
        ranking_comparison(_img(), {})


def test_captioned_strip_places_every_image_and_checks_captions():
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
    strip = captioned_strip([Image.new("RGB", (64, 64), c) for c in colours], ["a", "b", "c"], tile_size=64)
    titled = captioned_strip([Image.new("RGB", (64, 64), c) for c in colours], ["a", "b", "c"], "title",
                             tile_size=64)
    assert strip.width == titled.width and titled.height > strip.height
    pixels = np.asarray(strip)
    y = 6 + 32  # the middle of the tiles' row
    for k, colour in enumerate(colours):  # each image's colour sits in its own column, left to right
        x = 6 + k * (64 + 6) + 32
        assert tuple(pixels[y, x]) == colour
    with pytest.raises(ValueError, match="one caption per image"):
        captioned_strip([Image.new("RGB", (8, 8))], ["a", "b"])
    with pytest.raises(ValueError, match="at least one image"):
        captioned_strip([], [])


# --------------------------------------------------------------------------- heatmaps on the original image
@pytest.mark.parametrize("size", [(120, 200), (300, 170)])
def test_attention_on_original_puts_each_cell_where_the_crop_saw_it(size):
    """A map with one hot cell: the hottest pixel of the overlay is that cell's centre mapped back
    through the crop (portrait and landscape, crop_ratio < 1); what the crop cut away is dimmed."""
    image = Image.new("RGB", size, (0, 0, 0))
    frame = crop_frame(*size, 64, 0.875)
    att = np.zeros((4, 4))
    att[1, 2] = 1.0
    out = attention_on_original(image, att, 64, 0.875, alpha=1.0)
    assert out.size == size
    # the map's maximum (value 1: jet's dark red) is reached only at the hot cell's centre
    distance = np.abs(np.asarray(out, dtype=np.int64) - heat_colors(np.array(1.0)).astype(np.int64)).sum(-1)
    y, x = np.unravel_index(np.argmin(distance), distance.shape)
    cx0, cy0, cx1, cy1 = frame.to_original((32, 16, 48, 32))  # cell (1, 2) of the 64-px crop
    assert abs(x + 0.5 - (cx0 + cx1) / 2) <= 1.5 and abs(y + 0.5 - (cy0 + cy1) / 2) <= 1.5
    # outside the crop: the dimmed grey, no heat
    x0, y0, x1, y1 = frame.crop_in_original
    corner = np.asarray(out)[0, 0] if x0 > 1 or y0 > 1 else None
    assert corner is not None and corner[0] == corner[1] == corner[2]
    inside = np.asarray(out)[int(y0) + 2, int(x0) + 2]
    assert inside[2] > inside[0]  # low attention: blue


def test_attention_on_original_draws_the_box_and_scales():
    image = Image.new("RGB", (100, 160), (0, 0, 0))
    out = attention_on_original(image, np.ones((4, 4)), 64, 0.875, boxes=[(20, 40, 60, 80)], size=320)
    assert out.size == (200, 320)
    pixels = np.asarray(out)
    assert tuple(pixels[80, 60]) == BOX_YELLOW  # the box's top-left corner, scaled x2
    assert tuple(pixels[100, 100]) != BOX_YELLOW  # inside the box: the map
    with pytest.raises(ValueError, match="2-D"):
        attention_on_original(image, np.ones(4), 64, 1.0)


def test_attention_beside_original_shows_both():
    image = Image.new("RGB", (120, 90), (200, 30, 30))
    pair = attention_beside_original(image, np.eye(3), 48, 1.0, boxes=[(10, 10, 50, 50)], caption="sleeve_length",
                                     title="t", tile_size=128)
    assert pair.width >= 2 * 128 and pair.height > 128
    left = np.asarray(pair)[60:100, 20:100]
    assert (np.abs(left.astype(int) - (200, 30, 30)).sum(-1) < 10).any()  # the untouched original
