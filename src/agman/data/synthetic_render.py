"""Draw one synthetic garment image from a parameter record (pure: the same record gives the same pixels).

A stylised mannequin wears a dress-like garment.  Five attributes each change one part of it:

==================  ==================================  ===========  =======================
attribute           values                              region       kind
==================  ==================================  ===========  =======================
sleeve_length       sleeveless, short, elbow, long      arms         local (shape)
neckline_design     round, v, square, turtle            neck         local (shape)
garment_length      cropped, hip, knee, ankle           hem          local (shape)
waist_detail        plain, belt, bow, peplum            waist        local (shape)
pattern             solid, stripes, dots, checks        torso        texture
==================  ==================================  ===========  =======================

Everything else is a nuisance drawn independently of the attributes by :func:`sample_params`:
garment, accent, mannequin and background colours, background texture (gradient, blotches, planks,
studio floor), figure position, scale and rotation, arm pose, pattern scale/phase/orientation,
lighting (gain, tint, directional ramp) and, on some images, an occluding object.

Geometry is written in *figure units*: x to the right of the figure's centre line, y down from the
top of the head, the figure being 1 unit tall.  :class:`_Frame` maps figure units to pixels.
"""
from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from agman.data.spec import Attribute
from agman.errors import InvalidValueError

ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("sleeve_length", ("sleeveless", "short", "elbow", "long")),
    Attribute("neckline_design", ("round", "v", "square", "turtle")),
    Attribute("garment_length", ("cropped", "hip", "knee", "ankle")),
    Attribute("waist_detail", ("plain", "belt", "bow", "peplum")),
    Attribute("pattern", ("solid", "stripes", "dots", "checks")),
)
"""The attributes of the synthetic set and their value names, in index order."""

REGIONS = {
    "sleeve_length": "arms",
    "neckline_design": "neck",
    "garment_length": "hem",
    "waist_detail": "waist",
    "pattern": "torso",
}
"""Where each attribute is visible (the body part its ground-truth box covers)."""

TEXTURE_ATTRIBUTES = ("pattern",)
SHAPE_ATTRIBUTES = tuple(a.name for a in ATTRIBUTES if a.name not in TEXTURE_ATTRIBUTES)

BACKGROUND_KINDS = ("flat", "gradient", "blotches", "planks", "floor")
OCCLUDER_KINDS = ("box", "disc", "bar")

# --------------------------------------------------------------------------- figure geometry (figure units)
SHOULDER = (0.19, 0.175)  # right shoulder joint; the left one is mirrored
ARM_LENGTH = 0.36
WAIST_Y = 0.34
HIP_Y = 0.50
HEM_Y = (0.43, 0.56, 0.72, 0.90)  # cropped, hip, knee, ankle
SLEEVE_FRACTION = (0.0, 0.3, 0.6, 1.0)  # share of the arm a sleeve covers: sleeveless .. long
SKIRT_FLARE = 0.2  # half-width gained per unit of length below the hips

WAIST_HALF = 0.152  # garment half-width at the waist
HIP_HALF = 0.185
# Right half of the garment's outline from the neck down to the hips; the skirt continues below.
_GARMENT_SIDE = ((0.075, 0.14), (0.17, 0.155), (0.16, 0.25), (WAIST_HALF, WAIST_Y), (HIP_HALF, HIP_Y))
# Right half of the mannequin's torso.
_TORSO_SIDE = (
    (0.035, 0.125), (0.185, 0.155), (0.205, 0.19), (0.18, 0.26), (0.145, WAIST_Y), (0.18, HIP_Y), (0.17, 0.55)
)
_LEG = ((0.004, 0.54), (0.18, 0.50), (0.125, 0.75), (0.10, 0.935), (0.055, 0.935), (0.035, 0.75))

