"""Attention scoring (Fig. 7's claim, measured): does a model's attribute map look where the attribute is?

For every (image, attribute) with a box in the dataset's regions file (:mod:`agman.data.regions`)
the model's attention map for that attribute is scored against the box:

* **mass in box** — the share of the map's mass inside the box;
* **box share** — the box's share of the image the model sees: what a uniform map scores (chance);
* **pointing** — pointing-game accuracy: whether the map's peak falls inside the box.

Frame convention.  Maps live on the model's input crop (``build_transform``: short side resized
to ``input_size / crop_ratio``, centred ``input_size`` square; :mod:`agman.data.crop`), on a coarse
grid of ``h x w`` cells that tile the crop evenly (4 x 4 at 64 px for a ResNet's stride 16).  Each
box is mapped from original-image pixels into the crop exactly and clipped to it; a cell counts by
the share of its area inside the box (the union of the attribute's boxes), its *coverage* ``c``.
Then, for a map ``m`` that sums to 1: mass in box ``= sum(m * c)``; box share ``= mean(c)`` (cells
are equal, so this is the box's share of the crop); pointing ``= c`` at the peak cell (the
probability that a point drawn uniformly in the peak cell lies in the box; ties share it).  So a map
entirely on cells inside the box scores mass 1 and pointing 1, and a uniform map scores the box
share on both.  Pairs whose box lies wholly outside the crop are not scored (counted as
``outside_crop``).

Each number is a mean over the scored pairs of an attribute (and over all pairs, row ``all``) with
a percentile bootstrap confidence interval (pairs resampled with replacement, seeded).
:func:`localization` scores a model on a split; :func:`score_maps` scores given maps;
:func:`localization_if_boxed` is what ``agman eval``, ``agman ablate`` and ``agman demo`` call: the
scores when the split has a regions file, nothing otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from agman.data.crop import crop_frame
from agman.data.images import load_image
from agman.data.regions import ImageRegions, read_regions_file, regions_path
from agman.data.spec import UNLABELED, DatasetError, DatasetSpec
from agman.data.transforms import build_transform
from agman.engine.report import format_table, markdown_table, write_csv
from agman.errors import InvalidValueError
from agman.fileio import atomic_write_json

METRICS = ("mass_in_box", "box_share", "pointing")
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


def score_maps(maps: np.ndarray, coverage: np.ndarray) -> dict[str, np.ndarray]:
    """Per pair: ``mass_in_box``, ``box_share`` and ``pointing`` of ``maps [N, h, w]`` (normalised
    here to sum 1) against cell ``coverage [N, h, w]`` (see the module docstring)."""
    m = np.asarray(maps, dtype=np.float64)
    c = np.asarray(coverage, dtype=np.float64)
    if m.ndim != 3 or m.shape != c.shape:
        raise ValueError(f"maps and coverage must both be [N, h, w], got {m.shape} and {c.shape}")
    if not np.all(np.isfinite(m)) or (m < 0).any():
        raise ValueError("attention maps must be finite and non-negative")
    total = m.sum(axis=(1, 2), keepdims=True)
    m = np.divide(m, total, out=np.full_like(m, 1.0 / max(1, m[0].size)), where=total > 0)
    flat_m, flat_c = m.reshape(len(m), -1), c.reshape(len(c), -1)
    peak = flat_m >= flat_m.max(axis=1, keepdims=True) * (1.0 - 1e-6)
    return {
        "mass_in_box": (flat_m * flat_c).sum(axis=1),
        "box_share": flat_c.mean(axis=1),
        "pointing": (flat_c * peak).sum(axis=1) / peak.sum(axis=1),
    }


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap confidence interval."""

    mean: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


def bootstrap_means(values: dict[str, np.ndarray], n_boot: int, rng: np.random.Generator,
                    confidence: float = CONFIDENCE) -> dict[str, Estimate]:
    """Means of equally long per-pair arrays, each with a percentile interval from ``n_boot``
    resamplings of the pairs (the same resamples for every array)."""
    n = len(next(iter(values.values())))
    if n == 0:
        return {k: Estimate(float("nan"), float("nan"), float("nan")) for k in values}
    idx = rng.integers(0, n, size=(n_boot, n)) if n_boot > 0 else None
    tail = 100 * (1 - confidence) / 2
    out = {}
    for key, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        if idx is None:
            out[key] = Estimate(float(v.mean()), float("nan"), float("nan"))
            continue
        lo, hi = np.percentile(v[idx].mean(axis=1), [tail, 100 - tail])
        out[key] = Estimate(float(v.mean()), float(lo), float(hi))
    return out


