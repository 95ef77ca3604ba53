"""PlannedImage: one image of the synthetic set as planned before rendering (split, line, values, annotations)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlannedImage:
    """One image of the set: where it goes, its true values and which of them are annotated."""

    split: str
    index: int  # line in filenames_<split>.txt
    number: int  # position across all splits (train, valid, test); seeds the image's nuisances
    values: tuple[int, ...]  # true value of every attribute (all are drawn; -1: not shown on this garment)
    annotated: tuple[int, ...]  # attribute indices written to the label / query / candidate files
    is_query: bool
    garment: str | None = None  # mode 'fashionai': the garment type (agman.data.synthetic_fashion.GARMENTS)

    @property
    def path(self) -> str:
        return f"images/{self.split}/{self.index:06d}.png"