NECK_BOX = (-0.145, 0.065, 0.145, 0.335)
WAIST_BOX = (-0.175, 0.29, 0.175, 0.465)  # belt, bow and its tails
# With a peplum: the same band widened to the flare's tips (a hexagon, so rotation adds little).
_PEPLUM_REGION = ((-0.175, 0.29), (0.175, 0.29), (0.30, 0.435), (0.175, 0.465), (-0.175, 0.465), (-0.30, 0.435))


@dataclass(frozen=True)
class GarmentParams:
    """Everything that decides one image: the attribute values and every nuisance factor.

    Colours are 0..255 RGB triples; positions are fractions of the image side; angles in degrees.
    """

    values: tuple[int, ...]  # one value index per attribute of ATTRIBUTES
    scale: float = 0.88  # figure height / image side
    center: tuple[float, float] = (0.5, 0.5)
    rotation: float = 0.0
    arm_angles: tuple[float, float] = (16.0, 16.0)  # right, left: outwards from vertical
    hem_offset: float = 0.0  # figure units added to the hem height of the garment length
    sleeve_offset: float = 0.0  # share of the arm added to the sleeve length (not for sleeveless)
    garment: tuple[int, int, int] = (200, 60, 60)
    accent: tuple[int, int, int] = (240, 240, 240)  # second colour of the pattern
    detail: tuple[int, int, int] = (30, 30, 30)  # belt / bow colour
    body: tuple[int, int, int] = (225, 190, 160)  # mannequin
    background: tuple[int, int, int] = (235, 235, 235)
    background2: tuple[int, int, int] = (215, 215, 215)
    background_kind: str = "flat"
    background_noise: tuple[float, ...] = field(default=(0.0,) * 16)  # 4x4 low-frequency field in [-1, 1]
    background_angle: float = 0.0  # gradient / planks direction
    background_period: float = 0.2  # planks width or floor height, fraction of the side
    pattern_period: float = 0.11  # figure units: stripes and dots period, twice the check size
    pattern_vertical: bool = False  # stripes run up-down instead of across
    pattern_phase: tuple[float, float] = (0.0, 0.0)
    light_gain: float = 1.0
    light_tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    light_angle: float = 0.0  # direction the light comes from (sample_params: multiples of 15)
    light_slope: float = 0.0  # relative brightness change across the image (sample_params: 0 .. 0.35)
    occluder: tuple | None = None  # (kind, x0, y0, x1, y1, (r, g, b)) in image fractions, or None

    def value_of(self, attribute: str) -> int:
        return self.values[_ATTRIBUTE_INDEX[attribute]]


_ATTRIBUTE_INDEX = {a.name: i for i, a in enumerate(ATTRIBUTES)}

Box = tuple[int, int, int, int]


@dataclass
class Rendering:
    """One rendered image with its ground truth.

    ``regions[attr]`` is one box ``(x0, y0, x1, y1)`` in pixels of ``image`` (x1, y1 exclusive) around
    the part where the attribute shows; ``parts[attr]`` the tight boxes of its pieces (two arms for
    sleeve_length, one box otherwise).  ``garment_mask`` / ``figure_mask`` (bool [size, size]) are set
    when asked for: pixels mostly covered by the garment / by garment or mannequin.
    """

    image: Image.Image
    regions: dict[str, Box]
    parts: dict[str, list[Box]]
    garment_mask: np.ndarray | None = None
    figure_mask: np.ndarray | None = None


# --------------------------------------------------------------------------- sampling
def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3)


def _far(c: np.ndarray, others: list[np.ndarray], min_distance: float) -> bool:
    return all(float(((c - o) ** 2).sum()) >= min_distance**2 for o in others)


def _pick_colour(rng: np.random.Generator, avoid: list[np.ndarray], min_distance: float) -> np.ndarray:
    """A uniformly random colour at least ``min_distance`` (RGB, 0..255) from each colour in ``avoid``."""
    for _ in range(200):
        c = _colour(rng)
        if _far(c, avoid, min_distance):
            return c
    return c  # practically unreachable: the constraints leave most of the RGB cube free


