"""The dataset card of a generated synthetic set: README.md with its counts, and contact_sheet.png.

The contact sheet shows, for every attribute (one row each), a few training images of every value
with the value's name; the last example of each value has its ground-truth region outlined.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from agman.data.spec import UNLABELED, DatasetSpec
from agman.data.synthetic_fashion import ANNOTATED, CARRIES, FASHION_REGIONS, GARMENTS
from agman.data.synthetic_render import REGIONS, TEXTURE_ATTRIBUTES
from agman.fileio import atomic_write, atomic_write_text

EXAMPLES_PER_VALUE = 3
_MIN_CELL = 96  # small images are enlarged (nearest neighbour, whole factor) to at least this
_GAP = 10
_CAPTION = 18
_LABEL_WIDTH = 150
_TITLE = 30
_BOX_COLOUR = (255, 255, 0)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _regions_text(mode: str) -> dict[str, str]:
    """Where each attribute shows (and, for FashionAI-like garments, on which garment)."""
    return FASHION_REGIONS if mode == "fashionai" else REGIONS


def _sheet_note(name: str, mode: str) -> str:
    """The grey line under an attribute's name on the contact sheet."""
    if mode == "fashionai":
        return FASHION_REGIONS.get(name, "")
    return f"{REGIONS.get(name, '')}, {'texture' if name in TEXTURE_ATTRIBUTES else 'shape'}"