# --------------------------------------------------------------------------- result
@dataclass
class AttributeLocalization:
    """The scores of one attribute (or of all pairs, ``attribute='all'``)."""

    attribute: str
    pairs: int
    outside_crop: int
    mass_in_box: Estimate
    box_share: Estimate
    pointing: Estimate

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
    use: str = "regions"
    confidence: float = CONFIDENCE

    def row(self, attribute: str) -> AttributeLocalization:
        for r in self.rows:
            if r.attribute == attribute:
                return r
        raise KeyError(attribute)

    def meets(self, pointing_factor: float = 2.0) -> dict[str, bool]:
        """Per attribute: mass in box above the box share and pointing at least ``pointing_factor``
        times the box share (the bar of issue #11 for the demo)."""
        return {r.attribute: bool(r.mass_in_box.mean > r.box_share.mean
                                  and r.pointing.mean >= pointing_factor * r.box_share.mean) for r in self.rows}

    # -- tables
    HEADER = ("attribute", "pairs", "mass in box", "95% CI", "box share", "pointing", "95% CI",
              "mass/share", "pointing/share")

    def table_rows(self) -> list[list]:
        if not self.available:
            return [["all", "n/a", "n/a", "", "n/a", "n/a", "", "", ""]]
        out = []
        for r in [*self.rows, *([self.overall] if self.overall else [])]:
            share = r.box_share.mean
            out.append([r.attribute, r.pairs, r.mass_in_box.mean, _ci(r.mass_in_box), share, r.pointing.mean,
                        _ci(r.pointing), r.mass_in_box.mean / share if share else float("nan"),
                        r.pointing.mean / share if share else float("nan")])
        return out

    def title(self) -> str:
        if not self.available:
            return f"attention localisation, {self.model} on {self.split}: n/a (the model has no attention map)"
        return (f"attention localisation, {self.model} on {self.split}: {self.grid[0]}x{self.grid[1]} map on the "
                f"{self.input_size}-px crop (crop_ratio {self.crop_ratio:g}); {self.use} boxes; "
                f"{int(100 * self.confidence)}% bootstrap CI over pairs ({self.bootstrap} resamples, seed {self.seed})")

    def table(self) -> str:
        """The terminal table: one row per attribute and ``all``; chance for both scores is the box share."""
        return self.title() + "\n" + format_table(list(self.HEADER), self.table_rows(), digits=3)

    def markdown(self) -> str:
        return markdown_table(list(self.HEADER), self.table_rows(), digits=3)

    def to_dict(self) -> dict:
        return {
            "model": self.model, "split": self.split, "available": self.available,
            "input_size": self.input_size, "crop_ratio": self.crop_ratio,
            "grid": list(self.grid) if self.grid else None, "use": self.use,
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
              outside: dict[str, int], *, bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0
              ) -> tuple[list[AttributeLocalization], AttributeLocalization]:
    """Per-attribute and overall rows from per-pair ``scores`` (pairs of attribute ``pair_attribute``)."""
    rows = []
    for a, name in enumerate(attribute_names):
        mine = pair_attribute == a
        if not mine.any() and not outside.get(name):
            continue
        est = bootstrap_means({k: v[mine] for k, v in scores.items()}, bootstrap, np.random.default_rng([seed, a]))
        rows.append(AttributeLocalization(name, int(mine.sum()), outside.get(name, 0), *(est[k] for k in METRICS)))
    est = bootstrap_means(scores, bootstrap, np.random.default_rng([seed, len(attribute_names)]))
    overall = AttributeLocalization("all", len(pair_attribute), sum(outside.values()), *(est[k] for k in METRICS))
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
    use: str = "regions",
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
    (``annotated_only``: only those the split labels); ``use="parts"`` scores against the tighter
    part boxes where the file has them; ``max_images`` takes the first images that have boxes.
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
    maps_out, cover_out, pair_attr = [], [], []
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
        for k, ((image, boxed), im) in enumerate(zip(chunk, pil)):
            frame = crop_frame(im.width, im.height, input_size, crop_ratio)
            for a, boxes in boxed:
                _check_inside(boxes, im.size, records[image], spec.attribute_names[a])
                visible = [v for v in (frame.visible(b) for b in boxes) if v is not None]
                if not visible:
                    outside[spec.attribute_names[a]] = outside.get(spec.attribute_names[a], 0) + 1
                    continue
                maps_out.append(maps[k, a])
                cover_out.append(cell_coverage(visible, result.grid, input_size))
                pair_attr.append(a)
    if not maps_out:
        raise DatasetError(f"every box of split {split!r} lies outside the {input_size}-px crop", path)
    scores = score_maps(np.stack(maps_out), np.stack(cover_out))
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