def sample_params(rng: np.random.Generator, values: tuple[int, ...] | list[int]) -> GarmentParams:
    """Draw every nuisance factor from ``rng`` for a garment with attribute ``values``.

    The draws do not depend on ``values``, so colour, pose, background and lighting are independent
    of every attribute.  Colours are uniform in the RGB cube, rejected only where two neighbouring
    surfaces would be too alike to see the edge between them (same rule for every value).
    """
    values = tuple(int(v) for v in values)
    if len(values) != len(ATTRIBUTES):
        raise ValueError(f"expected {len(ATTRIBUTES)} attribute values, got {len(values)}")
    for v, attr in zip(values, ATTRIBUTES):
        if not 0 <= v < attr.n_values:
            raise ValueError(f"value {v} out of range for {attr.name} (0..{attr.n_values - 1})")
    background = _colour(rng)
    background2 = np.clip(background + rng.integers(-45, 46, 3), 0, 255)
    body = _pick_colour(rng, [background, background2], 90)
    garment = _pick_colour(rng, [background, background2, body], 100)
    accent = _pick_colour(rng, [garment, body], 100)
    detail = _pick_colour(rng, [garment, accent], 100)
    scale = float(rng.uniform(0.8, 0.95))
    room = (1.0 - scale) / 2
    center = (float(rng.uniform(0.5 - 0.07, 0.5 + 0.07)), float(0.5 + rng.uniform(-room, room) * 0.9))
    if rng.random() < 0.3:
        kind = OCCLUDER_KINDS[int(rng.integers(len(OCCLUDER_KINDS)))]
        w, h = rng.uniform(0.12, 0.26, 2)
        if kind == "bar":
            w, h = (w * 1.6, 0.05) if rng.random() < 0.5 else (0.05, h * 1.6)
        x0, y0 = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
        occluder = (kind, float(x0), float(y0), float(x0 + w), float(y0 + h), tuple(int(c) for c in _colour(rng)))
    else:
        occluder = None
    return GarmentParams(
        values=values,
        scale=scale,
        center=center,
        rotation=float(rng.uniform(-8.0, 8.0)),
        arm_angles=(float(rng.uniform(9.0, 24.0)), float(rng.uniform(9.0, 24.0))),
        hem_offset=float(rng.uniform(-0.02, 0.02)),
        sleeve_offset=float(rng.uniform(-0.04, 0.04)),
        garment=_rgb(garment),
        accent=_rgb(accent),
        detail=_rgb(detail),
        body=_rgb(body),
        background=_rgb(background),
        background2=_rgb(background2),
        background_kind=BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))],
        background_noise=tuple(float(x) for x in rng.uniform(-1.0, 1.0, 16)),
        background_angle=float(rng.uniform(0.0, 360.0)),
        background_period=float(rng.uniform(0.15, 0.3)),
        pattern_period=float(rng.uniform(0.10, 0.125)),
        pattern_vertical=bool(rng.random() < 0.5),
        pattern_phase=(float(rng.random()), float(rng.random())),
        light_gain=float(rng.uniform(0.75, 1.15)),
        light_tint=tuple(float(t) for t in rng.uniform(0.9, 1.1, 3)),
        light_angle=float(15 * rng.integers(0, 24)),
        light_slope=float(0.05 * rng.integers(0, 8)),
        occluder=occluder,
    )


def _rgb(c: np.ndarray) -> tuple[int, int, int]:
    return (int(c[0]), int(c[1]), int(c[2]))


