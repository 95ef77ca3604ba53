"""agman's default dataset: rendered garments written in the ASEN and CSN layouts, with regions.

``generate(out_dir, n_images, size, seed, mode)`` renders ``n_images`` garments (see
:mod:`agman.data.synthetic_render` for the attributes and nuisances) and writes::

    out_dir/
      meta.json, filenames_{train,valid,test}.txt, label_*.txt,
      query_{valid,test}.txt, candidate_{valid,test}.txt      ASEN layout (agman.data.layouts.write_asen)
      images/{train,valid,test}/NNNNNN.png
      regions_{train,valid,test}.jsonl                        ground-truth boxes, one JSON object per image
      triplets/filenames.json, triplets/meta.json,
      triplets/tripletlists/<attribute>_tripletlist_{train,val,test}.txt   CSN (Zappos50k) layout
      README.md, contact_sheet.png                            dataset card
      synth.json                                              the arguments (``reuse=True`` checks them)

Splits are 8:1:1; in valid and test one image in five is a query, the others candidates.  In
``mode='all'`` every image is annotated with every attribute (like DeepFashion); in
``mode='single'`` each image with one attribute dealt at random, although every attribute is drawn.
``mode='fashionai'`` draws other garments (:mod:`agman.data.synthetic_fashion`): five garment types,
each annotated with the one attribute that follows from its type, as in FashionAI.
Within each split the values of each attribute are balanced (counts differ by at most one).

Everything is a function of the arguments: image ``k`` (numbered across splits) draws its nuisances
from ``np.random.default_rng([seed, 0, k])``, so images can be rendered in any order or in parallel
(``workers``) and the same arguments give byte-identical files.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from agman.data.layouts import write_asen
from agman.data.spec import SPLIT_NAMES, UNLABELED, Attribute, DatasetSpec, Split
from agman.data.synthetic_fashion import (
    CARRIES,
    FASHION_ATTRIBUTES,
    GARMENTS,
    FashionParams,
    render_fashion,
    sample_fashion_params,
)
from agman.data.synthetic_lists import write_regions, write_triplets
from agman.data.synthetic_plan import PlannedImage
from agman.data.synthetic_render import ATTRIBUTES, GarmentParams, render, sample_params
from agman.errors import AlreadyExistsError, InvalidValueError
from agman.fileio import atomic_write_text

DEFAULT_IMAGES = 4000
DEFAULT_SIZE = 96
DATASET_NAME = "agman-synth"
MODES = ("all", "single", "fashionai")
SPLIT_SHARES = (0.8, 0.1, 0.1)
QUERY_SHARE = 0.2  # queries : candidates = 1 : 4
TRIPLETS_PER_IMAGE = 5  # default triplets per attribute and split, per image of the split
PNG_COMPRESS_LEVEL = 1  # zlib level: the encoder is half the cost of an image; level 1 is ~20% faster than 3
FORMAT_VERSION = 1

# Second entry of every seed sequence: which random stream it is.
_IMAGE_STREAM, _LABEL_STREAM, _TRIPLET_STREAM = 0, 1, 2

_OUTPUT_FILES = (
    "meta.json",
    "README.md",
    "contact_sheet.png",
    "synth.json",
    *(f"{kind}_{split}.txt" for kind in ("filenames", "label", "query", "candidate") for split in SPLIT_NAMES),
    *(f"regions_{split}.jsonl" for split in SPLIT_NAMES),
)
_OUTPUT_DIRS = ("images", "triplets")


def split_sizes(n_images: int) -> dict[str, int]:
    """Images per split, 8:1:1."""
    n_train = round(SPLIT_SHARES[0] * n_images)
    n_valid = round(SPLIT_SHARES[1] * n_images)
    return {"train": n_train, "valid": n_valid, "test": n_images - n_train - n_valid}


def attributes_of(mode: str) -> tuple[Attribute, ...]:
    """The attributes of a set made in ``mode``: the garment's five, or FashionAI-like garments' five."""
    _check_mode(mode)
    return FASHION_ATTRIBUTES if mode == "fashionai" else ATTRIBUTES


def minimum_images(mode: str) -> int:
    """The smallest ``n_images`` for which every value has two annotated images in every split."""
    _check_mode(mode)
    n = 10
    while not _plan_is_complete(n, mode):
        n += 1
    return n


def _plan_is_complete(n_images: int, mode: str) -> bool:
    attributes = attributes_of(mode)
    for n_split in split_sizes(n_images).values():
        groups = [n_split] * len(attributes) if mode == "all" else _balanced_counts(n_split, len(attributes))
        if any(g // attr.n_values < 2 for g, attr in zip(groups, attributes)):
            return False
    return True


def _balanced_counts(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InvalidValueError(f"unknown annotation mode {mode!r}: expected 'all' (every image, every attribute), "
                                "'single' (one attribute per image) or 'fashionai' (garment types, one attribute each)")


def plan_dataset(n_images: int, seed: int, mode: str = "all") -> list[PlannedImage]:
    """Assign every image its split, true values, annotated attributes and query/candidate role."""
    _check_mode(mode)
    if n_images < minimum_images(mode):
        raise InvalidValueError(
            f"{n_images} images are too few for mode {mode!r}: every value needs two annotated images in each "
            f"split (8:1:1); use at least {minimum_images(mode)}"
        )
    if mode == "fashionai":
        return _plan_fashion(n_images, seed)
    plan: list[PlannedImage] = []
    for s, (split, n) in enumerate(split_sizes(n_images).items()):
        rng = np.random.default_rng([seed, _LABEL_STREAM, s])
        values = np.zeros((n, len(ATTRIBUTES)), dtype=np.int64)
        if mode == "all":
            group = np.zeros(n, dtype=np.int64)
            for a, attr in enumerate(ATTRIBUTES):
                values[:, a] = rng.permutation(np.arange(n) % attr.n_values)
        else:
            group = rng.permutation(np.arange(n) % len(ATTRIBUTES))
            for a, attr in enumerate(ATTRIBUTES):
                mine = group == a
                values[mine, a] = rng.permutation(np.arange(int(mine.sum())) % attr.n_values)
                values[~mine, a] = rng.integers(0, attr.n_values, int((~mine).sum()))
        annotated = [tuple(range(len(ATTRIBUTES))) if mode == "all" else (int(g),) for g in group]
        is_query = _pick_queries(rng, values, annotated, group) if split != "train" else np.zeros(n, dtype=bool)
        offset = len(plan)
        plan += [
            PlannedImage(split, i, offset + i, tuple(int(v) for v in values[i]), annotated[i], bool(is_query[i]))
            for i in range(n)
        ]
    return plan


def _plan_fashion(n_images: int, seed: int) -> list[PlannedImage]:
    """Garment types dealt round-robin within each split, then shuffled; type ``t`` is annotated with
    attribute ``t`` (balanced values), the other attributes it shows get uniform values, the rest -1."""
    names = [a.name for a in FASHION_ATTRIBUTES]
    plan: list[PlannedImage] = []
    for s, (split, n) in enumerate(split_sizes(n_images).items()):
        rng = np.random.default_rng([seed, _LABEL_STREAM, s])
        group = rng.permutation(np.arange(n) % len(GARMENTS))
        values = np.full((n, len(names)), -1, dtype=np.int64)
        for t, garment in enumerate(GARMENTS):
            mine = group == t
            for k, name in enumerate(CARRIES[garment]):
                a = names.index(name)
                count, n_values = int(mine.sum()), FASHION_ATTRIBUTES[a].n_values
                if k == 0:  # the annotated attribute: balanced values
                    values[mine, a] = rng.permutation(np.arange(count) % n_values)
                else:
                    values[mine, a] = rng.integers(0, n_values, count)
        annotated = [(names.index(CARRIES[GARMENTS[g]][0]),) for g in group]
        is_query = _pick_queries(rng, values, annotated, group) if split != "train" else np.zeros(n, dtype=bool)
        offset = len(plan)
        plan += [
            PlannedImage(split, i, offset + i, tuple(int(v) for v in values[i]), annotated[i], bool(is_query[i]),
                         GARMENTS[int(group[i])])
            for i in range(n)
        ]
    return plan


def _pick_queries(
    rng: np.random.Generator, values: np.ndarray, annotated: list[tuple[int, ...]], group: np.ndarray
) -> np.ndarray:
    """One image in five of each annotation group becomes a query, keeping a candidate for every value."""
    n = len(values)
    left = {}  # (attribute, value) -> candidates left
    for i in range(n):
        for a in annotated[i]:
            left[(a, values[i, a])] = left.get((a, values[i, a]), 0) + 1
    groups, sizes = np.unique(group, return_counts=True)
    wanted = {int(g): round(QUERY_SHARE * int(c)) for g, c in zip(groups, sizes)}
    is_query = np.zeros(n, dtype=bool)
    for i in rng.permutation(n).tolist():
        g = int(group[i])
        keys = [(a, values[i, a]) for a in annotated[i]]
        if wanted[g] > 0 and all(left[k] >= 2 for k in keys):
            is_query[i] = True
            wanted[g] -= 1
            for k in keys:
                left[k] -= 1
    return is_query


def image_params(seed: int, item: PlannedImage) -> GarmentParams:
    """The parameter record of a planned image (its nuisances come from its own random stream)."""
    rng = np.random.default_rng([seed, _IMAGE_STREAM, item.number])
    if item.garment is not None:
        return sample_fashion_params(rng, item.garment, item.values)
    return sample_params(rng, item.values)


def render_image(params: GarmentParams, size: int, **options):
    """Render a parameter record of either kind (:func:`render` or :func:`render_fashion`)."""
    return (render_fashion if isinstance(params, FashionParams) else render)(params, size, **options)


# --------------------------------------------------------------------------- rendering to files
def _render_batch(job: tuple[int, int, str, list[PlannedImage]]) -> list[dict]:
    """Render and save a batch of images; return their region records (runs in worker processes)."""
    seed, size, out_dir, items = job
    records = []
    for item in items:
        rendering = render_image(image_params(seed, item), size)
        path = Path(out_dir) / item.path
        rendering.image.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        records.append(_region_record(item, rendering))
    return records


def _region_record(item: PlannedImage, rendering) -> dict:
    attributes = FASHION_ATTRIBUTES if item.garment is not None else ATTRIBUTES
    names = [a.name for a in attributes]
    shown = [name for name in names if name in rendering.regions]
    record = {"image": item.index, "path": item.path}
    if item.garment is not None:
        record["garment"] = item.garment
    record.update({
        "values": {a.name: a.values[v] for a, v in zip(attributes, item.values) if v >= 0},
        "annotated": [names[a] for a in item.annotated],
        "regions": {name: list(rendering.regions[name]) for name in shown},
        "parts": {name: [list(b) for b in rendering.parts[name]] for name in shown},
    })
    return record


def _render_all(plan: list[PlannedImage], seed: int, size: int, out: Path, workers: int, progress: bool) -> list[dict]:
    from tqdm import tqdm

    for split in SPLIT_NAMES:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
    batch = 64
    jobs = [(seed, size, str(out), plan[i : i + batch]) for i in range(0, len(plan), batch)]
    records: list[dict] = []
    with tqdm(total=len(plan), desc="rendering garments", unit="img", disable=not progress) as bar:
        if workers <= 1:
            results = map(_render_batch, jobs)
            pool = None
        else:
            import multiprocessing

            pool = multiprocessing.get_context("spawn").Pool(workers)
            results = pool.imap(_render_batch, jobs)
        try:
            for chunk in results:
                records += chunk
                bar.update(len(chunk))
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    return records


# --------------------------------------------------------------------------- layouts
def _spec(plan: list[PlannedImage], out: Path, attributes: tuple[Attribute, ...]) -> DatasetSpec:
    splits = {}
    for split in SPLIT_NAMES:
        items = [p for p in plan if p.split == split]
        labels = np.full((len(items), len(attributes)), UNLABELED, dtype=np.int32)
        queries, candidates = [], []
        for item in items:
            for a in item.annotated:
                labels[item.index, a] = item.values[a]
                if split != "train":
                    (queries if item.is_query else candidates).append((item.index, a, item.values[a]))
        splits[split] = Split(
            split,
            [p.path for p in items],
            labels,
            np.asarray(queries, dtype=np.int64).reshape(-1, 3),
            np.asarray(candidates, dtype=np.int64).reshape(-1, 3),
        )
    return DatasetSpec(DATASET_NAME, out, list(attributes), splits, source=str(out / "meta.json"))


def default_triplet_counts(n_images: int) -> tuple[int, int, int]:
    """Triplets per attribute in train, valid, test: ``TRIPLETS_PER_IMAGE`` per image of the split."""
    return tuple(TRIPLETS_PER_IMAGE * n for n in split_sizes(n_images).values())


# --------------------------------------------------------------------------- the whole set
def _settings(n_images: int, size: int, seed: int, mode: str, triplets: tuple[int, int, int]) -> dict:
    from agman import __version__

    return {
        "generator": "agman.data.synthetic",
        "format_version": FORMAT_VERSION,
        "agman_version": __version__,
        "images": n_images,
        "size": size,
        "seed": seed,
        "mode": mode,
        "triplets": list(triplets),
    }


def _prepare_output(out: Path) -> None:
    """Empty folder: fine.  A previous synthetic set: its files are replaced.  Anything else: refuse."""
    if out.exists() and not out.is_dir():
        raise AlreadyExistsError(f"{out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return
    if not (out / "synth.json").is_file():
        raise AlreadyExistsError(
            f"{out} is not empty and holds no synthetic set (no synth.json): choose an empty or new folder"
        )
    for name in _OUTPUT_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)
    for name in _OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)


def generate(
    out_dir: str | Path,
    n_images: int = DEFAULT_IMAGES,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    mode: str = "all",
    progress: bool = True,
    *,
    workers: int = 1,
    triplets: tuple[int, int, int] | None = None,
    reuse: bool = False,
) -> Path:
    """Render the synthetic set into ``out_dir`` (layouts in the module docstring); return ``out_dir``.

    ``triplets`` = triplets per attribute in (train, valid, test) of the CSN layout (default
    :func:`default_triplet_counts`).  ``workers`` > 1 renders in that many processes (same bytes).
    ``reuse=True`` returns at once when ``out_dir`` already holds a complete set made with the same
    arguments.  A non-empty ``out_dir`` that is not a synthetic set raises FileExistsError.
    """
    from agman.data.synthetic_card import write_card

    _check_mode(mode)
    if size < 32:
        raise InvalidValueError(f"size must be at least 32 pixels (attributes are not visible below), got {size}")
    counts = tuple(int(c) for c in (triplets if triplets is not None else default_triplet_counts(n_images)))
    if len(counts) != 3 or min(counts) < 0:
        raise InvalidValueError(f"triplets must be three non-negative counts (train, valid, test), got {triplets!r}")
    out = Path(out_dir)
    settings = _settings(n_images, size, seed, mode, counts)
    if reuse and _is_complete(out, settings):
        return out
    plan = plan_dataset(n_images, seed, mode)
    _prepare_output(out)
    atomic_write_text(out / "synth.json", json.dumps({**settings, "complete": False}, indent=2) + "\n")
    records = _render_all(plan, seed, size, out, max(1, int(workers)), progress)
    attributes = attributes_of(mode)
    spec = _spec(plan, out, attributes)
    write_asen(spec, out)
    write_regions(plan, records, out)
    write_triplets(plan, [seed, _TRIPLET_STREAM], counts, out, attributes)
    write_card(out, spec, settings)
    atomic_write_text(out / "synth.json", json.dumps({**settings, "complete": True}, indent=2) + "\n")
    return out


def _is_complete(out: Path, settings: dict) -> bool:
    try:
        found = json.loads((out / "synth.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return found == {**settings, "complete": True}
