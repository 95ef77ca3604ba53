"""The dataset card: README.md counts match the files; the contact sheet shows every value of every attribute."""
from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from agman.data.layouts import open_dataset
from agman.data.synthetic import DATASET_NAME, generate
from agman.data.synthetic_card import EXAMPLES_PER_VALUE, card_text, contact_sheet
from agman.data.synthetic_render import ATTRIBUTES


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("card") / "set", n_images=150, size=48, seed=2, progress=False)
    return root, open_dataset(root)


def test_readme_states_command_and_counts(dataset):
    root, spec = dataset
    text = (root / "README.md").read_text()
    assert "--images 150 --size 48 --seed 2 --mode all" in text
    for name, split in spec.splits.items():
        q, c = len(set(split.queries[:, 0].tolist())), len(set(split.candidates[:, 0].tolist()))
        assert f"| {name} | {len(split)} | {q} | {c} | {len(split.queries)} | {len(split.candidates)} |" in text
    for attr in ATTRIBUTES:
        for value in attr.values:
            assert re.search(rf"\| {value} \| \d+ \| \d+ \| \d+ \|", text), value
    assert "contact_sheet.png" in text
    assert str(root) not in text  # no machine-specific paths: same arguments, same bytes


def test_value_counts_in_readme_match_labels(dataset):
    root, spec = dataset
    text = (root / "README.md").read_text()
    train = spec.splits["train"]
    a = [x.name for x in ATTRIBUTES].index("pattern")
    counts = [int((train.labels[:, a] == v).sum()) for v in range(4)]
    row = re.search(r"\| checks \| (\d+) \| (\d+) \| (\d+) \|", text)
    assert int(row.group(1)) == counts[3]


def test_contact_sheet_has_a_tile_per_example(dataset):
    root, spec = dataset
    sheet = Image.open(root / "contact_sheet.png")
    spec = replace(spec, name=DATASET_NAME)  # the reader names the set after its folder
    again = contact_sheet(root, spec)
    assert sheet.size == again.size
    assert np.array_equal(np.asarray(sheet.convert("RGB")), np.asarray(again))
    # 48-px images are shown at 2x: the sheet is at least rows x cells tall and values x examples wide
    cell = 96
    assert sheet.size[1] >= len(ATTRIBUTES) * cell
    assert sheet.size[0] >= 4 * EXAMPLES_PER_VALUE * cell
    # the first tile of the first row is a training image enlarged without smoothing
    train = spec.splits["train"]
    first = Image.open(root / train.paths[int(np.flatnonzero(train.labels[:, 0] == 0)[0])]).convert("RGB")
    tile = np.asarray(sheet.convert("RGB"))
    found = any(
        np.array_equal(tile[y : y + cell : 2, x : x + cell : 2], np.asarray(first))
        for y in range(80)
        for x in range(100, 200)
    )
    assert found, "the first example of sleeve_length=sleeveless is not on the sheet"


def test_card_text_is_deterministic(dataset):
    _, spec = dataset
    settings = {"images": 150, "size": 48, "seed": 2, "mode": "all", "triplets": [1, 2, 3], "agman_version": "x"}
    assert card_text(spec, settings) == card_text(spec, settings)
    assert "--triplets 1,2,3" in card_text(spec, settings)
