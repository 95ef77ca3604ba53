"""Attention scoring (Fig. 7's claim, measured) by the field's two standard measures: does a
model's attribute map look where the attribute is?

For every (image, attribute) with a region in the dataset's regions file (:mod:`agman.data.regions`)
the model's attention map for that attribute is upsampled (bilinear) to the model's input crop and
scored against the attribute's **region**: the union of its parts (each sleeve, each trouser leg;
the ``parts`` boxes, or the ``regions`` boxes of a file without parts), rasterised by pixel centres:

* **pointing** — the pointing game (Zhang et al., ECCV 2016, as TorchRay's ``benchmark/pointing_game.py``
  scores it): a hit when a disk of radius :func:`tolerance` (15 px at 224 px, scaled with the input
  size; pixels at distance < the radius) around the map's maximum meets the region.  Pixels tied
  for the maximum share the hit (so a flat map scores its chance);
* **pointing chance** — the pointing accuracy of a point drawn uniformly in the crop, with the same
  tolerance: the share of pixels whose disk meets the region;
* **energy** — the energy-based pointing game (Wang et al., Score-CAM, CVPR-W 2020): the share of
  the map's sum inside the region;
* **energy chance** — what a uniform map scores: the region's share of the crop.

Maps live on the model's input crop (``build_transform``: short side resized to ``input_size /
crop_ratio``, centred ``input_size`` square; :mod:`agman.data.crop`); each box is mapped from
original-image pixels into the crop exactly and clipped to it.  Pairs whose region lies wholly
outside the crop are not scored (counted as ``outside_crop``).

Each number is a mean over the scored pairs of an attribute with a percentile bootstrap confidence
interval (pairs resampled with replacement, seeded); row ``all`` is the mean over the attributes
(accuracy per attribute, then averaged, as the pointing game's benchmark does).
:func:`localization` scores a model on a split; :func:`score_maps` scores given maps;
:func:`localization_if_boxed` is what ``agman eval``, ``agman ablate`` and ``agman demo`` call: the
scores when the split has a regions file, nothing otherwise.  :func:`cell_coverage` (the old
cell-share geometry) stays for ``scripts/cell_probe.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from agman.data.crop import crop_frame
from agman.data.images import load_image
from agman.data.regions import ImageRegions, read_regions_file, regions_path
from agman.data.spec import UNLABELED, DatasetError, DatasetSpec
from agman.data.transforms import build_transform
from agman.engine.report import format_table, markdown_table, write_csv
from agman.errors import InvalidValueError
from agman.fileio import atomic_write_json

METRICS = ("pointing", "pointing_chance", "energy", "energy_chance")
TOLERANCE_PX = 15  # the pointing game's tolerance at REFERENCE_SIZE (Zhang et al. 2016; TorchRay's default)
REFERENCE_SIZE = 224
DEFAULT_BOOTSTRAP = 1000
CONFIDENCE = 0.95


# --------------------------------------------------------------------------- geometry and scores
def cell_coverage(boxes, grid: tuple[int, int], size: float) -> np.ndarray:
    """``[h, w]`` share of each cell of a ``grid`` tiling a ``size`` x ``size`` crop that lies inside
    the union of ``boxes`` (crop pixels ``(x0, y0, x1, y1)``, clipped here to the crop)."""
    h, w = grid
    xe, ye = np.linspace(0.0, size, w + 1), np.linspace(0.0, size, h + 1)
    b = np.clip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), 0.0, size)
    xs = np.unique(np.concatenate([xe, b[:, 0], b[:, 2]]))
    ys = np.unique(np.concatenate([ye, b[:, 1], b[:, 3]]))
    cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2  # centres of the elementary rectangles
    inside = ((cx[None, None, :] >= b[:, 0, None, None]) & (cx[None, None, :] < b[:, 2, None, None])
              & (cy[None, :, None] >= b[:, 1, None, None]) & (cy[None, :, None] < b[:, 3, None, None])).any(axis=0)
    area = np.outer(np.diff(ys), np.diff(xs)) * inside
    rows = np.searchsorted(ye, cy, side="right") - 1
    cols = np.searchsorted(xe, cx, side="right") - 1
    cover = np.zeros((h, w))
    np.add.at(cover, (rows[:, None], cols[None, :]), area)
    return cover / ((size / w) * (size / h))


def tolerance(input_size: int) -> float:
    """The pointing game's tolerance in pixels of an ``input_size`` crop: 15 px at 224 px, scaled."""
    return TOLERANCE_PX * input_size / REFERENCE_SIZE


