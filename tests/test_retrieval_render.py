"""Pictures: top-k grid frames (Fig. 5), attention overlay (Fig. 7), ranking comparison (Fig. 6)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from agman.retrieval.render import (
    GREEN,
    QUERY_BLUE,
    RED,
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
