"""The data ablation's typed config: one model and recipe (a base RunConfig), trained at an equal
token budget on each named data set, over several seeds, then scored on held-out sets.

    base: configs/demo.yaml            # every run starts from this RunConfig
    out: runs/ablation
    tokens: 2000000                    # every run: trainer.max_tokens (rounded up to whole steps)
    seeds: [0, 1, 2]
    datasets:                          # name -> token folder(s), or a curate output folder
      classifier_top10: data/top10
      random10: data/random10/tokens
    eval:                              # held-out sets scored on every final checkpoint
      python_docs: data/heldout/python_docs
    tasks: [arc_easy:rc_0shot]         # optional OLMES tasks
    limit: 200

Errors name the dotted field (``ablation.seeds[2]: seed 1 is listed twice``). What a data set's
folders hold (token files, the tokenizer) is checked when the runs are planned
(`lmforge.experiments.ablate.plan_runs`), with errors naming ``ablation.datasets.NAME``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from lmforge.config import Config, require

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
"""Data set and eval set names: they name run dirs (``runs/NAME-s0``) and report columns."""


@dataclasses.dataclass(kw_only=True)
class AblationConfig(Config):
    """The same model and recipe trained at equal tokens on each named data set, over several
    seeds, each run an ordinary `lmforge train` run, then compared on held-out sets
    (`lmforge ablate ABLATION.yaml`)."""

    base: Path
    """Run config YAML (a `RunConfig`) every run starts from: model, optimizer, batch, seq_len,
    tokenizer, data.validation. Its data.train and the trainer's run_dir, budget and seed are
    replaced per run, so it needs none of them."""
    overrides: list[str] = dataclasses.field(default_factory=list)
    """Extra dotted overrides applied to `base` (``optim.lr=1e-3``), as `lmforge train` takes them."""
    out: Path
    """Ablation folder: runs/<dataset>-s<seed>/ run dirs and runs/<dataset>-s<seed>.yaml configs,
    results.jsonl (one row per finished run), ablation.json, ablation.md, ablation.png."""

    tokens: int
    """Token budget of every run: trainer.max_tokens, which the trainer rounds up to whole steps
    of trainer.batch_tokens, so every run trains the same number of steps and tokens. A data set
    with fewer training instances than the budget needs is repeated, epoch after epoch, each in
    a new seeded order, as the trainer always does; planning warns with the number of epochs
    (repetition is then part of what the comparison measures)."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    """trainer.seed of each repeat (init and data order). Each data set gets every seed; the
    spread over seeds is what a difference between data sets must exceed."""
    datasets: dict[str, list[Path]]
    """Name → the run's data.train: token folder(s) written by `lmforge data tokenize` (read as
    one stream, in order). A folder that is not itself token files is taken as: a curate output
    folder → its ``tokens/train`` (when the pipeline split off a validation side) or else its
    ``tokens``; a `data tokenize --validation` output → its ``train``. All must be tokenized with
    the base config's tokenizer (or, without one, all with the same tokenizer)."""
    eval: dict[str, list[Path]] = dataclasses.field(default_factory=dict)
    """Name → held-out token folder(s) scored on every run's final checkpoint: loss (nats per
    token) and, when the base config names its tokenizer, bits per byte
    (`lmforge.eval.perplexity`). A folder that is not itself token files is taken as its
    held-out side: ``val`` of a `data tokenize --validation` output, ``tokens/val`` of a curate
    output folder."""
    eval_seq_len: int | None = None
    """Window of the held-out scoring; default: the base config's data.seq_len."""
    eval_max_tokens: int | None = None
    """Score at most this many tokens of each eval set (the first windows); default: all of it."""
    eval_batch_size: int = 8
    """Windows per forward pass when scoring the eval sets."""
    tasks: list[str] = dataclasses.field(default_factory=list)
    """OLMES tasks (TASK or TASK:VARIANT, as `lmforge eval` takes them) scored on each run's final
    checkpoint: accuracy (the task's primary metric) and gold bits per byte. Empty: none. Needs
    `tokenizer` in the base config."""
    limit: int = 200
    """Documents per task (the first N)."""
    nproc: int = 1
    """Processes per run: 1 trains in this process; more runs each under
    ``torchrun --standalone --nproc-per-node N -m lmforge train RUN.yaml`` (the scoring runs in
    this process, on the final checkpoint)."""

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "ablation.") -> AblationConfig:
        """As `Config.from_dict`; error paths start with ``ablation.``."""
        return super().from_dict(data, where=where)

    def validate(self) -> None:
        require(self.tokens > 0, "tokens", f"must be a positive token budget, got {self.tokens}")
        require(len(self.seeds) > 0, "seeds", "give at least one seed")
        for i, seed in enumerate(self.seeds):
            require(self.seeds.index(seed) == i, f"seeds[{i}]", f"seed {seed} is listed twice")
        require(len(self.datasets) > 0, "datasets", "give at least one data set (name: token folder)")
        for field in ("datasets", "eval"):
            for name, folders in getattr(self, field).items():
                require(bool(NAME.match(str(name))), f"{field}.{name}",
                        "a name may hold letters, digits and _ . + - (it names run dirs and report columns)")
                require(len(folders) > 0, f"{field}.{name}", "give at least one token folder")
        require(self.eval_seq_len is None or self.eval_seq_len > 0, "eval_seq_len",
                f"must be positive or null, got {self.eval_seq_len}")
        require(self.eval_max_tokens is None or self.eval_max_tokens > 0, "eval_max_tokens",
                f"must be positive or null, got {self.eval_max_tokens}")
        require(self.eval_batch_size > 0, "eval_batch_size", f"must be positive, got {self.eval_batch_size}")
        require(self.limit > 0, "limit", f"must be positive, got {self.limit}")
        require(self.nproc >= 1, "nproc", f"must be at least 1, got {self.nproc}")


def run_name(dataset: str, seed: int) -> str:
    """'random10-s0': a run's data set and seed."""
    return f"{dataset}-s{seed}"
