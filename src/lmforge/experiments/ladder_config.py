"""The ladder's typed config: which model sizes (a width/depth rule over d_model values), which
token budgets (multiples of 20 tokens per parameter), which held-out sizes, seeds and tasks.

    base: configs/demo.yaml          # every run starts from this RunConfig
    out: runs/ladder
    sizes: [32, 48, 64, 80]          # d_model values fitted
    head_dim: 16                     # n_heads = d_model / head_dim
    aspect: 16                       # n_layers = d_model / aspect
    mlp_ratio: 4.0                   # mlp_hidden ≈ 4·d_model, rounded to a multiple of 16
    token_multiples: [0.25, 0.5, 1]  # D = multiple · 20 · N
    holdout: [128]                   # trained, never fitted: the prediction is checked on it

Errors name the dotted field (``ladder.sizes[2]: d_model=40 is not a multiple of head_dim=16``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from lmforge.config import Config, require

CHINCHILLA_TOKENS_PER_PARAM = 20
"""Compute-optimal tokens per parameter (Hoffmann et al. 2022); budgets are multiples of it."""
MIN_FIT_POINTS = 5
"""L(N, D) = E + A/N^α + B/D^β has 5 parameters (`lmforge.analysis.scaling.MIN_LOSS_POINTS`)."""


@dataclasses.dataclass(frozen=True)
class SizeShape:
    """The model shape the size rule gives one d_model."""

    d_model: int
    n_layers: int
    n_heads: int
    mlp_hidden: int


@dataclasses.dataclass(kw_only=True)
class LadderConfig(Config):
    """A grid of model sizes × token budgets, each trained as an ordinary `lmforge train` run,
    then a scaling law fitted to the final validation losses (`lmforge ladder LADDER.yaml`)."""

    base: Path
    """Run config YAML (a `RunConfig`) every run starts from: data (with validation folders),
    optimizer, batch, seq_len, tokenizer, the model fields the size rule does not set."""
    overrides: list[str] = dataclasses.field(default_factory=list)
    """Extra dotted overrides applied to `base` (``optim.lr=1e-3``), as `lmforge train` takes them."""
    out: Path
    """Ladder folder: runs/<name>/ run dirs and runs/<name>.yaml configs, results.jsonl (one row
    per finished run), fit.json, ladder.png, ladder.md."""

    # -- the size rule -------------------------------------------------------------------------
    sizes: list[int]
    """d_model of each fitted size; n_layers, n_heads, mlp_hidden follow from the rule below
    (n_kv_heads is reset: plain multi-head attention); every other model field is the base's."""
    head_dim: int = 64
    """Width of an attention head (even, for RoPE): n_heads = d_model / head_dim."""
    aspect: int = 64
    """Width per layer: n_layers = d_model / aspect (OLMo-style ladders keep it fixed)."""
    mlp_ratio: float = 4.0
    """SwiGLU hidden width over d_model, before rounding to `mlp_multiple`."""
    mlp_multiple: int = 16
    """mlp_hidden = round(mlp_ratio · d_model / mlp_multiple) · mlp_multiple."""

    # -- token budgets -------------------------------------------------------------------------
    token_multiples: list[float] = dataclasses.field(default_factory=lambda: [1.0])
    """Each size trains on D = multiple · 20 · N tokens, N its non-embedding parameters
    (`model_size(cfg).non_embedding`). Counting without the input embedding is the convention
    of Kaplan et al. and the OLMo ladders: an embedding row is a lookup, not a matmul, so it
    neither costs compute nor behaves like the other weights as the model grows (the output head
    is a real matmul and counts). Budgets become trainer.max_tokens (the trainer rounds up to
    whole steps), so each budget is its own run with its own schedule to the end. For a mixture
    of experts N is the *active* non-embedding parameters (k of E experts: what a token's compute
    scales with; `model_size(cfg).active_non_embedding`)."""
    warmup_fraction: float = 0.1
    """optim.warmup_steps = ceil(warmup_fraction · steps) of each run's own steps."""

    # -- held-out sizes ------------------------------------------------------------------------
    holdout: list[int] = dataclasses.field(default_factory=list)
    """d_model values (same rule) trained but never fitted: the ladder reports its prediction
    for them against the actual loss (relative error, inside the interval or not)."""
    holdout_multiples: list[float] = dataclasses.field(default_factory=lambda: [1.0])
    """Token multiples the holdout sizes train at."""

    # -- downstream tasks ----------------------------------------------------------------------
    tasks: list[str] = dataclasses.field(default_factory=list)
    """OLMES tasks (TASK or TASK:VARIANT, `lmforge eval`) scored on each run's final checkpoint:
    gold bits-per-byte (the task loss) and accuracy, fitted in two steps (N, D → task loss →
    accuracy). Empty: none. Needs `tokenizer` in the base config."""
    limit: int = 200
    """Documents per task (the first N)."""

    # -- repetition, processes, intervals ------------------------------------------------------
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    """trainer.seed of each repeat (init and data order); losses are averaged over seeds before fitting."""
    nproc: int = 1
    """Processes per run: 1 trains in this process; more runs each under
    ``torchrun --standalone --nproc-per-node N -m lmforge train RUN.yaml``."""
    n_boot: int = 200
    """Bootstrap resamples of the fitted points, for the prediction intervals."""
    level: float = 0.9
    """Coverage of the prediction intervals."""

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "ladder.") -> LadderConfig:
        """As `Config.from_dict`; error paths start with ``ladder.``."""
        return super().from_dict(data, where=where)

    def validate(self) -> None:
        require(self.head_dim > 0 and self.head_dim % 2 == 0, "head_dim",
                f"must be a positive even number (RoPE rotates pairs of dimensions), got {self.head_dim}")
        require(self.aspect > 0, "aspect", f"must be positive, got {self.aspect}")
        require(self.mlp_ratio > 0, "mlp_ratio", f"must be positive, got {self.mlp_ratio}")
        require(self.mlp_multiple > 0, "mlp_multiple", f"must be positive, got {self.mlp_multiple}")
        require(len(self.sizes) > 0, "sizes", "give at least one d_model to fit")
        for name in ("sizes", "holdout"):
            values = getattr(self, name)
            for i, d in enumerate(values):
                problem = self.size_problem(d)
                require(problem is None, f"{name}[{i}]", str(problem))
                require(values.index(d) == i, f"{name}[{i}]", f"d_model={d} is listed twice")
        for i, d in enumerate(self.holdout):
            require(d not in self.sizes, f"holdout[{i}]",
                    f"d_model={d} is also in sizes; a size is fitted or held out, not both")
        for name in ("token_multiples", "holdout_multiples"):
            values = getattr(self, name)
            require(len(values) > 0, name, "give at least one multiple")
            for i, m in enumerate(values):
                require(m > 0, f"{name}[{i}]", f"must be positive, got {m}")
                require(values.index(m) == i, f"{name}[{i}]", f"{m} is listed twice")
        require(len(self.sizes) >= 2, "sizes", "give at least 2 sizes: the law's N term needs more than one N")
        require(len(self.sizes) * len(self.token_multiples) >= MIN_FIT_POINTS, "sizes",
                f"{len(self.sizes)} sizes × {len(self.token_multiples)} token multiples = "
                f"{len(self.sizes) * len(self.token_multiples)} points, too few to fit the law's 5 parameters; "
                f"give at least {MIN_FIT_POINTS} (better 8 or more, with more than one multiple)")
        require(0 <= self.warmup_fraction < 1, "warmup_fraction", f"must be in [0, 1), got {self.warmup_fraction}")
        require(self.limit > 0, "limit", f"must be positive, got {self.limit}")
        require(len(self.seeds) > 0, "seeds", "give at least one seed")
        require(len(set(self.seeds)) == len(self.seeds), "seeds", f"a seed is listed twice: {self.seeds}")
        require(self.nproc >= 1, "nproc", f"must be at least 1, got {self.nproc}")
        require(self.n_boot >= 0, "n_boot", f"must be ≥ 0, got {self.n_boot}")
        require(0 < self.level < 1, "level", f"must be in (0, 1), got {self.level}")

    # -- the size rule -----------------------------------------------------------------------------
    def size_problem(self, d_model: int) -> str | None:
        """Why `d_model` does not fit the size rule, or None."""
        if d_model <= 0:
            return f"d_model must be positive, got {d_model}"
        if d_model < self.aspect:
            return f"d_model={d_model} gives n_layers = d_model/aspect = {d_model}/{self.aspect} < 1"
        if d_model % self.aspect:
            return f"d_model={d_model} is not a multiple of aspect={self.aspect} (n_layers = d_model/aspect)"
        if d_model % self.head_dim:
            return f"d_model={d_model} is not a multiple of head_dim={self.head_dim} (n_heads = d_model/head_dim)"
        if self.mlp_hidden(d_model) < 1:
            return (f"d_model={d_model} rounds to mlp_hidden=0 "
                    f"(mlp_ratio={self.mlp_ratio}, mlp_multiple={self.mlp_multiple})")
        return None

    def mlp_hidden(self, d_model: int) -> int:
        return round(self.mlp_ratio * d_model / self.mlp_multiple) * self.mlp_multiple

    def shape(self, d_model: int) -> SizeShape:
        """The shape of one size (assumes it fits the rule, which `validate` checked)."""
        return SizeShape(d_model=d_model, n_layers=d_model // self.aspect, n_heads=d_model // self.head_dim,
                         mlp_hidden=self.mlp_hidden(d_model))


def run_name(d_model: int, multiple: float, seed: int) -> str:
    """'d64-x1.0-s0': a run's size, token multiple and seed."""
    return f"d{d_model}-x{float(multiple)}-s{seed}"