# --------------------------------------------------------------------------- drawing
class _Frame:
    """Maps figure units to canvas pixels: scale, rotation about the figure's middle, translation."""

    def __init__(self, params: GarmentParams, canvas: int):
        self.canvas = canvas
        self.unit = params.scale * canvas  # pixels per figure unit
        theta = math.radians(params.rotation)
        self.cos, self.sin = math.cos(theta), math.sin(theta)
        self.cx, self.cy = params.center[0] * canvas, params.center[1] * canvas

    def points(self, pts) -> list[tuple[float, float]]:
        u, c, s, cx, cy = self.unit, self.cos, self.sin, self.cx, self.cy
        out = []
        for x, y in pts:
            x, y = x * u, (y - 0.5) * u
            out.append((cx + c * x - s * y, cy + s * x + c * y))
        return out

    def circle(self, x: float, y: float, r: float) -> list[float]:
        (px, py), = self.points([(x, y)])
        rp = r * self.unit
        return [px - rp, py - rp, px + rp, py + rp]

    def local_grid(self, box) -> tuple[np.ndarray, np.ndarray]:
        """Figure coordinates (u, v) of the pixel centres in ``box`` (x0, y0, x1, y1) as float32 arrays."""
        x0, y0, x1, y1 = box
        dx = (np.arange(x0, x1, dtype=np.float32) + (0.5 - self.cx))[None, :]
        dy = (np.arange(y0, y1, dtype=np.float32) + (0.5 - self.cy))[:, None]
        inv = 1.0 / self.unit
        u = (self.cos * inv) * dx + (self.sin * inv) * dy
        v = (-self.sin * inv) * dx + (self.cos * inv) * dy + 0.5
        return u, v


def _mirror(side) -> list[tuple[float, float]]:
    """Right-half outline (top to bottom) -> closed symmetric outline (right side down, left side up)."""
    side = list(side)
    return side + [(-x, y) for x, y in reversed(side)]


def _cut_at(profile, y_end: float) -> list[tuple[float, float]]:
    """The points of a top-to-bottom outline above ``y_end``, ending exactly at ``y_end``."""
    out = [profile[0]]
    for (x0, y0), (x1, y1) in itertools.pairwise(profile):
        if y1 >= y_end:
            t = (y_end - y0) / (y1 - y0)
            out.append((x0 + t * (x1 - x0), y_end))
            return out
        out.append((x1, y1))
    return out


def hem_height(params: GarmentParams) -> float:
    return HEM_Y[params.value_of("garment_length")] + params.hem_offset


_GARMENT_PROFILE = (*_GARMENT_SIDE, (HIP_HALF + SKIRT_FLARE * (1.0 - HIP_Y), 1.0))


def hem_half_width(hem: float) -> float:
    """Half-width of the garment at height ``hem`` (figure units)."""
    return _cut_at(_GARMENT_PROFILE, hem)[-1][0]


def _arm(side: int, angle_deg: float, t0: float, t1: float, extra: float) -> list[tuple[float, float]]:
    """Quadrilateral along the arm between fractions t0..t1 of its length, ``extra`` wider each side."""
    a = math.radians(angle_deg)
    dx, dy = side * math.sin(a), math.cos(a)
    nx, ny = math.cos(a), -side * math.sin(a)
    sx, sy = side * SHOULDER[0], SHOULDER[1]

    def width(t):
        return 0.048 + (0.034 - 0.048) * t + extra

    pts = []
    for t, sign in ((t0, 1), (t1, 1), (t1, -1), (t0, -1)):
        d = t * ARM_LENGTH
        w = width(max(0.0, min(1.0, t))) * sign
        pts.append((sx + dx * d + nx * w, sy + dy * d + ny * w))
    return pts


def _hand(side: int, angle_deg: float) -> tuple[float, float]:
    a = math.radians(angle_deg)
    d = ARM_LENGTH + 0.02
    return (side * SHOULDER[0] + side * math.sin(a) * d, SHOULDER[1] + math.cos(a) * d)


def _neckline_cut(value: int) -> list[tuple[float, float]] | None:
    if value == 0:  # round: a wide, shallow half ellipse
        return [(0.125 * math.cos(t), 0.12 + 0.105 * math.sin(t)) for t in np.linspace(0.0, math.pi, 13)]
    if value == 1:  # v: deep and pointed
        return [(0.115, 0.12), (0.0, 0.325), (-0.115, 0.12)]
    if value == 2:  # square: deep, straight sides and bottom
        return [(0.088, 0.12), (0.088, 0.29), (-0.088, 0.29), (-0.088, 0.12)]
    return None  # turtle: no cut, a collar up to the chin instead


