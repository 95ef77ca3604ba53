"""What a training run shows while it runs: the per-epoch CSV log, TensorBoard scalars, the curve
picture and the one-line epoch summary (main process only)."""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

from agman.fileio import atomic_write_text

log = logging.getLogger(__name__)


class RunLog:
    """Per-epoch ``log.csv``, TensorBoard scalars and ``curves.png`` of a run folder."""

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
