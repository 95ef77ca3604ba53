"""Open a dataset in any layout users already have -> :class:`DatasetSpec` (the public entry point).

One module per layout: :mod:`agman.data.asen` (ASEN: FashionAI, DeepFashion, DARN, agman's synthetic
set; also the writer), :mod:`agman.data.csn` (CSN: Zappos50k), :mod:`agman.data.catalog_csv` (your
own catalog CSV); :mod:`agman.data.lines` is the parser they share and :mod:`agman.data.meta` reads
attribute declarations.  Their public functions are re-exported here, so
``from agman.data.layouts import open_dataset, read_asen, write_asen, ...`` is the one import path.

Every malformed input raises :class:`DatasetError` naming the file, the 1-based line and what was
expected, when the dataset is opened (never mid-epoch).  What stops and what is skipped:

=====================================================  ==========================================
problem                                                behaviour
=====================================================  ==========================================
unreadable file (missing, a folder, not UTF-8)         stops (DatasetError)
missing meta.json / YAML entry, unknown dataset key    stops
line with the wrong number of fields / not integers    stops
attribute or value index out of range                  stops
image index past the filenames list                    stops
blank line inside a filenames list                     stops (it would shift every index after it)
blank lines in label/query/candidate/triplet files     skipped (they carry nothing)
same image+attribute given two different values        stops
train value with one image (cannot form a triplet)     stops; ``allow_singletons=True`` skips it
                                                       as an anchor (it stays a negative) and
                                                       records it in ``spec.warnings``
query attribute without any candidate                  stops; ``allow_singletons=True`` records it
missing or corrupt image files                         not checked here: ``agman data check``
                                                       finds them; training reports the path
=====================================================  ==========================================
"""
from __future__ import annotations

from pathlib import Path

from agman.data.asen import read_asen, write_asen
from agman.data.catalog_csv import CatalogTable, read_catalog_csv, read_catalog_table
from agman.data.csn import CSN_CONDITIONS, read_csn
from agman.data.spec import DatasetSpec
from agman.errors import InvalidValueError

__all__ = [
    "CSN_CONDITIONS",
    "CatalogTable",
    "LAYOUTS",
    "detect_layout",
    "open_dataset",
    "read_asen",
    "read_catalog_csv",
    "read_catalog_table",
    "read_csn",
    "write_asen",
]

LAYOUTS = ("asen", "csn", "csv")


def detect_layout(root: str | Path) -> str:
    """'csv' for a .csv file, 'csn' where filenames.json exists, else 'asen'."""
    root = Path(root)
    if root.suffix.lower() == ".csv":
        return "csv"
    if (root / "filenames.json").is_file():
        return "csn"
    return "asen"


def open_dataset(
    root: str | Path,
    dataset: str | None = None,
    *,
    layout: str | None = None,
    allow_singletons: bool = False,
    seed: int = 0,
    meta: str | Path | None = None,
    yaml_config: str | Path | None = None,
    image_root: str | Path | None = None,
) -> DatasetSpec:
    """Open a dataset in any supported layout (auto-detected unless ``layout`` is given)."""
    layout = layout or detect_layout(root)
    if layout == "asen":
        return read_asen(
            root, dataset, meta=meta, yaml_config=yaml_config, image_root=image_root, allow_singletons=allow_singletons
        )
    if layout == "csn":
        return read_csn(root, image_root=image_root)
    if layout == "csv":
        return read_catalog_csv(root, seed=seed)
    raise InvalidValueError(f"unknown layout {layout!r}: expected {', '.join(map(repr, LAYOUTS))}")
