"""The run config: one typed section per concern, loaded from YAML with dotted overrides.

    lmforge train configs/demo.yaml --trainer.max_steps=20 --optim.lr=1e-3
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from lmforge.config import Config, require
from lmforge.model.config import ModelConfig
from lmforge.parallel.config import ParallelConfig


@dataclasses.dataclass(kw_only=True)
class DataConfig(Config):
    train: list[Path]
    """Token folders (from `lmforge data tokenize`) read as one stream, in this order."""
    validation: list[Path] = dataclasses.field(default_factory=list)
    """Token folders for validation loss; empty disables validation."""
    seq_len: int = 256
    """Tokens per training instance (the model's context during training)."""
    mask_repetitions: bool = True
    """Mask the loss of instances where a 1–13 token pattern repeats ≥ 32 times (OLMo 2)."""

    def validate(self) -> None:
        require(len(self.train) > 0, "data.train", "give at least one token folder")
        require(self.seq_len > 0, "data.seq_len", f"must be positive, got {self.seq_len}")


@dataclasses.dataclass(kw_only=True)
class OptimConfig(Config):
    lr: float = 4e-4
    """Peak learning rate, reached at the end of warmup."""
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    """Decoupled weight decay on weight matrices; never on norms, nor on embeddings (OLMo 2)
    unless embedding_weight_decay."""
    embedding_weight_decay: bool = False
    """Decay the input embedding too (OLMo 0424 did; OLMo 2 found it hurts stability)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    z_loss: float = 1e-5
    """Weight of the z-loss, logsumexp(logits)², which keeps logits from drifting; 0 turns it off."""
    moe_lb_loss: float = 0.01
    """MoE: weight of the load-balancing loss (E/k)·Σ f_e·P_e, averaged over layers (OLMoE: 0.01)."""
    moe_router_z_loss: float = 0.001
    """MoE: weight of the router z-loss, mean logsumexp(router logits)², averaged over layers (OLMoE: 0.001)."""
    schedule: Literal["cosine", "linear", "wsd", "constant"] = "cosine"
    """After warmup: cosine to min_lr_ratio·lr, linear to 0, warmup-stable-decay, or flat."""
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    """Final LR of the cosine schedule as a fraction of the peak."""
    decay_fraction: float = 0.2
    """WSD: the last fraction of steps decays linearly to 0."""

    def validate(self) -> None:
        require(self.lr > 0, "optim.lr", f"must be positive, got {self.lr}")
        for name in ("moe_lb_loss", "moe_router_z_loss"):
            require(getattr(self, name) >= 0, f"optim.{name}", f"must be >= 0 (0 turns it off), got {getattr(self, name)}")
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "optim.beta1/beta2", "must be in [0, 1)")
        require(self.weight_decay >= 0, "optim.weight_decay", f"must be ≥ 0, got {self.weight_decay}")
        require(self.grad_clip >= 0, "optim.grad_clip", f"must be ≥ 0, got {self.grad_clip}")
        require(self.warmup_steps >= 0, "optim.warmup_steps", f"must be ≥ 0, got {self.warmup_steps}")
        require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        require(0 < self.decay_fraction <= 1, "optim.decay_fraction", f"must be in (0, 1], got {self.decay_fraction}")


@dataclasses.dataclass(kw_only=True)
class TrainerConfig(Config):
    run_dir: Path
    """Where config, metrics and checkpoints go. Training in an existing run dir resumes it."""
    batch_tokens: int = 16_384
    """Tokens per optimizer step (global batch); a multiple of data.seq_len."""
    micro_batch_size: int = 8
    """Instances per forward/backward pass on each rank; each rank's share of the batch
    (batch instances / world size) is accumulated over several."""
    max_steps: int | None = None
    """Optimizer steps to train; or set max_tokens."""
    max_tokens: int | None = None
    """Tokens to train on (rounded up to whole steps); used when max_steps is not set."""
    seed: int = 0
    """Seeds the init and the data order."""
    log_every: int = 1
    eval_every: int = 100
    """Validation loss every this many steps (and before the first and after the last)."""
    eval_batches: int = 8
    """Micro-batches of the validation set per evaluation (the same ones every time)."""
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    """Complete checkpoints kept; older ones are deleted (0 keeps all)."""
    keep_steps: list[int] = dataclasses.field(default_factory=list)
    """Also checkpoint at these steps, and never prune those checkpoints (e.g. to soup them)."""
    release_every: int = 0
    """Also checkpoint every this many steps and never prune those checkpoints: the
    intermediate revisions `lmforge release` publishes (0: none beyond keep_steps)."""
    skip_steps: list[int] = dataclasses.field(default_factory=list)
    """Steps whose batches are read (the data order is unchanged) but not applied: the weights
    and optimizer state skip them. A rollback after non-finite steps adds its bad steps to
    these (RUN/faults/rollbacks.jsonl); a run that skips the same steps from the start is the
    fault-free run it equals."""
    init_from: Path | None = None
    """Start a new run from this checkpoint's weights (a training checkpoint, or a consolidated
    or souped model folder): mid-training anneals, continued pretraining. Ignored once the run
    has checkpoints of its own to resume from."""
    init_optimizer: bool = False
    """With init_from: also take the optimizer state (a training checkpoint's)."""
    async_checkpoint: bool = False
    """Write checkpoints in a background thread (`dcp.async_save`): the step only waits for the
    tensors to be copied to host memory. A checkpoint becomes `latest` when the next one
    starts or training ends, so a crash loses at most one more interval."""

    def kept_steps(self, max_steps: int) -> set[int]:
        """Steps whose checkpoints are written and never pruned (keep_steps, release_every)."""
        every = set(range(self.release_every, max_steps + 1, self.release_every)) if self.release_every else set()
        return set(self.keep_steps) | every

    def validate(self) -> None:
        for name in ("batch_tokens", "micro_batch_size", "log_every", "eval_every", "checkpoint_every"):
            require(getattr(self, name) > 0, f"trainer.{name}", f"must be positive, got {getattr(self, name)}")
        require(self.keep_checkpoints >= 0, "trainer.keep_checkpoints", "must be ≥ 0")
        require(self.release_every >= 0, "trainer.release_every", f"must be ≥ 0 (0: none), got {self.release_every}")
        require(all(s > 0 for s in self.keep_steps), "trainer.keep_steps", f"steps count from 1, got {self.keep_steps}")
        require(all(s > 0 for s in self.skip_steps), "trainer.skip_steps", f"steps count from 1, got {self.skip_steps}")
        require(self.init_from is not None or not self.init_optimizer, "trainer.init_optimizer",
                "needs trainer.init_from (the checkpoint whose optimizer state to take)")
        require(
            (self.max_steps is None) != (self.max_tokens is None),
            "trainer.max_steps",
            "set exactly one of trainer.max_steps and trainer.max_tokens",
        )


@dataclasses.dataclass(kw_only=True)
class FaultsConfig(Config):
    """What a run does when a step goes wrong (`lmforge.train.nonfinite`)."""

    nonfinite_rollback_after: int = 3
    """A step whose global loss or gradient norm is not finite is never applied (every rank
    decides alike). This many such steps within `nonfinite_window` steps roll the run back:
    it exits (code 75) with a record in RUN/faults/rollbacks.jsonl, and the restart resumes
    from the last checkpoint before the first of them, skipping their batches."""
    nonfinite_window: int = 0
    """Steps over which `nonfinite_rollback_after` bad steps are counted; 0 = the same number
    (that many in a row). No checkpoint is written while a bad step is this recent."""
    max_rollbacks: int = 2
    """Rollbacks a run may make; one more stops it with an error instead."""
    on_checkpoint_error: Literal["stop", "continue"] = "stop"
    """A checkpoint that cannot be written (disk full, permissions) is one error line naming
    the folder and the OS error, on every rank alike, and `latest` keeps naming the previous
    one; then stop (exit 2: free space, relaunch, and it resumes from `latest`) or continue
    training and try again at the next checkpoint."""

    watchdog: Literal["auto", "always", "off"] = "auto"
    """Turn a hang into an exit (code 76) naming the stuck rank (`lmforge.train.watchdog`):
    auto = in runs of more than one rank, where one stuck rank stalls them all."""
    stall_floor_s: float = 60.0
    """A phase of a step (data, forward/backward, optimizer, callbacks) has stalled after
    max(stall_floor_s, stall_factor × the typical step time)."""
    stall_factor: float = 10.0
    stall_long_s: float = 1800.0
    """The budget of the first step (compilation, first gathers), evaluations and checkpoints."""
    heartbeat_s: float = 1.0
    """How often each rank rewrites RUN/faults/heartbeat/rank-R.json; at most stall_floor_s / 4,
    as a rank whose heartbeat is older than half the budget counts as frozen or dead."""
    collective_timeout_s: float = 600.0
    """The process group's timeout after the first step (longer during evaluations and
    checkpoints), so a hang the watchdog misses still fails in minutes; 0 keeps the default."""
    straggler_rel_margin: float = 0.2
    """A rank whose own compute (its blocks' forward) per step exceeds the ranks' median by
    this fraction *and* by straggler_abs_margin_s, in most of the last straggler_windows
    logging windows, is named a straggler (`straggler_ranks` in metrics.jsonl)."""
    straggler_abs_margin_s: float = 0.02
    straggler_windows: int = 5
    evict_stragglers: bool = False
    """Stop after the next checkpoint once a straggler is named (exit 76, the hosts in
    RUN/faults/last.json), so a requeue can run without them."""

    @property
    def window(self) -> int:
        return self.nonfinite_window or self.nonfinite_rollback_after

    def validate(self) -> None:
        require(self.nonfinite_rollback_after >= 1, "faults.nonfinite_rollback_after",
                f"must be ≥ 1 (bad steps that trigger a rollback), got {self.nonfinite_rollback_after}")
        require(self.nonfinite_window == 0 or self.nonfinite_window >= self.nonfinite_rollback_after,
                "faults.nonfinite_window", f"must be 0 (= nonfinite_rollback_after) or ≥ nonfinite_rollback_after="
                f"{self.nonfinite_rollback_after}, got {self.nonfinite_window}")
        require(self.max_rollbacks >= 1, "faults.max_rollbacks", f"must be ≥ 1, got {self.max_rollbacks}")
        for name in ("stall_floor_s", "stall_factor", "heartbeat_s", "straggler_rel_margin"):
            require(getattr(self, name) > 0, f"faults.{name}", f"must be positive, got {getattr(self, name)}")
        require(self.stall_long_s >= self.stall_floor_s, "faults.stall_long_s",
                f"must be ≥ faults.stall_floor_s={self.stall_floor_s} (it is the longer budget), got {self.stall_long_s}")
        require(self.heartbeat_s <= self.stall_floor_s / 4, "faults.heartbeat_s",
                f"must be ≤ faults.stall_floor_s / 4 = {self.stall_floor_s / 4:g} (a heartbeat older than half the budget "
                f"means a frozen rank), got {self.heartbeat_s}")
        require(self.collective_timeout_s == 0 or self.collective_timeout_s > self.stall_floor_s,
                "faults.collective_timeout_s", f"must be 0 (keep the default) or more than faults.stall_floor_s="
                f"{self.stall_floor_s} (the watchdog names the rank first), got {self.collective_timeout_s}")
        require(self.straggler_abs_margin_s >= 0, "faults.straggler_abs_margin_s",
                f"must be ≥ 0, got {self.straggler_abs_margin_s}")
        require(self.straggler_windows >= 1, "faults.straggler_windows", f"must be ≥ 1, got {self.straggler_windows}")


@dataclasses.dataclass(kw_only=True)
class SpikeConfig(Config):
    enabled: bool = False
    """Watch every step for spikes (one host sync per step; off by default for that reason)."""
    window: int = 128
    """Steps of history the mean and standard deviation are taken over."""
    sigma: float = 6.0
    """A value above mean + sigma · std of the window is a spike."""
    min_history: int = 32
    """Steps of history needed before the window rule (mean + sigma · std) judges."""
    robust_min_history: int = 8
    """Steps of history needed before anything is judged: with this many up to min_history,
    the robust rule judges (median + robust_k · spread). ≥ min_history turns it off."""
    robust_k: float = 8.0
    """An early value above median + robust_k · spread of the history is a spike (see
    "Choosing robust_k and robust_min_spread" in `lmforge.train.spikes`)."""
    robust_min_spread: float = 0.1
    """The robust rule's spread is 1.4826 · MAD, but at least this fraction of the median, so
    that an early value must also exceed (1 + robust_k · robust_min_spread) × the median (1.8×
    by default) and a history whose MAD is tiny by chance does not make any wobble a spike."""
    skip_step: bool = False
    """Do not apply a spiking step's update (gradients dropped, optimizer state untouched)."""
    top_documents: int = 20
    """Documents recorded per spike, highest summed loss first."""

    def validate(self) -> None:
        require(self.window >= 2, "spikes.window", f"must be ≥ 2, got {self.window}")
        require(self.sigma > 0, "spikes.sigma", f"must be positive, got {self.sigma}")
        require(2 <= self.min_history <= self.window, "spikes.min_history",
                f"must be between 2 and spikes.window={self.window}, got {self.min_history}")
        require(self.robust_min_history >= 3, "spikes.robust_min_history",
                f"must be ≥ 3 (a median and MAD of fewer values say nothing), got {self.robust_min_history}; "
                f"set it ≥ spikes.min_history={self.min_history} to judge nothing before the window rule")
        require(self.robust_k > 0, "spikes.robust_k", f"must be positive, got {self.robust_k}")
        require(self.robust_min_spread >= 0, "spikes.robust_min_spread",
                f"must be ≥ 0 (a fraction of the median), got {self.robust_min_spread}")
        require(self.top_documents >= 1, "spikes.top_documents", f"must be ≥ 1, got {self.top_documents}")

    @property
    def first_judged_history(self) -> int:
        """Fewest values of history any rule judges with."""
        return min(self.robust_min_history, self.min_history)


@dataclasses.dataclass(kw_only=True)
class DownstreamEvalConfig(Config):
    """Downstream tasks scored during training (OLMES rank classification, `lmforge.eval`)."""

    tasks: list[str] = dataclasses.field(default_factory=list)
    """OLMES tasks, each optionally TASK:VARIANT (e.g. [arc_easy, hellaswag]); empty = none."""
    variant: str = "rc_0shot"
    """Variant of the tasks named without one."""
    every: int = 1000
    """Score the tasks every this many steps (and before the first and after the last)."""
    limit: int | None = 200
    """Documents per task (the first N); null = all. Every rank scores them all."""
    batch_size: int = 16

    def validate(self) -> None:
        require(self.every > 0, "evals.every", f"must be positive, got {self.every}")
        require(self.limit is None or self.limit > 0, "evals.limit", f"must be positive or null, got {self.limit}")
        require(self.batch_size > 0, "evals.batch_size", f"must be positive, got {self.batch_size}")


@dataclasses.dataclass(kw_only=True)
class SinksConfig(Config):
    """Where metrics go besides RUN/metrics.jsonl (rank 0 writes them)."""

    tensorboard: bool = False
    """Event files in RUN/tensorboard/ (pip install 'lmforge[tensorboard]')."""
    wandb: bool = False
    """A Weights & Biases run in RUN/wandb/ (pip install 'lmforge[wandb]')."""
    wandb_project: str = "lmforge"
    wandb_mode: Literal["offline", "online"] = "offline"
    """offline needs no network or account; `wandb sync RUN/wandb/offline-run-*` uploads later."""


@dataclasses.dataclass(kw_only=True)
class RunConfig(Config):
    model: ModelConfig
    data: DataConfig
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    trainer: TrainerConfig
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    spikes: SpikeConfig = dataclasses.field(default_factory=SpikeConfig)
    evals: DownstreamEvalConfig = dataclasses.field(default_factory=DownstreamEvalConfig)
    sinks: SinksConfig = dataclasses.field(default_factory=SinksConfig)
    faults: FaultsConfig = dataclasses.field(default_factory=FaultsConfig)
    tokenizer: Path | None = None
    """tokenizer.json the data was made with; copied into checkpoints and exports."""

    def validate(self) -> None:
        t, d = self.trainer, self.data
        require(
            t.batch_tokens % d.seq_len == 0,
            "trainer.batch_tokens",
            f"{t.batch_tokens} is not a multiple of data.seq_len={d.seq_len}",
        )
        instances = t.batch_tokens // d.seq_len
        require(
            instances % t.micro_batch_size == 0,
            "trainer.micro_batch_size",
            f"{t.micro_batch_size} must divide the {instances} instances of a batch (batch_tokens / seq_len)",
        )
        ep, experts = self.parallel.ep, self.model.moe_num_experts
        if ep > 1:
            require(experts > 0, "parallel.ep", f"{ep} spreads experts over ranks, but the model is dense "
                    "(model.moe_num_experts: 0); set parallel.ep: 1 or give the model experts")
            require(experts % ep == 0, "parallel.ep",
                    f"{ep} does not divide model.moe_num_experts={experts}; pick a divisor of {experts}")
        if self.evals.tasks:
            require(self.tokenizer is not None, "evals.tasks",
                    "scoring tasks needs the run's tokenizer: set tokenizer (the tokenizer.json the data was made with)")

    def check_world_size(self, world_size: int) -> None:
        """The global batch must split into whole micro-batches on every rank."""
        instances = self.batch_instances
        require(
            instances % world_size == 0,
            "trainer.batch_tokens",
            f"{self.trainer.batch_tokens} tokens = {instances} instances of data.seq_len={self.data.seq_len} per step "
            f"cannot be split evenly over {world_size} ranks; use a world size that divides {instances}, "
            "or change trainer.batch_tokens",
        )
        per_rank = instances // world_size
        require(
            per_rank % self.trainer.micro_batch_size == 0,
            "trainer.micro_batch_size",
            f"{self.trainer.micro_batch_size} must divide the {per_rank} instances each of {world_size} ranks "
            f"gets per step; pick a divisor of {per_rank}",
        )

    def check_restarts(self, max_restarts: int) -> None:
        """A launcher that restarts failed runs (`torchrun --max-restarts`) needs a checkpoint
        to restart from before the end."""
        t, steps = self.trainer, self.max_steps
        if max_restarts <= 0 or t.checkpoint_every < steps or any(s < steps for s in t.keep_steps):
            return
        require(False, "trainer.checkpoint_every",
                f"torchrun --max-restarts={max_restarts} restarts a failed run from its last checkpoint, but this run "
                f"writes none before its end (checkpoint_every={t.checkpoint_every} ≥ {steps} steps); set "
                f"trainer.checkpoint_every below {steps}")

    @property
    def batch_instances(self) -> int:
        return self.trainer.batch_tokens // self.data.seq_len

    @property
    def max_steps(self) -> int:
        if self.trainer.max_steps is not None:
            return self.trainer.max_steps
        assert self.trainer.max_tokens is not None
        return -(-self.trainer.max_tokens // self.trainer.batch_tokens)
