"""Decoded-image cache: the deterministic part of §3.1's pipeline (decode, resize, centre crop) done
once per image and stored as uint8 ``H×W×3`` rows of numpy memory-mapped arrays.

Layout.  A *store* holds the images of one image root at one setting (input size, crop ratio,
pipeline version): ``<cache dir>/<size>px-crop<ratio>-<hash>/`` where the hash covers those and
the resolved image root, so a store made with other settings is never found.  A store holds
*parts*, one per ``agman data cache`` run that had something new to cache (usually one per
split): ``part-<key>.npy`` (``[n, S, S, 3]`` uint8, ``np.load(mmap_mode='r')``), ``.paths.json``
(the n relative paths, row order), ``.stats.npy`` (each file's size and mtime in ns when cached)
and ``.json`` (the manifest, written last: a part without it is unfinished).  Readers address
images by relative path, so any subset of cached images (a split, the images a split's queries
use) is served; a path cached twice is read from the newest part.

Why a memmap: every record has the same size, so image ``i`` is one slice at a fixed offset
(random access for triplets costs one page-cache read, no per-record decoding, no index
lookups), workers share the OS page cache, and it needs nothing beyond numpy.  LMDB would add a
dependency and a per-record copy for equal-sized records; WebDataset tars are built for
sequential streaming, not for the random anchor/positive/negative reads of triplet training.

Safety.  A cache is used only when (a) its store matches the size, crop ratio and image root
asked for (by construction of the store name) and (b) every requested file still has the size
and mtime it had when cached; otherwise :func:`image_dataset` warns and reads the files
(``cache='auto'``) or raises :class:`StaleCacheError` (``cache='require'``).

Building is resumable: a part is written to ``.partial.npy`` in chunks; after each chunk the
memmap is flushed and a done-mask saved atomically, so an interrupted run continues with the
chunks not yet done.  The finished array is renamed into place and its manifest written last.

Reading yields what :class:`agman.data.images.ImageListDataset` and
:class:`~agman.data.images.TripletImageDataset` yield from the files, bit for bit: the same
random flip draws (``torch.rand(1) < 0.5`` per image, in the same order), the same ``/255`` and
ImageNet normalisation.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from agman.data.images import ImageListDataset, ImageLoadError, TripletImageDataset, load_image
from agman.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform, model_view
from agman.errors import AgmanError, InvalidValueError
from agman.fileio import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bumped whenever what a record holds changes; part of every store name."""
CACHE_DIR_ENV = "AGMAN_CACHE_DIR"
CACHE_MODE_ENV = "AGMAN_CACHE"
DECODE_ENV = "AGMAN_DECODE"
DEFAULT_SUBDIR = ".agman-cache"
CACHE_MODES = ("auto", "off", "require")


class StaleCacheError(AgmanError):
    """A cache exists for these settings but does not cover the requested images or was made
    from other files; the message names the image and how to rebuild."""


