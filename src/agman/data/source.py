"""Opening the dataset a run names: a folder in any layout, or agman's synthetic set rendered there first.

A training, evaluation or demo command never overwrites an existing dataset.  The synthetic
generation settings (``images``, ``size``, ``seed``, ``mode``) apply only when the folder is
absent or empty; a folder that already holds a synthetic set rendered with the same settings is
used as it is (an interrupted rendering with those settings is finished); anything else — a set
rendered with other settings, or other files — stops with a message that says what differs and
how to use the folder as it is (``data.synthetic=null``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from agman.data.layouts import open_dataset
from agman.data.spec import DatasetSpec
from agman.errors import AlreadyExistsError, InvalidValueError, NotFoundError

log = logging.getLogger(__name__)

#: The generation settings a synthetic set records in ``synth.json`` and a run compares.
COMPARED = ("images", "size", "seed", "mode")


def open_data(
    root: str | Path | None,
    *,
    dataset: str | None = None,
    layout: str | None = None,
    meta: str | Path | None = None,
    yaml_config: str | Path | None = None,
    image_root: str | Path | None = None,
    synthetic: dict[str, Any] | None = None,
    progress: bool = False,
) -> DatasetSpec:
    """The dataset at ``root`` (``open_dataset``'s options); with ``synthetic`` (``images``,
    ``size``, ``seed``, ``mode``, ``workers``) the synthetic set is rendered there first when the
    folder is absent or empty (see the module docstring for a folder that is not)."""
    if not root:
        raise InvalidValueError("no dataset given: set data.root in the config (or data.root=PATH / --data PATH)")
    root = Path(root)
    if synthetic is not None:
        ensure_synthetic(root, synthetic, progress=progress)
    if not root.exists():
        raise NotFoundError(f"data root {root} does not exist (set data.root=PATH or --data PATH)")
    return open_dataset(root, dataset, layout=layout, meta=meta, yaml_config=yaml_config, image_root=image_root)


def ensure_synthetic(root: Path, settings: dict[str, Any], *, progress: bool = False) -> None:
    """Render the synthetic set into ``root`` if it is absent or empty; accept one made with the
    same ``settings``; refuse anything else (AlreadyExistsError saying what differs)."""
    from agman.data.synthetic import generate

    want = {k: settings[k] for k in COMPARED}
    workers = int(settings.get("workers", 1))
    if root.exists() and not root.is_dir():
        raise AlreadyExistsError(f"data.root {root} is a file, not a dataset folder")
    if not root.exists() or not any(root.iterdir()):
        log.info("rendering the synthetic set into %s (%s)", root, ", ".join(f"{k} {v}" for k, v in want.items()))
        generate(root, want["images"], want["size"], want["seed"], mode=want["mode"], progress=progress,
                 workers=workers)
        return
    found = _recorded_settings(root)
    if found is None:
        raise AlreadyExistsError(
            f"data.root {root} is not empty and holds no synthetic set (no readable synth.json), so the config's "
            f"data.synthetic settings cannot apply: pass data.synthetic=null to use the folder as it is, "
            f"or choose an empty or new data.root")
    differs = {k: (found.get(k), v) for k, v in want.items() if found.get(k) != v}
    if differs:
        raise AlreadyExistsError(
            f"data.root {root} holds a synthetic set rendered with other settings ("
            + ", ".join(f"{k} {have!r} there, {need!r} in the config" for k, (have, need) in differs.items())
            + "); it is left as it is: pass data.synthetic=null to use it, or choose another data.root")
    if not found.get("complete"):  # an interrupted rendering of these very settings: finish it
        log.info("finishing the interrupted rendering of the synthetic set in %s", root)
        generate(root, want["images"], want["size"], want["seed"], mode=want["mode"], progress=progress,
                 workers=workers, reuse=True)
    else:
        log.info("using the synthetic set in %s (rendered with the same settings)", root)


def _recorded_settings(root: Path) -> dict | None:
    try:
        found = json.loads((root / "synth.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None
