"""The FashionAI-like garments of the synthetic set (``mode='fashionai'``): five garment types, each
annotated with one attribute that follows from the type.

FashionAI annotates every image with one attribute, and which one follows from what the image shows
(skirt lengths on skirts, pant lengths on trousers ...), so Eq. 7's target (*which* attribute) can be
learned from the image.  Here the mannequin wears one garment of a type drawn per image:

==========  ===============================  ==========================================  ==============
garment     annotated attribute (values)     also drawn (not annotated)                  region of the
                                                                                          annotated one
==========  ===============================  ==========================================  ==============
top         sleeve_length (sleeveless,       neckline_design; hem at the hips             both arms
            short, elbow, long)
dress       neckline_design (round, v,       sleeve_length; hem from knee to mid-calf     neck
            square, turtle)
skirt       skirt_length (short, knee,       -                                            hem
            midi, ankle)
trousers    pant_length (short, mid,         -                                            both leg hems
            cropped, full)
coat        coat_length (regular, long,      long sleeves, open V front, lapels           hem
            knee, ankle)
==========  ===============================  ==========================================  ==============

Values are balanced within each type; the drawn-but-unannotated values are uniform.  The rest of the
body is the bare mannequin, so the type (and with it the annotated attribute) shows in the whole
silhouette while the value shows only in the attribute's region.  Every nuisance of
:func:`agman.data.synthetic_render.sample_params` applies, plus the cloth's pattern (solid,
stripes, dots, checks: a nuisance here, not an attribute), the hem of tops and dresses, and the
colour seen through a coat's opening.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from PIL import Image, ImageDraw

from agman.data.spec import Attribute
from agman.data.synthetic_render import (
    _GARMENT_PROFILE,
    HIP_HALF,
    HIP_Y,
    NECK_BOX,
    SLEEVE_FRACTION,
    WAIST_HALF,
    WAIST_Y,
    Box,
    GarmentDrawing,
    GarmentParams,
    Rendering,
    _arm,
    _box,
    _cut_at,
    _Frame,
    _hand,
    _mirror,
    _neckline_cut,
    _pick_colour,
    _rect,
    _rgb,
    _shade,
    _square_around,
    _union,
    compose,
    sample_params,
)

FASHION_ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("sleeve_length", ("sleeveless", "short", "elbow", "long")),
    Attribute("neckline_design", ("round", "v", "square", "turtle")),
    Attribute("skirt_length", ("short", "knee", "midi", "ankle")),
    Attribute("pant_length", ("short", "mid", "cropped", "full")),
    Attribute("coat_length", ("regular", "long", "knee", "ankle")),
)
"""The attributes of ``mode='fashionai'`` (names as in FashionAI) and their values, in index order."""

GARMENTS = ("top", "dress", "skirt", "trousers", "coat")
"""The garment types, in index order; type ``t`` is annotated with attribute ``t`` of FASHION_ATTRIBUTES."""

CARRIES: dict[str, tuple[str, ...]] = {
    "top": ("sleeve_length", "neckline_design"),
    "dress": ("neckline_design", "sleeve_length"),
    "skirt": ("skirt_length",),
    "trousers": ("pant_length",),
    "coat": ("coat_length",),
}
"""The attributes each type shows (and has regions for); the first is the one it is annotated with."""

ANNOTATED = {garment: CARRIES[garment][0] for garment in GARMENTS}

FASHION_REGIONS = {
    "sleeve_length": "arms (top)",
    "neckline_design": "neck (dress)",
    "skirt_length": "hem (skirt)",
    "pant_length": "leg hems (trousers)",
    "coat_length": "hem (coat)",
}
"""Where each annotated attribute shows, and on which garment."""

_INDEX = {a.name: i for i, a in enumerate(FASHION_ATTRIBUTES)}

# --------------------------------------------------------------------------- geometry (figure units)
SKIRT_HEM_Y = (0.56, 0.68, 0.79, 0.91)  # short, knee, midi, ankle
PANT_HEM_Y = (0.60, 0.71, 0.82, 0.925)  # short, mid, cropped, full
COAT_HEM_Y = (0.52, 0.63, 0.74, 0.88)  # regular (hip), long (thigh), knee, ankle
TOP_HEM = (0.50, 0.56)  # nuisance ranges of the hem
DRESS_HEM = (0.66, 0.86)
HEM_JITTER = 0.015

# Right halves, top to bottom.  A pant leg follows the mannequin's leg, 0.015 wider each side.
_PANT_OUTER = ((WAIST_HALF, WAIST_Y), (HIP_HALF + 0.01, HIP_Y), (0.14, 0.75), (0.115, 0.94))
_PANT_INNER = ((0.0, 0.56), (0.02, 0.75), (0.04, 0.94))
_COAT_PROFILE = ((0.075, 0.14), (0.18, 0.155), (0.172, 0.25), (0.166, WAIST_Y), (0.2, HIP_Y), (0.26, 1.0))
_COAT_OPENING = ((0.06, 0.14), (0.0, 0.36), (-0.06, 0.14))


@dataclass(frozen=True)
class FashionParams(GarmentParams):
    """A :class:`GarmentParams` for one garment type.  ``values`` has one entry per attribute of
    FASHION_ATTRIBUTES, -1 where the type does not show the attribute."""

    garment_type: str = "dress"
    pattern_kind: int = 0  # 0 solid, 1 stripes, 2 dots, 3 checks (a nuisance here)
    hem: float = 0.75  # hem height of tops and dresses (a nuisance); other types take theirs from the value
    inner: tuple[int, int, int] = (240, 240, 240)  # what shows through a coat's opening

    def value_of(self, attribute: str) -> int:
        return self.values[_INDEX[attribute]]


def sample_fashion_params(rng: np.random.Generator, garment: str, values) -> FashionParams:
    """Draw every nuisance from ``rng`` for a ``garment`` with attribute ``values`` (-1 where not shown):
    those of :func:`sample_params` (which do not look at the values), then pattern, hem and inner colour."""
    if garment not in GARMENTS:
        raise ValueError(f"unknown garment {garment!r}; expected one of {', '.join(GARMENTS)}")
    values = tuple(int(v) for v in values)
    if len(values) != len(FASHION_ATTRIBUTES):
        raise ValueError(f"expected {len(FASHION_ATTRIBUTES)} attribute values, got {len(values)}")
    for v, attr in zip(values, FASHION_ATTRIBUTES):
        shown = attr.name in CARRIES[garment]
        if (shown and not 0 <= v < attr.n_values) or (not shown and v != -1):
            expected = f"0..{attr.n_values - 1}" if shown else "-1 (not shown on a " + garment + ")"
            raise ValueError(f"value {v} for {attr.name} of a {garment}: expected {expected}")
    base = sample_params(rng, (0,) * 5)
    pattern_kind = int(rng.integers(0, 4))
    hem = float(rng.uniform(*(TOP_HEM if garment == "top" else DRESS_HEM)))
    inner = _pick_colour(rng, [np.asarray(base.garment), np.asarray(base.body)], 100)
    common = {f.name: getattr(base, f.name) for f in fields(GarmentParams) if f.name != "values"}
    common["hem_offset"] = base.hem_offset * HEM_JITTER / 0.02  # sample_params draws it in +-0.02
    return FashionParams(values=values, garment_type=garment, pattern_kind=pattern_kind, hem=hem, inner=_rgb(inner),
                         **common)


def hem_of(params: FashionParams) -> float:
    """The garment's hem height (figure units): from the length value, or the top's / dress's nuisance."""
    table = {"skirt": ("skirt_length", SKIRT_HEM_Y), "trousers": ("pant_length", PANT_HEM_Y),
             "coat": ("coat_length", COAT_HEM_Y)}
    if params.garment_type in table:
        name, heights = table[params.garment_type]
        return heights[params.value_of(name)] + params.hem_offset
    return params.hem