# --------------------------------------------------------------------------- where
def cache_root(image_root: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The folder holding the stores: ``cache_dir``, else ``$AGMAN_CACHE_DIR``, else ``<image root>/.agman-cache``."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    return Path(image_root) / DEFAULT_SUBDIR


def store_dir(image_root: str | Path, input_size: int, crop_ratio: float, cache_dir: str | Path | None = None) -> Path:
    """The store for ``(image root, input size, crop ratio)`` under :func:`cache_root`."""
    build_transform(input_size, False, crop_ratio)  # the same checks on size and ratio as the file pipeline
    settings = {"version": CACHE_VERSION, "input_size": int(input_size), "crop_ratio": float(crop_ratio),
                "resize": int(round(input_size / crop_ratio)),
                "pipeline": "PIL RGB > Resize(short side, antialias) > CenterCrop",
                "root": str(Path(image_root).resolve())}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return cache_root(image_root, cache_dir) / f"{int(input_size)}px-crop{float(crop_ratio):g}-{digest}"


def _file_stats(root: Path, paths: list[str]) -> np.ndarray:
    """``[n, 2]`` int64: each file's size and mtime (ns); an ImageLoadError names a missing file."""
    out = np.zeros((len(paths), 2), dtype=np.int64)
    for i, p in enumerate(paths):
        try:
            st = os.stat(root / p)
        except FileNotFoundError:
            raise ImageLoadError(f"image file not found: {root / p}") from None
        out[i] = st.st_size, st.st_mtime_ns
    return out


# --------------------------------------------------------------------------- reading
@dataclass
class _Part:
    array_path: Path
    paths: list[str]
    stats: np.ndarray
    sequence: int


def _complete_parts(store: Path) -> list[_Part]:
    parts = []
    for manifest in sorted(store.glob("part-*.json")) if store.is_dir() else []:
        if manifest.name.endswith(".paths.json"):
            continue
        info = json.loads(manifest.read_text(encoding="utf-8"))
        stem = manifest.with_suffix("")
        paths = json.loads(Path(f"{stem}.paths.json").read_text(encoding="utf-8"))
        parts.append(_Part(Path(f"{stem}.npy"), paths, np.load(f"{stem}.stats.npy"), int(info["sequence"])))
    return sorted(parts, key=lambda p: p.sequence)


def _path_index(parts: list[_Part]) -> dict[str, tuple[int, int]]:
    """Relative path -> (part number, row); later parts win."""
    index: dict[str, tuple[int, int]] = {}
    for k, part in enumerate(parts):
        index.update((p, (k, r)) for r, p in enumerate(part.paths))
    return index


class CachedImages:
    """uint8 ``[S, S, 3]`` images of a path list, read from a store's memory-mapped parts.

    Construct with :func:`open_cache`.  The memmaps open lazily in each process (DataLoader
    workers, forked or spawned, never pickle the arrays).
    """

    def __init__(self, store: Path, parts: list[_Part], part_of: np.ndarray, row_of: np.ndarray, size: int):
        self.store, self.size = store, size
        self.array_paths = [p.array_path for p in parts]
        self.part_of, self.row_of = part_of, row_of
        self._arrays: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.part_of)

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None}

    def _open(self) -> list[np.ndarray]:
        if self._arrays is None:
            self._arrays = [np.load(p, mmap_mode="r") for p in self.array_paths]
        return self._arrays

    def __getitem__(self, index: int) -> np.ndarray:
        """Image ``index`` of the path list as a read-only ``[S, S, 3]`` uint8 view."""
        return self._open()[self.part_of[index]][self.row_of[index]]

    def batch(self, indices) -> np.ndarray:
        """``[n, S, S, 3]`` uint8 copy of the given images (one gather per part)."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), self.size, self.size, 3), dtype=np.uint8)
        arrays = self._open()
        parts = self.part_of[indices]
        for k in np.unique(parts):
            sel = np.flatnonzero(parts == k)
            out[sel] = arrays[k][self.row_of[indices[sel]]]
        return out


def open_cache(paths: list[str], root: str | Path, input_size: int, crop_ratio: float, *,
               cache_dir: str | Path | None = None, check_files: bool = True) -> CachedImages | None:
    """The cached images of ``paths`` (relative to ``root``) at these settings, or None when the
    store does not exist.  :class:`StaleCacheError` when it exists but misses an image or an
    image file changed since it was cached (size or mtime)."""
    root = Path(root)
    store = store_dir(root, input_size, crop_ratio, cache_dir)
    parts = _complete_parts(store)
    if not parts:
        return None
    index = _path_index(parts)
    part_of = np.zeros(len(paths), dtype=np.int64)
    row_of = np.zeros(len(paths), dtype=np.int64)
    rebuild = (f"(run `agman data cache` for this split with --size {input_size} --crop-ratio {crop_ratio:g} "
               f"to update it)")
    for i, p in enumerate(paths):
        where = index.get(p)
        if where is None:
            raise StaleCacheError(f"decoded-image cache {store} has no image {p} {rebuild}")
        part_of[i], row_of[i] = where
    if check_files:
        now = _file_stats(root, paths)
        then = np.stack([parts[k].stats[r] for k, r in zip(part_of, row_of)]) if len(paths) else now
        changed = np.flatnonzero(np.any(now != then, axis=1))
        if len(changed):
            p = paths[changed[0]]
            raise StaleCacheError(f"decoded-image cache {store} was made from other files: {root / p} changed "
                                  f"since it was cached (size/mtime), and {len(changed) - 1} more {rebuild}")
    return CachedImages(store, parts, part_of, row_of, int(input_size))


def to_model_input(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., H, W, 3]`` -> normalised float ``[..., 3, H, W]``: the ToTensor + Normalize of
    :func:`agman.data.transforms.build_transform`, the same float operations, so the same bits."""
    t = torch.as_tensor(image)
    t = t.movedim(-1, -3).contiguous().to(torch.float32).div(255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=t.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=t.device).view(-1, 1, 1)
    return t.sub_(mean).div_(std)


