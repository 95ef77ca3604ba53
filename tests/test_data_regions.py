"""The crop frame (where the model's input lies in the original image) and the regions file reader."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from agman.data.crop import crop_frame
from agman.data.regions import read_regions_file
from agman.data.spec import DatasetError, Split
from agman.data.transforms import model_view
from agman.errors import NotFoundError


# --------------------------------------------------------------------------- crop frame
@pytest.mark.parametrize("size,input_size,crop_ratio", [
    ((120, 200), 64, 0.875),  # portrait
    ((300, 170), 64, 0.875),  # landscape
    ((257, 96), 48, 0.7),
    ((96, 96), 64, 1.0),
])
def test_crop_frame_matches_torchvision_resize_and_centre_crop(size, input_size, crop_ratio):
    """A marker box drawn on the original lands where crop_frame says, in torchvision's own view."""
    w, h = size
    frame = crop_frame(w, h, input_size, crop_ratio)
    image = Image.new("RGB", size, (0, 0, 0))
    view = model_view(image, input_size, crop_ratio)
    assert view.size == (input_size, input_size)
    # the resized size is torchvision's (its Resize gives the same image size)
    from torchvision import transforms as T
    assert T.Resize(int(round(input_size / crop_ratio)))(image).size == frame.resized
    # a white box well inside the crop: its crop coordinates match the white pixels of the view
    cx0, cy0, cx1, cy1 = frame.crop_in_original
    box = (round(cx0 + 0.3 * (cx1 - cx0)), round(cy0 + 0.2 * (cy1 - cy0)),
           round(cx0 + 0.6 * (cx1 - cx0)), round(cy0 + 0.7 * (cy1 - cy0)))
    image.paste((255, 255, 255), box)
    seen = np.asarray(model_view(image, input_size, crop_ratio).convert("L")) > 127
    ys, xs = np.nonzero(seen)
    x0, y0, x1, y1 = frame.to_crop(box)
    assert abs(xs.min() - x0) <= 1 and abs(xs.max() + 1 - x1) <= 1
    assert abs(ys.min() - y0) <= 1 and abs(ys.max() + 1 - y1) <= 1
    # the round trip is exact
    assert np.allclose(frame.to_original(frame.to_crop(box)), box)


def test_crop_cuts_the_long_side_and_the_rim():
    frame = crop_frame(100, 200, 64, 0.8)  # portrait: short side 80 px, crop 64 px
    assert frame.resized == (80, 160) and (frame.left, frame.top) == (8, 48)
    x0, y0, x1, y1 = frame.crop_in_original
    assert (x0, x1) == pytest.approx((10, 90)) and (y0, y1) == pytest.approx((60, 140))
    assert frame.visible((0, 0, 100, 50)) is None  # the top of the image is cut away
    assert frame.visible((0, 130, 100, 200)) == pytest.approx((0, 56, 64, 64))


# --------------------------------------------------------------------------- regions files
def _split(n=3) -> Split:
    return Split("test", [f"images/{i}.png" for i in range(n)], np.zeros((n, 2), dtype=np.int32))


def _write(tmp_path, lines) -> str:
    path = tmp_path / "regions_test.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_reads_boxes_lists_of_boxes_and_parts(tmp_path):
    path = _write(tmp_path, [
        {"image": 0, "path": "images/0.png", "regions": {"a": [1, 2, 10, 20], "b": None}},
        "",
        {"image": 2, "regions": {"a": [[0, 0, 4, 4], [5.5, 5, 9, 9]], "b": [1, 1, 3, 3]},
         "parts": {"b": [[1, 1, 2, 3], [2, 1, 3, 3]]}, "values": {"a": "x"}},
    ])
    regions = read_regions_file(path, _split(), ["a", "b"])
    assert sorted(regions) == [0, 2]
    assert regions[0].boxes == {"a": [(1, 2, 10, 20)]}
    assert regions[2].boxes["a"] == [(0, 0, 4, 4), (5.5, 5, 9, 9)]
    assert regions[2].boxes["b"] == [(1, 1, 3, 3)]
    parts = read_regions_file(path, _split(), ["a", "b"], use="parts")
    assert parts[2].boxes["b"] == [(1, 1, 2, 3), (2, 1, 3, 3)] and parts[0].boxes["a"] == [(1, 2, 10, 20)]
    assert regions[2].source.endswith("regions_test.jsonl, line 3")


@pytest.mark.parametrize("line,message", [
    ("{not json", r"line 2: invalid JSON"),
    ('[1, 2]', r"line 2: expected a JSON object"),
    ('{"image": -1, "regions": {}}', r"line 2: 'image' must be a non-negative integer"),
    ('{"image": "0", "regions": {}}', r"line 2: 'image' must be"),
    ('{"image": 7, "regions": {}}', r"line 2: image 7 is past the split 'test' \(3 images\)"),
    ('{"image": 1, "path": "images/9.png", "regions": {}}', r"line 2: image 1 is 'images/1.png'.*'images/9.png'"),
    ('{"image": 0, "regions": {}}', r"line 2: image 0 appears twice \(first at .*line 1\)"),
    ('{"image": 1}', r"line 2: 'regions' must be an object"),
    ('{"image": 1, "regions": {"colour": [0, 0, 1, 1]}}',
     r"line 2: regions: unknown attribute 'colour' \(the dataset has: a, b\)"),
    ('{"image": 1, "regions": {"a": [0, 0, 1]}}',
     r"line 2: regions\['a'\]: expected a box \[x0, y0, x1, y1\] of four numbers, got \[0, 0, 1\]"),
    ('{"image": 1, "regions": {"a": [5, 0, 2, 4]}}',
     r"line 2: regions\['a'\]: box \[5, 0, 2, 4\] must have 0 <= x0 < x1"),
    ('{"image": 1, "regions": {"a": [[0, 0, 1, 1], [0, 0, "x", 1]]}}', r"line 2: regions\['a'\]\[1\]: expected a box"),
    ('{"image": 1, "regions": {"a": [0, 0, 1, 1]}, "parts": {"a": [true, 0, 1, 1]}}',
     r"line 2: parts\['a'\]: expected a box"),
])
def test_bad_lines_name_the_file_line_and_value(tmp_path, line, message):
    path = _write(tmp_path, [{"image": 0, "regions": {"a": [0, 0, 1, 1]}}, line])
    with pytest.raises(DatasetError, match=message) as info:
        read_regions_file(path, _split(), ["a", "b"], use="parts")
    assert str(path) in str(info.value)


def test_missing_file_and_bad_use(tmp_path):
    with pytest.raises(NotFoundError, match="regions file not found"):
        read_regions_file(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="use must be one of"):
        read_regions_file(tmp_path / "nope.jsonl", use="masks")