def _x_at(profile, y: float) -> float:
    return _cut_at(profile, y)[-1][0]


# --------------------------------------------------------------------------- cloth masks
def _fashion_mask(params: FashionParams, frame: _Frame) -> Image.Image:
    """'L' mask of the garment's cloth."""
    mask = Image.new("L", (frame.canvas, frame.canvas), 0)
    draw = ImageDraw.Draw(mask)
    hem, kind = hem_of(params), params.garment_type
    if kind in ("top", "dress"):
        draw.polygon(frame.points(_mirror(_GARMENT_PROFILE)), fill=255)
        draw.polygon(frame.points(_rect(-1.0, hem, 1.0, 1.5)), fill=0)
        sleeve = params.value_of("sleeve_length")
        if sleeve:
            fraction = SLEEVE_FRACTION[sleeve] + params.sleeve_offset
            for side, angle in ((1, params.arm_angles[0]), (-1, params.arm_angles[1])):
                draw.polygon(frame.points(_arm(side, angle, -0.08, fraction, 0.016)), fill=255)
        cut = _neckline_cut(params.value_of("neckline_design"))
        if cut is not None:
            draw.polygon(frame.points(cut), fill=0)
        else:
            draw.polygon(frame.points([(0.07, 0.07), (0.088, 0.165), (-0.088, 0.165), (-0.07, 0.07)]), fill=255)
    elif kind in ("skirt", "trousers"):
        # Full length, then everything below the hem erased: the side seams are the same pixels for
        # every length and only the cloth between two hems differs.
        if kind == "skirt":
            draw.polygon(frame.points(_mirror(_GARMENT_PROFILE[3:])), fill=255)
        else:
            for s in (1, -1):
                leg = [(0.0, WAIST_Y), *_PANT_OUTER, *reversed(_PANT_INNER)]
                draw.polygon(frame.points([(s * x, y) for x, y in leg]), fill=255)
        draw.polygon(frame.points(_rect(-1.0, hem, 1.0, 1.5)), fill=0)
    else:  # coat: the body down to the hem (drawn like the skirt), long sleeves, the opening cut out
        draw.polygon(frame.points(_mirror(_COAT_PROFILE)), fill=255)
        line = max(1, round(0.012 * frame.unit))
        draw.line(frame.points([(0.0, 0.3), (0.0, 1.5)]), fill=0, width=line)  # the front edge, open below the V
        draw.polygon(frame.points(_rect(-1.0, hem, 1.0, 1.5)), fill=0)
        for side, angle in ((1, params.arm_angles[0]), (-1, params.arm_angles[1])):
            draw.polygon(frame.points(_arm(side, angle, -0.08, 1.0, 0.022)), fill=255)
        draw.polygon(frame.points(_COAT_OPENING), fill=0)
    return mask