class CachedImageDataset(ImageListDataset):
    """What :class:`~agman.data.images.ImageListDataset` with :func:`build_transform` yields —
    ``(tensor [3, S, S], index)`` — read from a cache; ``train`` adds the random horizontal flip
    with the same ``torch.rand(1) < 0.5`` draw as ``RandomHorizontalFlip``."""

    def __init__(self, cache: CachedImages, paths: list[str], root: str | Path | None, train: bool):
        super().__init__(paths, root, transform=None)
        self.cache, self.train = cache, train

    def __getitem__(self, index: int):
        image = self.cache[index]
        if self.train and torch.rand(1) < 0.5:
            image = image[:, ::-1]
        return to_model_input(np.array(image, order="C")), index


# --------------------------------------------------------------------------- choosing
def image_dataset(paths: list[str], root: str | Path | None, *, input_size: int, crop_ratio: float, train: bool,
                  cache: str | None = None, cache_dir: str | Path | None = None, decode: str | None = None) -> Dataset:
    """The image dataset of ``paths`` for the model: from the decoded-image cache when one
    matches, else from the files.

    ``cache``: ``'auto'`` (use a matching cache; when the cache for these settings is missing an
    image or stale, warn and read the files), ``'off'`` (files), ``'require'`` (a missing or
    stale cache is an error); None: ``$AGMAN_CACHE``, else ``'auto'``.  ``decode`` applies to the
    files: ``'exact'`` (the reference pipeline) or ``'draft'``
    (:func:`agman.data.fastdecode.load_image_draft`: JPEGs decoded at a reduced DCT scale — faster,
    not bit-equal, see docs/training.md); None: ``$AGMAN_DECODE``, else ``'exact'``.
    """
    cache = cache or os.environ.get(CACHE_MODE_ENV) or "auto"
    if cache not in CACHE_MODES:
        raise InvalidValueError(f"cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
    if cache != "off" and root is not None:
        try:
            cached = open_cache(paths, root, input_size, crop_ratio, cache_dir=cache_dir)
        except StaleCacheError as exc:
            if cache == "require":
                raise
            log.warning("%s; reading the image files instead", exc)
            cached = None
        if cached is not None:
            log.info("reading %d images from the decoded-image cache %s", len(paths), cached.store)
            return CachedImageDataset(cached, paths, root, train)
        wanted = store_dir(root, input_size, crop_ratio, cache_dir)
        if cache == "require":
            raise StaleCacheError(f"no decoded-image cache at {wanted} "
                                  f"(make one with `agman data cache` --size {input_size} --crop-ratio {crop_ratio:g})")
        others = sorted(p.name for p in wanted.parent.glob("*px-crop*") if p != wanted)
        if others:
            log.info("decoded-image caches in %s are for other settings (%s), none for %d px, crop ratio %g: "
                     "reading the image files", wanted.parent, ", ".join(others), input_size, crop_ratio)
    transform = build_transform(input_size, train, crop_ratio)
    decode = decode or os.environ.get(DECODE_ENV) or "exact"
    if decode == "draft":
        from agman.data.fastdecode import DraftImageListDataset

        return DraftImageListDataset(paths, root, transform, int(round(input_size / crop_ratio)))
    if decode != "exact":
        raise InvalidValueError(f"decode must be 'exact' or 'draft', got {decode!r}")
    return ImageListDataset(paths, root, transform)


def triplet_dataset(paths: list[str], root: str | Path, *, input_size: int, crop_ratio: float,
                    triplets: np.ndarray | None = None, **options) -> TripletImageDataset:
    """A :class:`~agman.data.images.TripletImageDataset` (train pipeline) whose images come from
    :func:`image_dataset` (``options``: cache, cache_dir, decode)."""
    dataset = TripletImageDataset(paths, root, None, triplets)
    dataset.images = image_dataset(paths, root, input_size=input_size, crop_ratio=crop_ratio, train=True, **options)
    return dataset


# --------------------------------------------------------------------------- building
@dataclass
class CacheReport:
    """What :func:`build_cache` did."""

    store: Path
    images: int
    new: int
    seconds: float
    part: Path | None = None


def _decode_rows(root: Path, paths: list[str], input_size: int, crop_ratio: float, out: np.ndarray) -> None:
    for i, p in enumerate(paths):
        out[i] = np.asarray(model_view(load_image(root / p), input_size, crop_ratio))


def build_cache(paths: list[str], root: str | Path, input_size: int, crop_ratio: float, *,
                cache_dir: str | Path | None = None, workers: int = 0, chunk: int = 256, progress: bool = True,
                label: str = "") -> CacheReport:
    """Cache ``paths`` (relative to ``root``): the ones not cached yet, or whose file changed, go
    into a new part; an interrupted run of the same call continues where it stopped."""
    start = time.perf_counter()
    root = Path(root)
    store = store_dir(root, input_size, crop_ratio, cache_dir)
    unique = list(dict.fromkeys(paths))
    stats = _file_stats(root, unique)
    parts = _complete_parts(store)
    index = _path_index(parts)
    todo = [i for i, p in enumerate(unique)
            if p not in index or np.any(parts[index[p][0]].stats[index[p][1]] != stats[i])]
    if not todo:
        return CacheReport(store, len(unique), 0, time.perf_counter() - start)
    new_paths = [unique[i] for i in todo]
    new_stats = stats[todo]
    key = hashlib.sha256(json.dumps([new_paths, new_stats.tolist()]).encode()).hexdigest()[:12]
    stem = store / f"part-{key}"
    partial, done_path = Path(f"{stem}.partial.npy"), Path(f"{stem}.done.npy")
    n = len(new_paths)
    store.mkdir(parents=True, exist_ok=True)
    if partial.exists() and done_path.exists():
        done = np.load(done_path)
        array = np.load(partial, mmap_mode="r+")
        log.info("resuming %s: %d of %d images done", partial, int(done.sum()), n)
    else:
        done = np.zeros(n, dtype=bool)
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(n, input_size, input_size, 3))
        _save_npy(done_path, done)

    _fill(array, done, done_path, lambda rows, out: _decode_rows(root, [new_paths[i] for i in rows], input_size,
                                                                 crop_ratio, out),
          chunk, workers, progress, label)
    array.flush()
    array = None  # unmap before the rename
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    _save_npy(Path(f"{stem}.stats.npy"), new_stats)
    atomic_write_json(Path(f"{stem}.paths.json"), new_paths, indent=0)
    os.replace(partial, f"{stem}.npy")
    import PIL
    import torchvision

    sequence = max((p.sequence for p in parts), default=-1) + 1
    atomic_write_json(Path(f"{stem}.json"), {
        "version": CACHE_VERSION, "sequence": sequence, "images": n, "input_size": int(input_size),
        "crop_ratio": float(crop_ratio), "image_root": str(root.resolve()), "label": label,
        "pillow": PIL.__version__, "torchvision": torchvision.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, indent=1)
    done_path.unlink(missing_ok=True)
    return CacheReport(store, len(unique), n, time.perf_counter() - start, Path(f"{stem}.npy"))


def _fill(array: np.ndarray, done: np.ndarray, done_path: Path, decode, chunk: int, workers: int, progress: bool,
          label: str) -> None:
    """Decode the rows not ``done`` into ``array`` (``decode(rows, out)``), ``chunk`` rows at a
    time on ``workers`` threads (PIL releases the GIL while decoding and resizing); after each
    chunk flush the memmap, then record its rows in the done-mask file (atomically)."""
    todo = np.flatnonzero(~done)
    chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]

    def work(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *array.shape[1:]), dtype=np.uint8)
        decode(rows, out)
        array[rows] = out
        return rows

    bar = tqdm(total=len(done), initial=int(done.sum()), unit="img", desc=f"caching {label}".strip(),
               disable=not progress, dynamic_ncols=True)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for rows in pool.map(work, chunks):
            array.flush()
            done[rows] = True
            _save_npy(done_path, done)
            bar.update(len(rows))
    bar.close()


def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array))
