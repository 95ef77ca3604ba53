"""An evaluation report: evaluate a checkpoint on a split and write every artefact of ``agman eval``.

The artefacts, in ``out`` (default: the checkpoint's folder): ``eval-<split>.csv`` / ``.md`` (the
paper's tables, :func:`agman.engine.report.write_report_tables`), ``eval-<split>.json`` (the metric
dict), ``eval-<split>-localization.csv`` where the split has a regions file, and with ``figures`` the
paper's Fig. 8 / Fig. 9 PNGs (:mod:`agman.engine.figures`).  The paper's published numbers beside
the measured ones (:func:`agman.engine.published.beside_text`) come with the report as text.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from agman.engine.checkpoint import CheckpointInfo
from agman.engine.evaluate import EvalResult, evaluate_checkpoint
from agman.engine.published import beside_text
from agman.engine.report import write_report_tables
from agman.fileio import atomic_write_json

EVAL_SCHEMA = "agman/eval/1"
"""The ``schema`` of :meth:`EvalReport.to_json` (docs/training.md)."""


@dataclass
class EvalReport:
    """What :func:`evaluate_and_report` measured and wrote: ``tables`` is the terminal text of the
    tables, ``files`` every file written (tables, JSON, localisation, figures) in that order."""

    checkpoint: str
    split: str
    result: EvalResult
    info: CheckpointInfo
    out: Path
    tables: str
    files: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    @property
    def published(self) -> str | None:
        """The paper's numbers beside the measured ones, where the dataset is one of the paper's."""
        measured = {self.info.model_name: self.result.to_dict()}
        return beside_text(self.result.dataset, measured, self.info.attribute_names)

    def to_json(self) -> dict:
        """The ``agman eval --json`` document (schema ``agman/eval/1``)."""
        return {"schema": EVAL_SCHEMA, "checkpoint": self.checkpoint, "model": self.info.model_name,
                "attributes": self.info.attribute_names, "files": [str(f) for f in self.files],
                "metrics": self.result.to_dict()}


def evaluate_and_report(
    checkpoint: str | Path,
    split: str = "test",
    *,
    out: str | Path | None = None,
    data: dict | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = False,
    localize: bool = True,
    regions: str | Path | None = None,
    figures: int = 0,
) -> EvalReport:
    """Evaluate ``checkpoint`` on ``split`` (:func:`agman.engine.evaluate.evaluate_checkpoint`) and
    write the report's files into ``out`` (default: the checkpoint's folder); ``figures``: how many
    triplets / failures the paper's figures show (0: none drawn)."""
    result, info = evaluate_checkpoint(checkpoint, split, data=data, device=device, batch_size=batch_size,
                                       workers=workers, progress=progress, localize=localize, regions=regions)
    out = Path(out) if out else Path(checkpoint).parent
    metrics = result.to_dict()
    tables = write_report_tables(out, f"eval-{split}", {f"{info.model_name} ({Path(checkpoint).name})": metrics},
                                 info.attribute_names,
                                 title=f"{info.model_name} on the {split} split ({result.images} images)")
    atomic_write_json(out / f"eval-{split}.json", metrics)
    files = [out / f"eval-{split}.{ext}" for ext in ("csv", "md", "json")]
    if result.localization is not None:
        files.append(result.localization.write_csv(out / f"eval-{split}-localization.csv"))
    drawn = []
    if figures > 0:
        from agman.engine.figures import draw_eval_figures

        drawn = list(draw_eval_figures(checkpoint, split, result.embeddings, out, figures, data=data))
    return EvalReport(str(checkpoint), split, result, info, out, tables, files + drawn, drawn)