def _fashion_details(draw: ImageDraw.ImageDraw, params: FashionParams, frame: _Frame) -> None:
    """Collar fold (turtle), waistbands, the coat's inner layer, lapels and front edge."""
    seam = _shade(params.garment, 0.55)
    line = max(1, round(0.012 * frame.unit))
    kind = params.garment_type
    if kind in ("top", "dress") and params.value_of("neckline_design") == 3:
        draw.line(frame.points([(-0.088, 0.15), (0.088, 0.15)]), fill=seam, width=line)
    elif kind in ("skirt", "trousers"):
        draw.line(frame.points([(-WAIST_HALF, WAIST_Y + 0.01), (WAIST_HALF, WAIST_Y + 0.01)]), fill=seam, width=line)
    elif kind == "coat":
        draw.polygon(frame.points(_COAT_OPENING), fill=params.inner)
        for s in (1, -1):
            draw.polygon(frame.points([(s * 0.06, 0.14), (s * 0.115, 0.2), (s * 0.012, 0.33)]), fill=seam)


# --------------------------------------------------------------------------- regions
def _fashion_regions(params: FashionParams, frame: _Frame, ss: int, size: int
                     ) -> tuple[dict[str, Box], dict[str, list[Box]]]:
    hem, kind = hem_of(params), params.garment_type
    parts: dict[str, list[Box]] = {}
    if kind in ("top", "dress"):
        parts["sleeve_length"] = [
            _box(frame, _arm(side, angle, -0.05, 1.0, 0.016) + _square_around(_hand(side, angle), 0.034), ss, size)
            for side, angle in ((1, params.arm_angles[0]), (-1, params.arm_angles[1]))
        ]
        parts["neckline_design"] = [_box(frame, _rect(*NECK_BOX), ss, size)]
    elif kind == "skirt":
        half = _x_at(_GARMENT_PROFILE, hem)
        parts["skirt_length"] = [_box(frame, _rect(-half, hem - 0.05, half, hem + 0.05), ss, size)]
    elif kind == "trousers":
        outer, inner = _x_at(_PANT_OUTER, hem), _x_at(_PANT_INNER, hem)
        parts["pant_length"] = [
            _box(frame, [(s * (inner - 0.01), hem - 0.05), (s * (outer + 0.01), hem + 0.05)], ss, size) for s in (1, -1)
        ]
    else:
        half = _x_at(_COAT_PROFILE, hem)
        parts["coat_length"] = [_box(frame, _rect(-half, hem - 0.05, half, hem + 0.05), ss, size)]
    ordered = {a.name: parts[a.name] for a in FASHION_ATTRIBUTES if a.name in parts}
    return {name: _union(boxes) for name, boxes in ordered.items()}, ordered


def render_fashion(params: FashionParams, size: int, *, supersample: int = 2, masks: bool = False) -> Rendering:
    """Draw a FashionAI-like garment as a ``size`` x ``size`` image with the regions of the attributes
    it shows (see :func:`agman.data.synthetic_render.render` for ``supersample`` and ``masks``)."""
    drawing = GarmentDrawing(_fashion_mask, _fashion_details, _fashion_regions, params.pattern_kind)
    return compose(params, size, drawing, supersample=supersample, masks=masks)