def _background(params: GarmentParams, size: int, ss: int) -> Image.Image:
    """The backdrop at ``size * ss`` pixels.  Smooth kinds are computed at ``size`` and repeated
    ``ss`` times (box-filtering them back down restores them exactly)."""
    canvas = size * ss
    kind = params.background_kind
    base = np.asarray(params.background, dtype=np.float32)
    other = np.asarray(params.background2, dtype=np.float32)
    if kind in ("gradient", "blotches"):
        g = (np.arange(4, dtype=np.float32) - 1.5) / 1.5
        a = math.radians(params.background_angle)
        if kind == "gradient":
            t = 0.5 + 0.5 * (math.cos(a) * g[None, :] + math.sin(a) * g[:, None])
        else:
            t = 0.5 + 0.5 * np.asarray(params.background_noise, dtype=np.float32).reshape(4, 4)
        small = base + t[..., None] * (other - base)
        img = Image.fromarray(np.clip(small + 0.5, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        return img.resize((canvas, canvas), Image.NEAREST) if ss > 1 else img
    img = Image.new("RGB", (canvas, canvas), params.background)
    draw = ImageDraw.Draw(img)
    if kind == "planks":
        period = max(2, round(params.background_period * canvas))
        vertical = math.cos(math.radians(params.background_angle)) >= 0
        for k, start in enumerate(range(0, canvas, period)):
            if k % 2:
                box = [start, 0, start + period - 1, canvas] if vertical else [0, start, canvas, start + period - 1]
                draw.rectangle(box, fill=params.background2)
    elif kind == "floor":
        top = round(canvas * (1.0 - params.background_period))
        draw.rectangle([0, top, canvas, canvas], fill=params.background2)
    return img


def _paste(canvas: Image.Image, colour, mask: Image.Image) -> None:
    """Fill ``colour`` where ``mask`` is set, touching only the mask's bounding box."""
    box = mask.getbbox()
    if box:
        canvas.paste(colour, box, mask.crop(box))


def _pattern_mask(params: GarmentParams, frame: _Frame, box, kind: int) -> Image.Image | None:
    """'L' mask of the accent colour over ``box`` of the canvas, in figure coordinates (None for solid).
    ``kind``: 0 solid, 1 stripes, 2 dots, 3 checks."""
    if kind == 0 or not box:
        return None
    u, v = frame.local_grid(box)
    p = params.pattern_period
    pu, pv = params.pattern_phase
    if kind == 1:  # stripes
        w = (u if params.pattern_vertical else v) / p + pu
        on = (w - np.floor(w)) < 0.5
    elif kind == 2:  # dots on a square lattice
        fu, fv = u / p + pu, v / p + pv
        du, dv = fu - np.floor(fu) - 0.5, fv - np.floor(fv) - 0.5
        on = du * du + dv * dv < 0.3**2
    else:  # checks: squares of 0.6 periods
        fu, fv = u / (0.6 * p) + pu, v / (0.6 * p) + pv
        on = ((np.floor(fu) + np.floor(fv)) % 2) == 0
    return Image.fromarray(on.view(np.uint8) * np.uint8(255), "L")


def _draw_mannequin(draw: ImageDraw.ImageDraw, frame: _Frame, params: GarmentParams, fill) -> None:
    """Head, neck, torso, legs, feet, arms and hands."""
    draw.ellipse(frame.circle(0.0, 0.055, 0.05), fill=fill)
    draw.polygon(frame.points(_rect(-0.036, 0.08, 0.036, 0.17)), fill=fill)
    draw.polygon(frame.points(_mirror(_TORSO_SIDE)), fill=fill)
    for side in (1, -1):
        draw.polygon(frame.points([(side * x, y) for x, y in _LEG]), fill=fill)
        draw.ellipse(frame.circle(side * 0.08, 0.95, 0.032), fill=fill)
    for side, angle in ((1, params.arm_angles[0]), (-1, params.arm_angles[1])):
        draw.polygon(frame.points(_arm(side, angle, -0.05, 1.0, 0.0)), fill=fill)
        draw.ellipse(frame.circle(*_hand(side, angle), 0.034), fill=fill)


def _draw_bow(draw: ImageDraw.ImageDraw, frame: _Frame, fill) -> None:
    y = WAIST_Y + 0.01
    draw.polygon(frame.points([(0.0, y), (0.125, y - 0.065), (0.125, y + 0.065)]), fill=fill)
    draw.polygon(frame.points([(0.0, y), (-0.125, y - 0.065), (-0.125, y + 0.065)]), fill=fill)
    draw.polygon(frame.points([(0.014, y), (0.065, y + 0.1), (0.03, y + 0.105), (-0.007, y)]), fill=fill)
    draw.polygon(frame.points([(-0.014, y), (-0.065, y + 0.1), (-0.03, y + 0.105), (0.007, y)]), fill=fill)
    draw.ellipse(frame.circle(0.0, y, 0.03), fill=fill)


def _shade(c, k: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(x * k)))) for x in c)


