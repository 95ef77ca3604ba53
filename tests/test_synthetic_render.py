"""The garment renderer: pure, attributes confined to their regions, boxes inside the image and the figure."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from agman.data.synthetic_render import (
    ATTRIBUTES,
    SHAPE_ATTRIBUTES,
    GarmentParams,
    render,
    sample_params,
)

SIZE = 64
NAMES = [a.name for a in ATTRIBUTES]


def _params(i: int, occluder: bool = False) -> GarmentParams:
    values = [int(v) for v in np.random.default_rng([11, i]).integers(0, 4, len(ATTRIBUTES))]
    params = sample_params(np.random.default_rng([5, i]), values)
    return params if occluder else replace(params, occluder=None)


def _pixels(rendering) -> np.ndarray:
    return np.asarray(rendering.image, dtype=np.int64)


def test_render_is_pure_and_sized():
    params = _params(0, occluder=True)
    a, b = render(params, SIZE), render(params, SIZE)
    assert a.image.size == (SIZE, SIZE) and a.image.mode == "RGB"
    assert a.image.tobytes() == b.image.tobytes()
    assert a.regions == b.regions
    assert render(params, 96).image.size == (96, 96)


def test_nuisance_draws_do_not_depend_on_the_values():
    a = sample_params(np.random.default_rng(3), (0, 0, 0, 0, 0))
    b = sample_params(np.random.default_rng(3), (3, 2, 1, 0, 3))
    assert replace(a, values=b.values) == b


def test_sample_params_rejects_bad_values():
    with pytest.raises(ValueError, match="out of range"):
        sample_params(np.random.default_rng(0), (0, 0, 4, 0, 0))
    with pytest.raises(ValueError, match="expected 5"):
        sample_params(np.random.default_rng(0), (0, 0))


@pytest.mark.parametrize("i", range(60))
def test_region_boxes_inside_image_and_figure(i):
    r = render(_params(i), SIZE, masks=True)
    ys, xs = np.nonzero(r.figure_mask)
    fx0, fy0, fx1, fy1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    for name in NAMES:
        for x0, y0, x1, y1 in [r.regions[name], *r.parts[name]]:
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE, (name, r.regions[name])
            # inside the drawn figure (garment + mannequin), one pixel of antialiasing allowed
            assert x0 >= fx0 - 1 and y0 >= fy0 - 1 and x1 <= fx1 + 1 and y1 <= fy1 + 1, name
            box_figure = r.figure_mask[y0:y1, x0:x1].mean()
            assert box_figure >= 0.4, (name, box_figure)
        x0, y0, x1, y1 = r.regions[name]
        assert r.garment_mask[y0:y1, x0:x1].any(), f"{name} box misses the garment"
    x0, y0, x1, y1 = r.regions["pattern"]
    assert r.garment_mask[y0:y1, x0:x1].mean() >= 0.6  # the texture box is mostly cloth


def test_hem_box_straddles_the_hem():
    for i in range(40):
        r = render(_params(i), SIZE, masks=True)
        x0, y0, x1, y1 = r.regions["garment_length"]
        band = r.garment_mask[y0:y1, x0:x1]
        half = (y1 - y0) // 2
        assert band[:half].mean() > band[half + 1 :].mean() + 0.3


def _grow(box, by=1):
    x0, y0, x1, y1 = box
    return max(0, x0 - by), max(0, y0 - by), x1 + by, y1 + by


@pytest.mark.parametrize("attribute", SHAPE_ATTRIBUTES)
def test_changing_a_shape_attribute_changes_only_its_region(attribute):
    """Pixels that change with the value lie in the attribute's boxes (before and after)."""
    a = NAMES.index(attribute)
    for i in range(30):
        params = _params(i)
        before = render(params, SIZE)
        values = list(params.values)
        values[a] = (values[a] + 1 + i % 3) % ATTRIBUTES[a].n_values
        after = render(replace(params, values=tuple(values)), SIZE)
        changed = np.abs(_pixels(before) - _pixels(after)).sum(-1) > 30  # not sub-pixel edge noise
        assert changed.sum() >= 15, "the value must be visible"
        allowed = np.zeros_like(changed)
        if attribute == "garment_length":  # the cloth between the two hems
            b1, b2 = before.regions[attribute], after.regions[attribute]
            boxes = [(min(b1[0], b2[0]), min(b1[1], b2[1]), max(b1[2], b2[2]), max(b1[3], b2[3]))]
        else:
            boxes = before.parts[attribute] + after.parts[attribute]
        for box in boxes:
            x0, y0, x1, y1 = _grow(box)
            allowed[y0:y1, x0:x1] = True
        assert not (changed & ~allowed).any(), f"image {i}: {attribute} changed pixels outside its region"


def test_changing_the_pattern_changes_only_the_cloth():
    p = NAMES.index("pattern")
    for i in range(20):
        params = _params(i)
        before = render(params, SIZE, masks=True)
        values = list(params.values)
        values[p] = (values[p] + 1 + i % 3) % 4
        after = render(replace(params, values=tuple(values)), SIZE)
        changed = np.abs(_pixels(before) - _pixels(after)).sum(-1) > 30
        cloth = before.garment_mask.copy()
        for axis in (0, 1):  # one pixel of antialiasing around the cloth
            cloth |= np.roll(cloth, 1, axis) | np.roll(cloth, -1, axis)
        assert changed.sum() >= 15
        assert not (changed & ~cloth).any()


def test_supersampling_off_is_aliased_but_same_layout():
    params = _params(3)
    smooth, hard = render(params, SIZE), render(params, SIZE, supersample=1)
    assert smooth.regions == hard.regions
    # antialiasing creates in-between colours: more distinct colours with supersampling
    def colours(r) -> int:
        return len(np.unique(_pixels(r).reshape(-1, 3), axis=0))

    assert colours(smooth) > colours(hard)
