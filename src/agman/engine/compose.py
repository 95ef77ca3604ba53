"""Which YAML files make a config: a file and its ``base:`` chain, or a dataset and a model composed by name.

The packaged configs (``src/agman/configs/``, linked as ``configs/`` at the repository root)::

    datasets/<dataset>.yaml   where the data is and the settings all models share on it
                              (``base: _paper.yaml`` for the paper's §3.1 settings)
    models/<model>.yaml       the model and its loss, as the paper / the released code build it
    <dataset>/<preset>.yaml   a named preset of one dataset (``synthetic/demo.yaml``)

``--config configs/<dataset>/<model>.yaml`` (also ``<dataset>/<model>``, with or without
``configs/`` and ``.yaml``) names the composition: ``models/<model>.yaml``, then
``datasets/<dataset>.yaml`` (its ``base:`` chain first), then the dataset file's
``per_model: {<model>: {section: {key: value}}}`` entry, the settings of that one dataset x model
cell.  A reference is read as a file when one exists (relative to the working directory first,
then inside the package); a file's ``base:`` entries (a name or a list, merged left to right, the
file's own keys last) are references too, looked up beside the file first.

:func:`config_layers` returns the mappings in merge order, each with the file it came from;
:mod:`agman.engine.config` merges and checks them.  (This module imports nothing heavy, so the
command line can list the configs in ``--help``.)
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from agman.errors import UsageError

PACKAGED_PREFIX = "configs"
DATASETS, MODELS = "datasets", "models"
PER_MODEL = "per_model"

Layer = tuple[str, dict]


class ConfigError(UsageError, ValueError):
    """A config file or override is wrong; the message names the key and where it came from."""


@dataclass(frozen=True)
class Cell:
    """One dataset x model composition."""

    dataset: str
    model: str

    @property
    def name(self) -> str:
        return f"{PACKAGED_PREFIX}/{self.dataset}/{self.model}.yaml"


def packaged_config_dir() -> Path:
    return Path(str(resources.files("agman") / "configs"))


def _names(folder: str, root: Path | None = None) -> list[str]:
    files = ((root or packaged_config_dir()) / folder).glob("*.yaml")
    return sorted(p.stem for p in files if not p.stem.startswith("_"))


def datasets() -> list[str]:
    return _names(DATASETS)


def models() -> list[str]:
    return _names(MODELS)


def presets() -> list[str]:
    """Packaged preset files as ``configs/<dataset>/<name>.yaml``."""
    root = packaged_config_dir()
    files = [p for d in datasets() for p in (root / d).glob("*.yaml")]
    return sorted(f"{PACKAGED_PREFIX}/{p.relative_to(root).as_posix()}" for p in files)


def list_configs() -> list[str]:
    """Every packaged config: each dataset x model composition and each preset."""
    return sorted([Cell(d, m).name for d in datasets() for m in models()] + presets())


def describe() -> str:
    """One paragraph for ``--help``: what can be composed."""
    return (f"--config DATASET/MODEL composes configs/datasets/DATASET.yaml with configs/models/MODEL.yaml "
            f"(datasets: {', '.join(datasets())}; models: {', '.join(models())}); presets: "
            + ", ".join(p.removeprefix(f'{PACKAGED_PREFIX}/').removesuffix('.yaml') for p in presets())
            + "; or any YAML file of your own (base: DATASET/MODEL to start from one).")


# --------------------------------------------------------------------------- resolving names
def _with_suffix(p: Path) -> list[Path]:
    return [p] if p.suffix == ".yaml" else [p, p.with_suffix(".yaml")]


def resolve(reference: str | Path) -> Path | Cell:
    """The file ``reference`` names (as given, then inside the package), else the composition
    ``<dataset>/<model>`` it spells; ConfigError listing what exists otherwise."""
    p = Path(reference)
    for c in _with_suffix(p):
        if c.is_file():
            return c
    root = packaged_config_dir()
    if p.is_absolute():
        try:
            parts = p.relative_to(root).parts
        except ValueError:
            parts = ()
    else:
        parts = p.parts[1:] if p.parts and p.parts[0] == PACKAGED_PREFIX else p.parts
    if parts:
        for c in _with_suffix(root.joinpath(*parts)):
            if c.is_file():
                return c
        if len(parts) == 2 and parts[0] in datasets() and Path(parts[1]).stem in models():
            return Cell(parts[0], Path(parts[1]).stem)
    raise ConfigError(f"config file not found: {reference} ({describe()})")


def sibling(reference: str | Path, model: str) -> str:
    """The config of ``model`` beside ``reference``: same dataset, or ``<folder>/<model>.yaml`` of a file."""
    found = resolve(reference)
    if isinstance(found, Cell):
        return Cell(found.dataset, model).name
    return str(found.parent / f"{model}.yaml")


# --------------------------------------------------------------------------- reading
def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def _file_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[Layer]:
    """The file's base chain then the file itself, in merge order."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'base' inheritance loops through {', '.join(str(s) for s in seen)}")
    data = _read_yaml(path)
    bases = data.pop("base", None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: 'base' must be a file name or a list of file names, got {bases!r}")
    layers: list[Layer] = []
    for name in bases:
        layers += _reference_layers(_resolve_base(path, name), seen + (path,))
    return layers + [(str(path), data)]


def _resolve_base(path: Path, name: str) -> Path | Cell:
    """A ``base:`` entry: beside the file first, then as any ``--config`` reference."""
    for candidate in (path.parent / name, name):
        try:
            return resolve(candidate)
        except ConfigError:
            continue
    raise ConfigError(f"{path}: base config not found: {name} (looked beside the file, then: {describe()})")


def _cell_layers(cell: Cell, seen: tuple[Path, ...] = ()) -> list[Layer]:
    root = packaged_config_dir()
    dataset = _file_layers(root / DATASETS / f"{cell.dataset}.yaml", seen)
    per_model = []
    for where, data in dataset:
        cells = data.pop(PER_MODEL, None) or {}
        if not isinstance(cells, dict):
            raise ConfigError(f"{where}: {PER_MODEL} must map model names to settings, got {cells!r}")
        if cell.model in cells:
            per_model.append((f"{where}: {PER_MODEL}.{cell.model}", cells[cell.model]))
    return _file_layers(root / MODELS / f"{cell.model}.yaml", seen) + dataset + per_model


def _reference_layers(found: Path | Cell, seen: tuple[Path, ...] = ()) -> list[Layer]:
    return _cell_layers(found, seen) if isinstance(found, Cell) else _file_layers(found, seen)


def config_layers(reference: str | Path) -> tuple[str, list[Layer]]:
    """``(what to record as the config's path, [(file, mapping), ...] in merge order)``."""
    found = resolve(reference)
    return (found.name if isinstance(found, Cell) else str(found)), _reference_layers(found)