def _contrast_shade(c) -> tuple[int, int, int]:
    """A darker shade of a light colour, a lighter one of a dark colour (the belt's buckle)."""
    if sum(c) > 3 * 128:
        return _shade(c, 0.5)
    return tuple(min(255, x + 100) for x in c)


def _garment_mask(params: GarmentParams, frame: _Frame) -> Image.Image:
    """'L' mask of the cloth: dress down to the hem, sleeves, neckline cut or collar, peplum."""
    sleeve, neck, _, waist, _ = params.values
    gmask = Image.new("L", (frame.canvas, frame.canvas), 0)
    draw = ImageDraw.Draw(gmask)
    # The full-length dress, then everything below the hem erased: the side seams are then the same
    # pixels for every length, and only the cloth between two hems differs.
    draw.polygon(frame.points(_mirror(_GARMENT_PROFILE)), fill=255)
    draw.polygon(frame.points(_rect(-1.0, hem_height(params), 1.0, 1.5)), fill=0)
    if sleeve:
        fraction = SLEEVE_FRACTION[sleeve] + params.sleeve_offset
        for side, angle in ((1, params.arm_angles[0]), (-1, params.arm_angles[1])):
            draw.polygon(frame.points(_arm(side, angle, -0.08, fraction, 0.016)), fill=255)
    cut = _neckline_cut(neck)
    if cut is not None:
        draw.polygon(frame.points(cut), fill=0)
    else:  # turtle collar up to the chin
        draw.polygon(frame.points([(0.07, 0.07), (0.088, 0.165), (-0.088, 0.165), (-0.07, 0.07)]), fill=255)
    if waist == 3:  # peplum: a flared frill below the waist
        flare = [(WAIST_HALF, WAIST_Y), (0.30, 0.435), (0.0, 0.445), (-0.30, 0.435), (-WAIST_HALF, WAIST_Y)]
        draw.polygon(frame.points(flare), fill=255)
    return gmask


def _dress(canvas: Image.Image, gmask: Image.Image, params: GarmentParams, frame: _Frame, pattern_kind: int) -> None:
    """Fill the cloth with the garment colour, or its pattern in the garment and accent colours."""
    box = gmask.getbbox()
    pattern = _pattern_mask(params, frame, box, pattern_kind)
    if pattern is None:
        _paste(canvas, params.garment, gmask)
    else:
        cloth = Image.new("RGB", pattern.size, params.garment)
        cloth.paste(params.accent, (0, 0), pattern)
        canvas.paste(cloth, box, gmask.crop(box))


