"""The work folder of a build (:func:`agman.retrieval.build.build_index`): the plan, the build's
progress and the embedded shards, kept until the commit so an interrupted build resumes."""
from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agman.fileio import atomic_write, atomic_write_json
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