def contact_sheet(
    root: str | Path, spec: DatasetSpec, split: str = "train", per_value: int = EXAMPLES_PER_VALUE,
    mode: str = "all",
) -> Image.Image:
    """A grid of ``split`` images: a row per attribute, ``per_value`` examples of each value, captioned
    (``mode``: the set's annotation mode, for the row notes)."""
    root = Path(root)
    data = spec.split(split)
    regions = [json.loads(line)["regions"] for line in (root / f"regions_{split}.jsonl").read_text().splitlines()]
    first = Image.open(root / data.paths[0])
    native = first.size[0]
    zoom = max(1, math.ceil(_MIN_CELL / native))
    cell = native * zoom
    n_values = max(a.n_values for a in spec.attributes)
    group_w = per_value * cell + (per_value - 1) * 2
    width = _LABEL_WIDTH + n_values * group_w + (n_values + 1) * _GAP
    row_h = cell + _CAPTION + _GAP
    height = _TITLE + spec.n_attributes * row_h + _GAP
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    big, small = _font(15), _font(13)
    shown = f", shown x{zoom}" if zoom > 1 else ""
    title = f"{spec.name}: {split} examples per attribute value ({native} px{shown}; yellow box = ground-truth region)"
    draw.text((_GAP, 8), title, fill=(0, 0, 0), font=big)
    for a, attr in enumerate(spec.attributes):
        y = _TITLE + a * row_h
        draw.text((_GAP, y + cell // 2 - 16), attr.name, fill=(0, 0, 0), font=big)
        draw.text((_GAP, y + cell // 2 + 4), _sheet_note(attr.name, mode), fill=(90, 90, 90), font=small)
        for v, value in enumerate(attr.values):
            x = _LABEL_WIDTH + _GAP + v * (group_w + _GAP)
            # Different images in every row (in mode 'all' each image carries every attribute).
            chosen = np.flatnonzero(data.labels[:, a] == v)[a * per_value : (a + 1) * per_value].tolist()
            for k, i in enumerate(chosen):
                with Image.open(root / data.paths[i]) as im:
                    tile = im.convert("RGB").resize((cell, cell), Image.NEAREST) if zoom > 1 else im.convert("RGB")
                if k == len(chosen) - 1:
                    x0, y0, x1, y1 = (c * zoom for c in regions[i][attr.name])
                    ImageDraw.Draw(tile).rectangle([x0, y0, x1 - 1, y1 - 1], outline=_BOX_COLOUR)
                sheet.paste(tile, (x + k * (cell + 2), y))
            draw.text((x + group_w // 2, y + cell + 2), value, fill=(0, 0, 0), font=small, anchor="ma")
    return sheet


def _counts_table(spec: DatasetSpec) -> list[str]:
    lines = [
        "| split | images | query images | candidate images | query rows | candidate rows |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, split in spec.splits.items():
        q_images, c_images = len(np.unique(split.queries[:, 0])), len(np.unique(split.candidates[:, 0]))
        lines.append(
            f"| {name} | {len(split)} | {q_images} | {c_images} | {len(split.queries)} | {len(split.candidates)} |"
        )
    lines += ["", "A query or candidate row is one image-attribute pair (`image attribute value`)."]
    return lines


def _value_table(spec: DatasetSpec, mode: str) -> list[str]:
    names = list(spec.splits)
    lines = [
        "| attribute | region | value | " + " | ".join(f"{n} images" for n in names) + " |",
        "| --- | --- | --- | " + " | ".join("---:" for _ in names) + " |",
    ]
    for a, attr in enumerate(spec.attributes):
        for v, value in enumerate(attr.values):
            cells = [str(int((spec.splits[n].labels[:, a] == v).sum())) for n in names]
            head = f"{attr.name} | {_regions_text(mode).get(attr.name, '')}" if v == 0 else " | "
            lines.append(f"| {head} | {value} | " + " | ".join(cells) + " |")
    return lines


_NUISANCE_TEXT = (
    "A mannequin wears a garment whose attributes each live in one region (arms, neck, hem, waist) "
    "or in the texture (pattern). Everything else is a nuisance drawn independently of every "
    "attribute: garment, pattern, detail, mannequin and background colours; background texture "
    "(flat, gradient, blotches, planks, studio floor); position, scale and rotation (up to 8 degrees); "
    "arm pose; pattern scale, phase and orientation; lighting (gain, tint, ramp); an occluding "
    "object on about 30% of the images. Ranking by colour does not solve any shape attribute."
)
_FASHION_TEXT = (
    "Like FashionAI, every image shows one garment and is annotated with the one attribute that follows "
    "from the garment's type, so which attribute an image is about (Eq. 7's target) can be read from the "
    "image: " + "; ".join(
        f"{g} -> {ANNOTATED[g]}" + (f" (also drawn: {', '.join(CARRIES[g][1:])})" if len(CARRIES[g]) > 1 else "")
        for g in GARMENTS) + ". "
    "The rest of the mannequin is bare. Nuisances, drawn independently of every value: garment, pattern, "
    "mannequin and background colours; background texture (flat, gradient, blotches, planks, studio floor); "
    "position, scale and rotation (up to 8 degrees); arm pose; the cloth's pattern (solid, stripes, dots, "
    "checks); the hem of tops and dresses; lighting (gain, tint, ramp); an occluding object on about 30% of "
    "the images."
)
_FILES_TEXT = (
    "- `meta.json`: ATTRIBUTES, ATTRIBUTES_NUM, ATTRIBUTES_VALUES.",
    "- `filenames_<split>.txt`: one image path per line (relative to this folder); line = image index.",
    "- `label_<split>.txt`: `image attribute value [attribute value ...]`.",
    (
        "- `query_<split>.txt`, `candidate_<split>.txt` (valid, test): `image attribute value`, "
        "one line per annotated image-attribute pair; queries : candidates = 1 : 4 by image."
    ),
    (
        "- `regions_<split>.jsonl`: one JSON object per image, in filenames order: `image`, `path`, "
        "`values` (true value of every attribute), `annotated` (attributes in the label files), "
        "`regions` (attribute -> `[x0, y0, x1, y1]`, image pixels, x1 and y1 exclusive) and `parts` "
        "(attribute -> list of such boxes: the two arms for sleeve_length)."
    ),
    (
        "- `triplets/`: `filenames.json` (all images: train, valid, test), `meta.json`, "
        "`tripletlists/<attribute>_tripletlist_<train|val|test>.txt` with lines `a b c`: image a "
        "shares the attribute's value with c, not with b."
    ),
    "- `images/<split>/NNNNNN.png`, `contact_sheet.png`, `synth.json` (the arguments).",
)


def card_text(spec: DatasetSpec, settings: dict) -> str:
    """The README.md of a generated set (no dates or paths: the same arguments give the same bytes)."""
    mode = settings["mode"]
    annotated = int(sum((s.labels != UNLABELED).sum() for s in spec.splits.values()))
    tri = settings["triplets"]
    command = (
        f"agman data synth --out DIR --images {settings['images']} --size {settings['size']} "
        f"--seed {settings['seed']} --mode {mode} --triplets {','.join(str(t) for t in tri)}"
    )
    mode_text = {
        "all": "every image is annotated with every attribute (like DeepFashion)",
        "single": "each image is annotated with one attribute (like FashionAI); the other attributes are drawn "
        "but not annotated (their true values are in regions_*.jsonl)",
        "fashionai": "five garment types, each image annotated with the one attribute its type carries "
        "(like FashionAI); the type and the values of the other attributes it shows are in regions_*.jsonl",
    }[mode]
    lines = [
        f"# {spec.name}: synthetic garments for attribute-specific retrieval",
        "",
        f"Rendered by agman {settings['agman_version']} with `{command}`.",
        "The same arguments give byte-identical files; nothing was downloaded.",
        "",
        (
            f"{settings['images']} images of {settings['size']} x {settings['size']} px, split 8:1:1; "
            f"annotation mode `{mode}`: {mode_text}. {annotated} image-attribute labels in all."
        ),
        "",
        _FASHION_TEXT if mode == "fashionai" else _NUISANCE_TEXT,
        "",
        "## Counts",
        "",
        *_counts_table(spec),
        "",
        f"Triplet lists (triplets/, CSN layout), per attribute: {tri[0]} train, {tri[1]} val, {tri[2]} test.",
        "",
        "## Attributes and annotated images per value",
        "",
        *_value_table(spec, mode),
        "",
        "## Files",
        "",
        "- `meta.json`: ATTRIBUTES, ATTRIBUTES_NUM, ATTRIBUTES_VALUES.",
        "- `filenames_<split>.txt`: one image path per line (relative to this folder); line = image index.",
        "- `label_<split>.txt`: `image attribute value [attribute value ...]`.",
        *_FILES_TEXT,
        "",
        "## Examples",
        "",
        "![contact sheet: examples of every value](contact_sheet.png)",
        "",
    ]
    return "\n".join(lines)


def write_card(root: str | Path, spec: DatasetSpec, settings: dict) -> Path:
    """Write README.md and contact_sheet.png into ``root``; return the README's path."""
    root = Path(root)
    sheet = contact_sheet(root, spec, mode=settings["mode"])
    atomic_write(root / "contact_sheet.png", lambda f: sheet.save(f, format="PNG", compress_level=6))
    readme = root / "README.md"
    atomic_write_text(readme, card_text(spec, settings))
    return readme