def _draw_details(draw: ImageDraw.ImageDraw, params: GarmentParams, frame: _Frame) -> None:
    """Turtle collar fold, belt with buckle, bow, peplum seam."""
    _, neck, _, waist, _ = params.values
    seam = _shade(params.garment, 0.55)
    line = max(1, round(0.012 * frame.unit))
    if neck == 3:
        draw.line(frame.points([(-0.088, 0.15), (0.088, 0.15)]), fill=seam, width=line)
    if waist == 1:
        band = _rect(-WAIST_HALF - 0.008, WAIST_Y - 0.036, WAIST_HALF + 0.008, WAIST_Y + 0.036)
        draw.polygon(frame.points(band), fill=params.detail)
        buckle = _rect(-0.042, WAIST_Y - 0.046, 0.042, WAIST_Y + 0.046)
        draw.polygon(frame.points(buckle), fill=_contrast_shade(params.detail))
    elif waist == 2:
        _draw_bow(draw, frame, params.detail)
    elif waist == 3:
        draw.line(frame.points([(WAIST_HALF, WAIST_Y), (-WAIST_HALF, WAIST_Y)]), fill=seam, width=line)


def render(params: GarmentParams, size: int, *, supersample: int = 2, masks: bool = False) -> Rendering:
    """Draw the garment described by ``params`` as a ``size`` x ``size`` RGB image with its regions.

    Shapes are drawn at ``supersample`` times the size and box-filtered down (antialiasing);
    ``supersample=1`` draws aliased edges (faster).  ``masks=True`` also returns the garment and
    figure masks (for tests of the region boxes).
    """
    return compose(params, size, GarmentDrawing(_garment_mask, _draw_details, _regions, params.value_of("pattern")),
                   supersample=supersample, masks=masks)


@dataclass(frozen=True)
class GarmentDrawing:
    """What differs between kinds of garment: the cloth's mask, the details drawn over it, the
    ground-truth regions, and the cloth's pattern (0 solid, 1 stripes, 2 dots, 3 checks)."""

    garment_mask: Callable[[GarmentParams, _Frame], Image.Image]
    details: Callable[[ImageDraw.ImageDraw, GarmentParams, _Frame], None]
    regions: Callable[[GarmentParams, _Frame, int, int], tuple[dict[str, Box], dict[str, list[Box]]]]
    pattern_kind: int


def compose(params: GarmentParams, size: int, drawing: GarmentDrawing, *, supersample: int = 2,
            masks: bool = False) -> Rendering:
    """The scene every garment shares: backdrop, mannequin, the ``drawing``'s cloth (patterned) and
    details, occluder, lighting; at ``supersample`` times the size, box-filtered down."""
    if size < 16:
        raise InvalidValueError(f"size must be at least 16 pixels, got {size}")
    ss = max(1, int(supersample))
    canvas_size = size * ss
    frame = _Frame(params, canvas_size)
    lit, ramp = _lit(params, size)

    canvas = _background(lit, size, ss)
    _draw_mannequin(ImageDraw.Draw(canvas), frame, lit, lit.body)
    gmask = drawing.garment_mask(lit, frame)
    _dress(canvas, gmask, lit, frame, drawing.pattern_kind)
    draw = ImageDraw.Draw(canvas)
    drawing.details(draw, lit, frame)
    if lit.occluder is not None:
        kind, x0, y0, x1, y1, colour = lit.occluder
        box = [x0 * canvas_size, y0 * canvas_size, x1 * canvas_size, y1 * canvas_size]
        (draw.ellipse if kind == "disc" else draw.rectangle)(box, fill=colour)
    if ss > 1:
        canvas = canvas.reduce(ss)
    image = ImageChops.multiply(canvas, ramp)

    regions, parts = drawing.regions(params, frame, ss, size)
    out = Rendering(image=image, regions=regions, parts=parts)
    if masks:
        body = Image.new("L", (canvas_size, canvas_size), 0)
        _draw_mannequin(ImageDraw.Draw(body), frame, params, 255)
        g = np.asarray(gmask.reduce(ss) if ss > 1 else gmask) >= 128
        b = np.asarray(body.reduce(ss) if ss > 1 else body) >= 128
        out.garment_mask, out.figure_mask = g, g | b
    return out


