"""The typed config of `lmforge data mix`: the sources with their token proportions, and how
much to write where (the semantics are in `lmforge.curate.mix`'s docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.config import Config, require
from lmforge.curate.select import SelectConfig
from lmforge.data.split import SplitOptions

PROPORTION_TOLERANCE = 1e-6


@dataclass(kw_only=True)
class MixSource(Config):
    """One input of the mix."""

    name: str
    """Name used in the report and in the selection hash (renaming a source reshuffles it)."""
    paths: list[str]
    """Files or folders of dolma JSONL (.jsonl, .jsonl.gz, .jsonl.zst; .txt = one document)."""
    proportion: float
    """Share of the output's tokens, in (0, 1]; all sources' proportions sum to 1."""
    select: list[SelectConfig] = field(default_factory=list)
    """Conditions on a document's scores, all of which it must meet to be in the source (a
    `select` step's each: `{attribute: hq_score, top_fraction: 0.07}`, `{attribute: …, min_score:
    2}`), computed over the whole source; see `lmforge.curate.mix_attributes`."""

    def validate(self) -> None:
        require(bool(self.name.strip()), "name", "must not be empty")
        require(len(self.paths) > 0, "paths", f"source {self.name!r} names no files or folders")
        require(
            math.isfinite(self.proportion) and self.proportion > 0,
            "proportion",
            f"must be > 0 (got {self.proportion}) for source {self.name!r}; drop the source instead",
        )


@dataclass(kw_only=True)
class MixConfig(SplitOptions):
    """Mix several document sources into one corpus with given token proportions. With
    `validation` or `validation_docs` the held-out documents' rows (every copy of them) go to
    `output/val/`, the rest to `output/train/`; the split's seed is independent of `seed`, which
    picks and orders documents."""

    sources: list[MixSource]
    """The inputs and their shares of the output's tokens."""
    output: Path
    """Folder to write mix-NNNNN.jsonl.gz and mix.json into (replaced as a whole when done)."""
    total_tokens: int | None = None
    """Tokens in the output; None: the largest total reachable without upsampling any source."""
    max_repeats: float = 4.0
    """Refuse to upsample any source more than this many times."""
    shard_size_mb: float = 64.0
    """Uncompressed JSONL megabytes (10^6 bytes) per output shard, approximately."""
    seed: int = 0
    """Seeds which documents are selected and the order they are written in."""
    tokenizer: str | None = None
    """None: count whitespace-separated words; else a `load_tokenizer` spec ("olmo2", a path)."""
    strict: bool = False
    """Stop at the first bad input line (invalid UTF-8, bad JSON, no string `text`) or unreadable
    file (not gzip, truncated) with a one-line `file:line: reason` error. False: they are skipped,
    listed in `output/rejects.jsonl` ({file, line (null for a whole file), reason}), counted in
    mix.json (`rejected_lines`, `skipped_files`) and summed up in one warning line."""

    def validate(self) -> None:
        require(len(self.sources) > 0, "sources", "name at least one source")
        names = [s.name for s in self.sources]
        dup = next((n for n in names if names.count(n) > 1), None)
        require(dup is None, "sources", f"source name {dup!r} is used twice; names must be unique")
        bad = next((s for s in self.sources if not (math.isfinite(s.proportion) and s.proportion > 0)), None)
        require(bad is None, "sources", f"proportion of {bad.name if bad else ''!r} must be > 0")
        total = sum(s.proportion for s in self.sources)
        require(
            abs(total - 1.0) <= PROPORTION_TOLERANCE,
            "sources",
            f"proportions sum to {total:.6g}, not 1 ("
            + ", ".join(f"{s.name}={s.proportion:g}" for s in self.sources)
            + "); rescale them",
        )
        require(self.total_tokens is None or self.total_tokens > 0, "total_tokens", "must be > 0 (or null)")
        require(math.isfinite(self.max_repeats) and self.max_repeats >= 1, "max_repeats", "must be >= 1")
        require(math.isfinite(self.shard_size_mb) and self.shard_size_mb > 0, "shard_size_mb", "must be > 0")
        self.check_split()

    @property
    def shard_bytes(self) -> int:
        return max(1, int(self.shard_size_mb * 1_000_000))