def _index_ranges(boxes, size: int) -> np.ndarray:
    """``[K, 4]`` inclusive pixel index ranges ``(c0, r0, c1, r1)`` of the pixels whose centres lie
    in each box (crop pixels ``(x0, y0, x1, y1)``, x1 and y1 exclusive); empty boxes dropped."""
    b = np.clip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), 0.0, size)
    first = np.ceil(b[:, :2] - 0.5)
    last = np.ceil(b[:, 2:] - 0.5) - 1
    keep = (last >= first).all(axis=1)
    return np.concatenate([first, last], axis=1)[keep].astype(np.int64)


def region_masks(boxes, size: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """``(region, reach)``, both ``[size, size]`` bool: the pixels of the union of ``boxes`` (the
    attribute's parts; a pixel belongs where its centre does) and the pixels whose pointing-game
    disk (distance ``< tol``, as TorchRay's) meets the region: where a peak scores a hit."""
    grid = np.arange(size)
    region = np.zeros((size, size), dtype=bool)
    reach = np.zeros((size, size), dtype=bool)
    for c0, r0, c1, r1 in _index_ranges(boxes, size):
        region[r0:r1 + 1, c0:c1 + 1] = True
        dx = np.maximum(np.maximum(c0 - grid, grid - c1), 0)
        dy = np.maximum(np.maximum(r0 - grid, grid - r1), 0)
        reach |= (dy[:, None] ** 2 + dx[None, :] ** 2) < tol ** 2
    return region, reach


def upsample(maps: np.ndarray, size: int) -> torch.Tensor:
    """``[N, h, w]`` maps to ``[N, size, size]`` (bilinear, as the maps tile the crop evenly)."""
    m = torch.as_tensor(np.asarray(maps, dtype=np.float32))
    if m.shape[-2:] == (size, size):
        return m.double()
    return F.interpolate(m[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0].double()


def score_maps(maps: np.ndarray, regions: np.ndarray, reaches: np.ndarray) -> dict[str, np.ndarray]:
    """Per pair the :data:`METRICS` of ``maps [N, h, w]`` (upsampled here to the masks' size) against
    ``regions`` and ``reaches`` ``[N, S, S]`` (:func:`region_masks`; see the module docstring)."""
    m = np.asarray(maps)
    region = torch.as_tensor(np.asarray(regions, dtype=bool))
    reach = torch.as_tensor(np.asarray(reaches, dtype=bool))
    if m.ndim != 3 or region.ndim != 3 or len(m) != len(region) or region.shape != reach.shape:
        raise ValueError(f"maps must be [N, h, w] and regions, reaches [N, S, S], got {m.shape}, "
                         f"{tuple(region.shape)}, {tuple(reach.shape)}")
    if not np.all(np.isfinite(m)) or (m < 0).any():
        raise ValueError("attention maps must be finite and non-negative")
    up = upsample(m, region.shape[-1]).flatten(1)
    region, reach = region.flatten(1).double(), reach.flatten(1).double()
    total = up.sum(dim=1)
    energy = torch.where(total > 0, (up * region).sum(dim=1) / total.clamp_min(1e-300), region.mean(dim=1))
    peak = (up >= up.max(dim=1, keepdim=True).values * (1.0 - 1e-6)).double()
    return {
        "pointing": ((reach * peak).sum(dim=1) / peak.sum(dim=1)).numpy(),
        "pointing_chance": reach.mean(dim=1).numpy(),
        "energy": energy.numpy(),
        "energy_chance": region.mean(dim=1).numpy(),
    }


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap confidence interval."""

    mean: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


def _resample_means(values: dict[str, np.ndarray], n_boot: int, rng: np.random.Generator
                    ) -> dict[str, tuple[float, np.ndarray | None]]:
    """Per key the mean and the ``n_boot`` means of pairs resampled with replacement (the same
    resamples for every key; None without resamples or pairs)."""
    n = len(next(iter(values.values())))
    idx = rng.integers(0, n, size=(n_boot, n)) if n_boot > 0 and n > 0 else None
    out = {}
    for key, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        out[key] = (float(v.mean()) if n else float("nan"), None if idx is None else v[idx].mean(axis=1))
    return out


def _estimate(mean: float, resampled: np.ndarray | None, confidence: float) -> Estimate:
    if resampled is None:
        return Estimate(mean, float("nan"), float("nan"))
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(resampled, [tail, 100 - tail])
    return Estimate(mean, float(lo), float(hi))


def bootstrap_means(values: dict[str, np.ndarray], n_boot: int, rng: np.random.Generator,
                    confidence: float = CONFIDENCE) -> dict[str, Estimate]:
    """Means of equally long per-pair arrays, each with a percentile interval from ``n_boot``
    resamplings of the pairs (the same resamples for every array)."""
    return {k: _estimate(m, r, confidence) for k, (m, r) in _resample_means(values, n_boot, rng).items()}


# --------------------------------------------------------------------------- result
@dataclass
class AttributeLocalization:
    """The scores of one attribute (or of all pairs, ``attribute='all'``)."""

    attribute: str
    pairs: int
    outside_crop: int
    pointing: Estimate
    pointing_chance: Estimate
    energy: Estimate
    energy_chance: Estimate

    def to_dict(self) -> dict:
        return {"pairs": self.pairs, "outside_crop": self.outside_crop,
                **{k: getattr(self, k).to_dict() for k in METRICS}}

    @classmethod
    def from_dict(cls, attribute: str, data: dict) -> AttributeLocalization:
        return cls(attribute, int(data["pairs"]), int(data["outside_crop"]), *(Estimate(**data[k]) for k in METRICS))


@dataclass
class LocalizationResult:
    """Attention scores of one model on one split; ``available`` is False for a model without maps (CSN)."""

    model: str
    split: str
    available: bool
    input_size: int
    crop_ratio: float
    grid: tuple[int, int] | None = None
    rows: list[AttributeLocalization] = field(default_factory=list)
    overall: AttributeLocalization | None = None
    bootstrap: int = DEFAULT_BOOTSTRAP
    seed: int = 0
    use: str = "parts"
    confidence: float = CONFIDENCE

    @property
    def tolerance(self) -> float:
        """The pointing game's tolerance in pixels of this crop (:func:`tolerance`)."""
        return tolerance(self.input_size)

    def row(self, attribute: str) -> AttributeLocalization:
        for r in self.rows:
            if r.attribute == attribute:
                return r
        raise KeyError(attribute)

    def meets(self) -> dict[str, bool]:
        """Per attribute: pointing accuracy and energy both above their chance levels (the demo's bar)."""
        return {r.attribute: bool(r.pointing.mean > r.pointing_chance.mean and r.energy.mean > r.energy_chance.mean)
                for r in self.rows}

    # -- tables
    HEADER = ("attribute", "pairs", "pointing", "95% CI", "chance", "energy", "95% CI", "chance")

    def table_rows(self) -> list[list]:
        if not self.available:
            return [["all", "n/a", "n/a", "", "", "n/a", "", ""]]
        return [[r.attribute, r.pairs, r.pointing.mean, _ci(r.pointing), r.pointing_chance.mean,
                 r.energy.mean, _ci(r.energy), r.energy_chance.mean]
                for r in [*self.rows, *([self.overall] if self.overall else [])]]

    def title(self) -> str:
        if not self.available:
            return f"attention localisation, {self.model} on {self.split}: n/a (the model has no attention map)"
        return (f"attention localisation, {self.model} on {self.split}: pointing game (tolerance "
                f"{self.tolerance:.1f} px) and energy share of the {self.grid[0]}x{self.grid[1]} map upsampled to "
                f"the {self.input_size}-px crop (crop_ratio {self.crop_ratio:g}); {self.use} boxes; 'all' = mean "
                f"over attributes; chance = a random point / a uniform map; {int(100 * self.confidence)}% bootstrap "
                f"CI over pairs ({self.bootstrap} resamples, seed {self.seed})")

    def table(self) -> str:
        """The terminal table: one row per attribute and ``all`` (the mean over attributes)."""
        return self.title() + "\n" + format_table(list(self.HEADER), self.table_rows(), digits=3)

    def markdown(self) -> str:
        return markdown_table(list(self.HEADER), self.table_rows(), digits=3)

    def to_dict(self) -> dict:
        return {
            "model": self.model, "split": self.split, "available": self.available,
            "input_size": self.input_size, "crop_ratio": self.crop_ratio,
            "grid": list(self.grid) if self.grid else None, "use": self.use, "tolerance_px": self.tolerance,
            "bootstrap": self.bootstrap, "seed": self.seed, "confidence": self.confidence,
            "attributes": {r.attribute: r.to_dict() for r in self.rows},
            "all": self.overall.to_dict() if self.overall else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> LocalizationResult:
        """The result :meth:`to_dict` wrote (e.g. read back from ``eval-<split>.json``)."""
        rows = [AttributeLocalization.from_dict(a, r) for a, r in data["attributes"].items()]
        overall = AttributeLocalization.from_dict("all", data["all"]) if data.get("all") else None
        return cls(data["model"], data["split"], bool(data["available"]), int(data["input_size"]),
                   float(data["crop_ratio"]), tuple(data["grid"]) if data.get("grid") else None, rows, overall,
                   int(data["bootstrap"]), int(data["seed"]), data["use"], float(data["confidence"]))

    def write_json(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    def write_csv(self, path: str | Path) -> Path:
        """One row per attribute and ``all``: pairs, then mean, low, high of each score (empty when n/a)."""
        header = ["attribute", "pairs", "outside_crop",
                  *(f"{m}{s}" for m in METRICS for s in ("", "_low", "_high"))]
        rows = [[r.attribute, r.pairs, r.outside_crop,
                 *(v for m in METRICS for v in (getattr(r, m).mean, getattr(r, m).low, getattr(r, m).high))]
                for r in [*self.rows, *([self.overall] if self.overall else [])]]
        return write_csv(path, header, rows if self.available else [["all", "n/a", "n/a"]])


def _ci(e: Estimate) -> str:
    return "" if np.isnan(e.low) else f"{e.low:.3f}-{e.high:.3f}"


def summarise(attribute_names: list[str], pair_attribute: np.ndarray, scores: dict[str, np.ndarray],
              outside: dict[str, int], *, bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0,
              confidence: float = CONFIDENCE) -> tuple[list[AttributeLocalization], AttributeLocalization]:
    """Per-attribute rows from per-pair ``scores`` (pairs of attribute ``pair_attribute``) and the
    ``all`` row: the mean over the scored attributes (accuracy per attribute, then averaged, as the
    pointing game does it), its interval from the per-attribute resamples averaged."""
    rows, per_attribute = [], []
    for a, name in enumerate(attribute_names):
        mine = pair_attribute == a
        if not mine.any() and not outside.get(name):
            continue
        res = _resample_means({k: v[mine] for k, v in scores.items()}, bootstrap, np.random.default_rng([seed, a]))
        rows.append(AttributeLocalization(name, int(mine.sum()), outside.get(name, 0),
                                          *(_estimate(*res[k], confidence) for k in METRICS)))
        if mine.any():
            per_attribute.append(res)

    def macro(key: str) -> Estimate:
        boots = [r[key][1] for r in per_attribute]
        mean = float(np.mean([r[key][0] for r in per_attribute])) if per_attribute else float("nan")
        return _estimate(mean, None if not boots or boots[0] is None else np.mean(boots, axis=0), confidence)

    overall = AttributeLocalization("all", len(pair_attribute), sum(outside.values()), *(macro(k) for k in METRICS))
    return rows, overall


# --------------------------------------------------------------------------- scoring a model
@torch.inference_mode()
def attention_maps_all(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor | None:
    """Every attribute's attention map in one backbone pass: ``[B, A, h, w]``, or None (no maps).
    Equal to ``model.attention_map`` per (image, attribute)."""
    state, _ = model.encode(images, with_logits=False)
    ids = torch.arange(model.n_attributes, device=images.device).expand(images.shape[0], -1)
    attention = model.head(state, ids).attention
    return None if attention is None else attention.float()


def _pairs(spec: DatasetSpec, split: str, regions: dict[int, ImageRegions], annotated_only: bool,
           max_images: int | None) -> list[tuple[int, list[tuple[int, list]]]]:
    """``[(image, [(attribute, boxes), ...]), ...]`` in image order."""
    data = spec.split(split)
    out = []
    for image in sorted(regions):
        boxed = [(a, regions[image].boxes[name]) for a, name in enumerate(spec.attribute_names)
                 if name in regions[image].boxes and (not annotated_only or data.labels[image, a] != UNLABELED)]
        if boxed:
            out.append((image, boxed))
        if max_images is not None and len(out) >= max_images:
            break
    return out


def localization(
    model: torch.nn.Module,
    spec: DatasetSpec,
    split: str = "test",
    *,
    input_size: int,
    crop_ratio: float,
    regions: str | Path | None = None,
    use: str = "parts",
    annotated_only: bool = False,
    max_images: int | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    model_name: str | None = None,
) -> LocalizationResult:
    """Score ``model``'s attention on ``split`` against the regions file (default
    ``spec.root/regions_<split>.jsonl``).  Every (image, attribute) with a box is scored
    (``annotated_only``: only those the split labels) against the union of its parts (``use="parts"``,
    the default: each sleeve, each trouser leg; a file without parts gives its one box per attribute)
    or of its ``regions`` boxes (``use="regions"``); ``max_images`` takes the first images that have boxes.
    ``input_size`` and ``crop_ratio`` must be the model's (``CheckpointInfo``): they fix the frame.
    """
    if bootstrap < 0:
        raise InvalidValueError(f"bootstrap must be >= 0 resamples, got {bootstrap}")
    name = model_name or getattr(model, "name", "") or type(model).__name__
    data = spec.split(split)
    path = Path(regions) if regions is not None else regions_path(spec.root, split)
    records = read_regions_file(path, data, spec.attribute_names, use=use)
    pairs = _pairs(spec, split, records, annotated_only, max_images)
    if not pairs:
        raise DatasetError(f"no image of split {split!r} has a box for any attribute"
                           + (" it annotates" if annotated_only else ""), path)
    result = LocalizationResult(name, split, True, int(input_size), float(crop_ratio), bootstrap=bootstrap,
                                seed=seed, use=use)
    transform = build_transform(input_size, train=False, crop_ratio=crop_ratio)
    model.eval()
    tol = tolerance(input_size)
    scored: list[dict[str, np.ndarray]] = []
    pair_attr: list[int] = []
    outside: dict[str, int] = {}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        pil = [load_image(spec.root / data.paths[image]) for image, _ in chunk]
        maps = attention_maps_all(model, torch.stack([transform(p) for p in pil]).to(device))
        if maps is None:
            result.available = False
            return result
        maps = maps.cpu().numpy()
        result.grid = tuple(int(s) for s in maps.shape[-2:])
        maps_in, region_in, reach_in = [], [], []
        for k, ((image, boxed), im) in enumerate(zip(chunk, pil)):
            frame = crop_frame(im.width, im.height, input_size, crop_ratio)
            for a, boxes in boxed:
                _check_inside(boxes, im.size, records[image], spec.attribute_names[a])
                visible = [v for v in (frame.visible(b) for b in boxes) if v is not None]
                region, reach = region_masks(visible, input_size, tol) if visible else (None, None)
                if region is None or not region.any():
                    outside[spec.attribute_names[a]] = outside.get(spec.attribute_names[a], 0) + 1
                    continue
                maps_in.append(maps[k, a])
                region_in.append(region)
                reach_in.append(reach)
                pair_attr.append(a)
        if maps_in:
            scored.append(score_maps(np.stack(maps_in), np.stack(region_in), np.stack(reach_in)))
    if not scored:
        raise DatasetError(f"every box of split {split!r} lies outside the {input_size}-px crop", path)
    scores = {k: np.concatenate([s[k] for s in scored]) for k in METRICS}
    result.rows, result.overall = summarise(spec.attribute_names, np.asarray(pair_attr), scores, outside,
                                            bootstrap=bootstrap, seed=seed)
    return result


def localization_if_boxed(model: torch.nn.Module, spec: DatasetSpec, split: str, *, input_size: int,
                          crop_ratio: float, regions: str | Path | None = None, **options) -> LocalizationResult | None:
    """:func:`localization` when ``regions`` is given or the dataset has ``regions_<split>.jsonl``;
    None when it has no boxes to score against (a model without maps gives ``available=False``)."""
    if regions is None and not regions_path(spec.root, split).is_file():
        return None
    return localization(model, spec, split, input_size=input_size, crop_ratio=crop_ratio, regions=regions, **options)


def _check_inside(boxes, size: tuple[int, int], record: ImageRegions, attribute: str) -> None:
    w, h = size
    for box in boxes:
        if box[2] > w or box[3] > h:
            raise DatasetError(f"{record.source}: {attribute} box {list(box)} reaches outside the image "
                               f"({w} x {h} pixels; x1 <= width and y1 <= height expected)")
