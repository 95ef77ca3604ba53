"""What a training run shows while it runs: the per-epoch CSV log, TensorBoard scalars, the run's
hyper-parameters (TensorBoard's HPARAMS tab), sample retrievals of validation queries, the curve
picture and the one-line epoch summary (main process only)."""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

import numpy as np

from agman.fileio import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

SAMPLE_TOP_K = 8
"""Results drawn per sample query (one query per attribute, at most :data:`SAMPLE_ATTRIBUTES`)."""
SAMPLE_ATTRIBUTES = 8
SAMPLE_TILE = 64


def flatten(config: dict, prefix: str = "") -> dict[str, int | float | str | bool]:
    """A nested config as ``{"section.key": value}`` with TensorBoard's value types (bool, int,
    float, str; anything else, None included, as its text)."""
    out: dict[str, int | float | str | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def sample_queries(split, n_attributes: int) -> list[int]:
    """The query rows drawn every epoch: the first query of each attribute (at most
    :data:`SAMPLE_ATTRIBUTES`), the same rows each epoch so their results can be compared."""
    rows = []
    for a in range(n_attributes):
        found = np.flatnonzero(split.queries[:, 1] == a)
        if len(found):
            rows.append(int(found[0]))
    return rows[:SAMPLE_ATTRIBUTES]


class RunLog:
    """Per-epoch ``log.csv``, TensorBoard scalars, hyper-parameters and sample retrievals,
    ``curves.png`` and ``retrievals.png`` of a run folder."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool):
        self.run_dir, self.enabled = run_dir, enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                log.warning("tensorboard is not installed; no TensorBoard logs")

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                if v is not None and math.isfinite(v):
                    self.writer.add_scalar(k, v, step)

    def hparams(self, config: dict, metrics: list[str]) -> None:
        """Record the run's config (flattened: ``train.lr``, ``model.backbone``, ...) in TensorBoard's
        HPARAMS tab, with the scalar tags ``metrics`` (logged per epoch) as its metrics."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        experiment, start, _ = hparams(flatten(config), {tag: 0.0 for tag in metrics})
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(start)

    def retrievals(self, spec, split: str, embeddings: np.ndarray, step: int, epoch: int) -> None:
        """Draw the top :data:`SAMPLE_TOP_K` of the :func:`sample_queries` of ``split`` under
        ``embeddings [N, A, D]`` (the evaluation's ranking) into ``retrievals.png`` and TensorBoard
        (``<split>/retrievals``).  A split without query lists (triplets only) draws nothing."""
        if not self.enabled:
            return
        try:
            sheet = self._retrieval_sheet(spec, split, embeddings, epoch)
        except Exception as exc:  # noqa: BLE001 - a picture must never stop training
            log.warning("could not draw retrievals.png: %s", exc)
            return
        if sheet is None:
            return
        atomic_write(self.run_dir / "retrievals.png", lambda f: sheet.save(f, format="PNG"))
        if self.writer is not None:
            self.writer.add_image(f"{split}/retrievals", np.asarray(sheet), step, dataformats="HWC")

    @staticmethod
    def _retrieval_sheet(spec, split: str, embeddings: np.ndarray, epoch: int):
        from agman.data.images import load_image
        from agman.engine.evaluate import rank_split
        from agman.engine.report import retrieval_sheet

        s = spec.split(split)
        if not len(s.queries):
            return None
        rows = []
        for q in sample_queries(s, spec.n_attributes):
            image, a, value = (int(v) for v in s.queries[q])
            ranked = rank_split(embeddings, s, a, q)[:SAMPLE_TOP_K]
            attribute = spec.attributes[a]
            results = [(load_image(spec.root / s.paths[i]), int(s.labels[i, a]) == value) for i in ranked]
            rows.append((f"{attribute.name} = {attribute.values[value]}", load_image(spec.root / s.paths[image]),
                         results))
        return retrieval_sheet(rows, SAMPLE_TILE, f"epoch {epoch}: {split} queries, top {SAMPLE_TOP_K} "
                                                  "(green: same value, red: another)")

    def epoch(self, history: list[dict]) -> None:
        if not self.enabled:
            return
        from agman.engine.report import plot_training_curves

        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys and not isinstance(row[k], dict)]
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)
        atomic_write_text(self.run_dir / "log.csv", text.getvalue())
        try:
            plot_training_curves(history, self.run_dir / "curves.png")
        except Exception as exc:  # noqa: BLE001 - a picture must never stop training
            log.warning("could not draw curves.png: %s", exc)
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def epoch_line(row: dict, split: str, best: float) -> str:
    """The log line of one finished epoch: losses, loss weights, lr, validation score, throughput."""
    parts = [f"loss {row.get('train_total', float('nan')):.4f}"]
    terms = [f"{k[6:]} {v:.4f}" for k, v in row.items() if k.startswith("train_") and k != "train_total"]
    if terms:
        parts[0] += f" ({', '.join(terms)})"
    weights = [f"{k[7:]} {v:.3g}" for k, v in row.items() if k.startswith("weight_")]
    if weights:
        parts.append("weights " + ", ".join(weights))
    parts.append(f"lr {row['lr']:.3g}")
    if f"{split}_score" in row:
        parts.append(f"{split} score {row[f'{split}_score']:.4f} (best {best:.4f})")
    parts.append(f"{row['triplets_per_s']:.1f} triplets/s, {row['seconds']:.0f} s")
    return "; ".join(parts)
