"""The file names inside an index folder."""
from __future__ import annotations

from pathlib import Path

from agman.retrieval.work import PROGRESS_FILE, SHARDS_FOLDER


class IndexLayout:
    """File names inside an index directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.info = self.root / "index.json"
        self.items = self.root / "items.jsonl"
        self.progress = self.root / PROGRESS_FILE
        self.shards = self.root / SHARDS_FOLDER

    def vectors(self, a: int) -> Path:
        return self.root / "vectors" / f"attr-{a:02d}.f32"

    def faiss(self, a: int) -> Path:
        return self.root / "faiss" / f"attr-{a:02d}.faiss"

    def name(self, path: Path) -> str:
        """``path`` relative to the folder, as ``index.json``'s ``files`` names it."""
        return path.relative_to(self.root).as_posix()
