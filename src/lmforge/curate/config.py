"""The typed config of a curation pipeline (`lmforge data curate PIPELINE.yaml`) and of its
`tokenize:` block, apart from the modules that run them: the orchestrator (`pipeline.py`), the
tasks (`task.py`, `task_outputs.py`) and the token writer (`tokens.py`) all import it from here,
so none of them imports another for its config type."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmforge.config import Config, require
from lmforge.curate.registry import build_step
from lmforge.curate.steps import Step
from lmforge.data.split import SplitOptions
from lmforge.errors import ConfigError


@dataclass(kw_only=True)
class TokenizeConfig(SplitOptions):
    """Tokenize the kept documents as the pipeline's last step (`data tokenize`'s format). With
    `validation` or `validation_docs`, `out/train` and `out/val` are written instead of `out`,
    byte for byte what `lmforge data tokenize OUTPUT/documents --validation F` writes."""

    tokenizer: str
    """A known name such as olmo2, or a tokenizer.json / folder."""
    out: Path | None = None
    """The token folder to write. None: OUTPUT/tokens."""

    def validate(self) -> None:
        require(bool(self.tokenizer), "tokenizer", "name a tokenizer (olmo2, or a tokenizer.json / folder)")
        self.check_split()


DEFAULT_SHARD_DOCS = 5_000
"""Lines per input piece by default: 20,000 web documents in one file make 4 pieces. A piece of
the web chain is then ~7 s of one core here (~35 s for real ~5 KB pages), against ~10 ms that a
task costs beyond its documents: models and spaCy load once per process and stage, not per task.
Smaller pieces would balance more workers, but make more output files and, in compressed files,
more decompression to skip (see `lmforge.curate.shards`)."""


@dataclass(kw_only=True)
class CurateConfig(Config):
    """A curation pipeline: where documents come from, the steps, where results go."""

    input: list[str]
    """Files or folders of dolma JSONL (.jsonl, .jsonl.gz, .jsonl.zst). Each file is a shard,
    except that a file of more than `shard_docs` lines or `shard_mb` MB is cut into pieces, each
    a shard of its own (see `lmforge.curate.shards`: how, and what it costs for compressed files)."""
    shard_docs: int | None = DEFAULT_SHARD_DOCS
    """Most lines of an input file one task reads: a longer file is cut into pieces of this many
    lines, so one big file still keeps every worker busy. The cut depends on the input and this
    setting only, never on `workers`, so any number of workers writes the same bytes. A
    compressed file is cut into at most 32 pieces (each task decompresses it from its start).
    None, with `shard_mb` None too: whole files, and no first pass over the input."""
    shard_mb: float | None = 256.0
    """Most MB of JSONL (decompressed) one task reads: a piece ends after the line that takes it
    past this size, even with fewer than `shard_docs` lines. None: no size limit."""
    output: Path
    steps: list[Any]
    """In order; each `- <step name>: {options}` (see `lmforge data curate --list-steps`)."""
    workers: int = 0
    """Parallel processes (local) or Ray tasks in flight. 0: one per CPU core."""
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    """Ray cluster to join ('auto', 'ray://host:10001'); None starts a local Ray instance. The
    output folder must be on storage every Ray node can read and write."""
    write_removed: bool = True
    write_attributes: bool = True
    tokenizer: str | None = None
    """Count tokens in the statistics with this tokenizer (a known name such as olmo2, or a
    tokenizer.json / folder). None: count whitespace-separated words (much cheaper)."""
    keep_work: bool = False
    """Keep intermediate shards and signatures after a successful run (for debugging)."""
    tokenize: TokenizeConfig | None = None
    """Also write the kept documents as training token files, shard by shard in the last stage's
    tasks (resumable like them), so `lmforge train` reads the run directly: `{tokenizer: olmo2,
    out: FOLDER}` (out defaults to OUTPUT/tokens). The result is byte for byte what
    `lmforge data tokenize OUTPUT/documents` would write, without reading the JSONL again."""
    strict: bool = False
    """Stop at the first bad input line (invalid UTF-8, bad JSON, no string `text`) or unreadable
    file (not gzip, truncated) with a one-line `file:line: reason` error. False: such lines and
    files go to rejects/, the run goes on, and the end says how many files and lines were skipped."""
    built_steps: list[Step] = field(init=False, repr=False, compare=False)
    """The steps as objects, built from `steps` when the config is validated (building them is
    how their options are checked). A run uses these same objects throughout: for its stages,
    the step files it records, its report, and in the tasks it hands to workers."""

    def validate(self) -> None:
        require(len(self.input) > 0, "input", "name at least one file or folder")
        require(len(self.steps) > 0, "steps", "name at least one step")
        require(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}")
        if self.shard_docs is not None:
            require(self.shard_docs >= 1, "shard_docs", f"must be >= 1 (or null: no line limit), got {self.shard_docs}")
        if self.shard_mb is not None:
            require(self.shard_mb > 0, "shard_mb", f"must be > 0 (or null: no size limit), got {self.shard_mb}")
        self.built_steps = [build_step(spec, f"steps[{i}]") for i, spec in enumerate(self.steps)]
        labels = [s.label for s in self.built_steps]
        dup = [lb for lb, n in Counter(labels).items() if n > 1]
        require(not dup, "steps", f"step label {dup[:1]} is used twice; give one a `label: <name>` option "
                "(`step_label: <name>` for a classifier)")
        for i, step in enumerate(self.built_steps):
            try:
                step.check_pipeline(self.built_steps[:i])
            except ConfigError as e:
                raise ConfigError(f"steps[{i}].{step.name}.{e}") from None

    def output_affecting(self) -> dict[str, Any]:
        """The parts of the config that change what is written (not how fast)."""
        d = self.to_dict()
        for k in ("workers", "executor", "ray_address", "keep_work", "strict"):
            d.pop(k)
        return d
