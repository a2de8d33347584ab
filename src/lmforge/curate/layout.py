"""Where every file of a curation run lives, under its output folder (see `lmforge.curate.pipeline`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Layout:
    """Where every file of a run lives."""

    root: Path

    def shard(self, i: int) -> str:
        return f"shard-{i:05d}"

    def documents(self, i: int) -> Path:
        return self.root / "documents" / f"{self.shard(i)}.jsonl.gz"

    def attributes(self, i: int) -> Path:
        return self.root / "attributes" / f"{self.shard(i)}.jsonl.gz"

    def removed(self, i: int, stage: int) -> Path:
        return self.root / "removed" / f"{self.shard(i)}.s{stage}.jsonl.gz"

    def rejects(self, i: int) -> Path:
        return self.root / "rejects" / f"{self.shard(i)}.jsonl"

    def work(self, stage: int) -> Path:
        return self.root / "work" / f"stage-{stage}"

    def intermediate(self, stage: int, i: int) -> Path:
        return self.work(stage) / f"{self.shard(i)}.jsonl"

    def signatures(self, stage: int, i: int) -> Path:
        return self.work(stage) / f"{self.shard(i)}.sig"

    def token_part(self, i: int) -> Path:
        """Where a last-stage task leaves its shard's token part (`.npy`, `.csv.gz`, `.ids.npy`)."""
        return self.root / "work" / "tokens" / self.shard(i)

    def marker(self, stage: int, i: int) -> Path:
        return self.work(stage) / f"{self.shard(i)}.done.json"

    def actions(self, stage: int, i: int) -> Path:
        return self.root / "work" / f"resolve-{stage}" / f"{self.shard(i)}.json"

    def resolve_marker(self, stage: int) -> Path:
        return self.root / "work" / f"resolve-{stage}" / "done.json"