@functools.lru_cache(maxsize=512)
def _ramp(size: int, angle: float, slope: float) -> tuple[Image.Image, float]:
    """Brightness ramp along ``angle`` as an RGB image scaled to peak at 255, and its peak factor.

    Cached: sample_params draws angles and slopes from a small set, so a process builds few."""
    a = math.radians(angle)
    c = (np.arange(size, dtype=np.float64) + 0.5) / size - 0.5
    ramp = 1.0 + slope * (math.cos(a) * c[None, :] + math.sin(a) * c[:, None])
    peak = float(ramp.max())
    grey = Image.fromarray(np.round(ramp / peak * 255.0).astype(np.uint8), "L")
    return Image.merge("RGB", (grey, grey, grey)), peak


_COLOUR_FIELDS = ("garment", "accent", "detail", "body", "background", "background2")


def _lit(params: GarmentParams, size: int) -> tuple[GarmentParams, Image.Image]:
    """Lighting, split in two: every colour times gain x tint x the ramp's peak (the scene is flat
    colours and their averages, so scaling the colours scales the image), and the ramp image
    (<= 1) that the finished image is multiplied by."""
    ramp, peak = _ramp(size, params.light_angle, params.light_slope)
    factors = [params.light_gain * peak * t for t in params.light_tint]

    def scale(c):
        return tuple(min(255, round(x * f)) for x, f in zip(c, factors))

    changes = {name: scale(getattr(params, name)) for name in _COLOUR_FIELDS}
    if params.occluder is not None:
        changes["occluder"] = (*params.occluder[:5], scale(params.occluder[5]))
    return replace(params, **changes), ramp


# --------------------------------------------------------------------------- ground-truth regions
def _box(frame: _Frame, pts, ss: int, size: int) -> Box:
    """Pixel box (x1, y1 exclusive) around figure points ``pts``, clipped to the image."""
    xy = frame.points(pts)
    xs, ys = [x / ss for x, _ in xy], [y / ss for _, y in xy]

    def clip(v: float) -> int:
        return min(max(int(v), 0), size)

    return clip(math.floor(min(xs))), clip(math.floor(min(ys))), clip(math.ceil(max(xs))), clip(math.ceil(max(ys)))


def _square_around(p, r) -> list[tuple[float, float]]:
    return _rect(p[0] - r, p[1] - r, p[0] + r, p[1] + r)


def _rect(x0, y0, x1, y1) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _union(boxes: list[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _regions(params: GarmentParams, frame: _Frame, ss: int, size: int) -> tuple[dict[str, Box], dict[str, list[Box]]]:
    hem = hem_height(params)
    hem_half = hem_half_width(hem)
    peplum = params.value_of("waist_detail") == 3
    arms = [
        _box(frame, _arm(side, angle, -0.05, 1.0, 0.016) + _square_around(_hand(side, angle), 0.034), ss, size)
        for side, angle in ((1, params.arm_angles[0]), (-1, params.arm_angles[1]))
    ]
    parts = {
        "sleeve_length": arms,
        "neckline_design": [_box(frame, _rect(*NECK_BOX), ss, size)],
        "garment_length": [_box(frame, _rect(-hem_half, hem - 0.05, hem_half, hem + 0.05), ss, size)],
        "waist_detail": [_box(frame, _PEPLUM_REGION if peplum else _rect(*WAIST_BOX), ss, size)],
        "pattern": [_box(frame, _rect(-0.12, 0.2, 0.12, min(hem, 0.7) - 0.015), ss, size)],
    }
    regions = {name: _union(boxes) for name, boxes in parts.items()}
    return regions, parts
