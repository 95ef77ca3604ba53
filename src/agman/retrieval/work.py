"""The work folder of a build (:func:`agman.retrieval.build.build_index`): the plan, the build's
progress and the embedded shards (written by :class:`ShardWriter`, shared out among ranks by
:func:`batch_runs`), kept until the commit so an interrupted build resumes."""
from __future__ import annotations

import contextlib
import json
import shutil

import numpy as np
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agman.fileio import atomic_write, atomic_write_json, atomic_write_text
from agman.retrieval.info import CatalogIndexError
from agman.retrieval.items import Item, parse_item

PROGRESS_FILE = "progress.json"
SHARDS_FOLDER = "shards"


@dataclass
class Shard:
    """Embeddings ``[count, A, D]`` of plan positions ``start .. start + count`` in ``shards/<file>``;
    ``failed``: positions whose image could not be read, with the reason."""

    file: str
    start: int
    count: int
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class Progress:
    """``progress.json``: the plan's size, the batch grid it is embedded on, and (once the commit
    began) the first row it was given."""

    planned: int
    batch_size: int
    shard_rows: int
    first_row: int | None = None

    @classmethod
    def read(cls, path: Path) -> Progress:
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(int(d["planned"]), int(d["batch_size"]), int(d["shard_rows"]), d.get("first_row"))
        except (ValueError, KeyError, TypeError) as exc:
            raise CatalogIndexError(
                f"{path}: unreadable build progress ({exc}; written by another agman version?); remove it and the "
                "shards/ folder beside it to embed the planned images again"
            ) from None

    def write(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))


class Work:
    """The work folder of a build: ``progress.json``, ``shards/plan.jsonl``, ``shards/rank-NNN.json``
    and the shard files (inside the index folder for FAISS; beside the Milvus Lite file, or named
    by ``work``, for Milvus)."""

    def __init__(self, folder: Path):
        self.root = Path(folder)
        self.progress_path = self.root / PROGRESS_FILE
        self.shards = self.root / SHARDS_FOLDER
        self.plan_path = self.shards / "plan.jsonl"

    @property
    def unfinished(self) -> bool:
        return self.progress_path.is_file()

    def write_plan(self, items: list[Item], replaces: list[int | None], progress: Progress) -> None:
        self.shards.mkdir(parents=True, exist_ok=True)

        def lines(f):
            for item, row in zip(items, replaces):
                record = json.loads(item.to_json())
                record["replaces"] = row
                f.write((json.dumps(record, ensure_ascii=False) + "\n").encode())

        atomic_write(self.plan_path, lines)
        progress.write(self.progress_path)

    def read_plan(self) -> tuple[list[Item], list[int | None]]:
        items, replaces = [], []
        with self.plan_path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                try:
                    items.append(parse_item(line))
                    replaces.append(json.loads(line).get("replaces"))
                except ValueError as exc:
                    raise CatalogIndexError(f"{self.plan_path}, line {lineno}: {exc}") from None
        return items, replaces

    def rank_file(self, rank: int) -> Path:
        return self.shards / f"rank-{rank:03d}.json"

    def shards_of(self, rank: int) -> list[Shard]:
        path = self.rank_file(rank)
        if not path.is_file():
            return []
        try:
            return [Shard(**s) for s in json.loads(path.read_text(encoding="utf-8"))]
        except (ValueError, TypeError) as exc:
            raise CatalogIndexError(f"{path}: unreadable shard list ({exc}); remove it to embed its shards again")

    def all_shards(self) -> list[Shard]:
        shards = []
        for path in sorted(self.shards.glob("rank-*.json")):
            shards += self.shards_of(int(path.stem.split("-")[1]))
        return sorted(shards, key=lambda s: s.start)

    def clear(self) -> None:
        self.progress_path.unlink(missing_ok=True)
        shutil.rmtree(self.shards, ignore_errors=True)
        with contextlib.suppress(OSError):  # a Milvus build's own folder, now empty (an index folder is not)
            self.root.rmdir()


def batch_runs(todo: list[int], world: int, rank: int) -> list[tuple[int, int]]:
    """This rank's share of the batches ``todo`` (ascending batch numbers): a contiguous slice of
    them, as runs ``(first batch, end batch)``."""
    lo, hi = len(todo) * rank // world, len(todo) * (rank + 1) // world
    mine = todo[lo:hi]
    runs: list[tuple[int, int]] = []
    for b in mine:
        if runs and runs[-1][1] == b:
            runs[-1] = (runs[-1][0], b + 1)
        else:
            runs.append((b, b + 1))
    return runs


class ShardWriter:
    """Collects embedding batches of one contiguous run; every ``rows_per_shard`` rows become one
    shard file, recorded in this rank's shard list right after (both atomic).
    ``on_shard(rows_done, rows_total)`` follows each."""

    def __init__(self, work: Work, rank: int, rows_per_shard: int, total: int, done: int, on_shard=None):
        self.work, self.rank = work, rank
        self.rows_per_shard, self.total, self.on_shard = rows_per_shard, total, on_shard
        self.shards = work.shards_of(rank)
        self.done = done
        self.written = 0
        self.start(0)

    def start(self, position: int) -> None:
        self.first = position
        self.buffer: list[np.ndarray] = []
        self.failed: dict[str, str] = {}

    def add(self, block: np.ndarray, failed: dict[int, str]) -> None:
        self.buffer.append(block)
        self.failed.update({str(k): v for k, v in failed.items()})
        if sum(len(b) for b in self.buffer) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        block = np.concatenate(self.buffer).astype(np.float32, copy=False)
        name = f"shard-{self.first:010d}.npy"
        atomic_write(self.work.shards / name, lambda f: np.save(f, block))
        self.shards.append(Shard(name, self.first, len(block), self.failed))
        atomic_write_text(self.work.rank_file(self.rank), json.dumps([asdict(s) for s in self.shards]))
        self.written += len(block)
        self.done += len(block)
        self.start(self.first + len(block))
        if self.on_shard is not None:
            self.on_shard(self.done, self.total)
