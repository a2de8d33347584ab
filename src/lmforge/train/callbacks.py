"""Side concerns of training, each a callback that owns its state: speed, validation,
logging and checkpointing. The loop calls hooks in priority order (higher first), so the
speed monitor and validator add their numbers before the logger writes the step's row.

The interface they implement is `lmforge.train.callback.Callback`. Collective work (validation, checkpoints) runs on every rank; console and metrics.jsonl on
rank 0 only.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lmforge.data.dataset import IGNORE_INDEX
from lmforge.model.size import flops_per_token
from lmforge.train.callback import Callback

if TYPE_CHECKING:
    from lmforge.train.config import RunConfig
    from lmforge.train.trainer import Trainer

log = logging.getLogger(__name__)


class SpeedMonitor(Callback):
    """Training tokens/s (global and per device) over the last log interval, MFU against the
    device's bf16 peak, and peak memory on GPU. Only time inside steps counts: validation
    and checkpointing do not dilute the rate."""

    priority = 30
    name = "speed"

    def on_train_start(self, trainer: Trainer) -> None:
        self.flops_per_token = flops_per_token(trainer.cfg.model, trainer.cfg.data.seq_len)
        self.peak = trainer.world.peak_flops()
        self.seconds, self.tokens = 0.0, 0

    def pre_step(self, trainer: Trainer, batch) -> None:
        self.step_start, self.tokens_before = time.perf_counter(), trainer.tokens_seen

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        log_step = trainer.step % trainer.cfg.trainer.log_every == 0
        if log_step:
            # Host sync once per log interval: kernels queued by earlier steps finish here, so
            # the interval's summed step times cover the device work, not just the launches.
            trainer.world.synchronize()
        self.seconds += time.perf_counter() - self.step_start
        self.tokens += trainer.tokens_seen - self.tokens_before
        if not log_step:
            return
        rate = self.tokens / max(self.seconds, 1e-9)
        metrics["tokens_per_s"] = rate
        metrics["tokens_per_s_per_device"] = rate / trainer.world.size
        if self.peak:
            metrics["mfu"] = rate / trainer.world.size * self.flops_per_token / self.peak
        if (mem := trainer.world.max_memory_gib()) is not None:
            metrics["peak_mem_gib"] = mem
        self.seconds, self.tokens = 0.0, 0


class Validator(Callback):
    """Mean loss over the same validation instances every `eval_every` steps (and at 0 and
    end). The instances are split over ranks and the sums all-reduced, so the value does not
    depend on the world size."""

    priority = 20
    name = "validator"

    def __init__(self) -> None:
        self.initial_loss: float | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.val_dataset is not None and trainer.step == 0:
            self.initial_loss = self.evaluate(trainer)
            trainer.log_row({"step": 0, "tokens": 0, "val_loss": self.initial_loss})

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if trainer.val_dataset is None:
            return
        if trainer.step % trainer.cfg.trainer.eval_every == 0 or trainer.step == trainer.max_steps:
            metrics["val_loss"] = self.evaluate(trainer)

    def evaluate(self, trainer: Trainer) -> float:
        data, world = trainer.val_dataset, trainer.world
        assert data is not None
        mb = trainer.cfg.trainer.micro_batch_size
        count = min(trainer.cfg.trainer.eval_batches * mb, data.num_instances)
        mine = np.arange(world.rank, count, world.size)
        # Every rank runs the same number of forwards (FSDP's gathers are collective); a rank
        # whose share runs out runs a row with every target masked.
        per_rank = -(-count // world.size)
        sums = torch.zeros(2, device=trainer.world.device)
        with trainer.progress.during("eval"):
            for start in range(0, per_rank, mb):
                rows = mine[start : start + mb]
                batch = data.batch(rows if len(rows) else np.zeros(1, dtype=np.int64))
                if not len(rows):
                    batch.targets.fill_(IGNORE_INDEX)
                sums += trainer.module.eval_sums(batch.inputs, batch.targets)
            world.all_reduce_sum(sums)
            return float(sums[0] / sums[1].clamp(min=1))  # host sync: once per evaluation

    def state_dict(self) -> dict[str, Any]:
        return {"initial_loss": self.initial_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial_loss = state.get("initial_loss")


class MetricsLogger(Callback):
    """A row per logged step in metrics.jsonl, and a one-line console progress with ETA
    (rank 0 only)."""

    priority = 10
    name = "metrics"

    def on_train_start(self, trainer: Trainer) -> None:
        self.start_time, self.start_step = time.perf_counter(), trainer.step
        self.interactive = sys.stderr.isatty()

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if trainer.step % trainer.cfg.trainer.log_every and "val_loss" not in metrics:
            return
        row = {"step": trainer.step, "tokens": trainer.tokens_seen}
        row.update({k: _plain(v) for k, v in metrics.items()})  # host sync
        trainer.log_row(row)
        if not trainer.world.is_main:
            return
        done = trainer.step - self.start_step
        elapsed = time.perf_counter() - self.start_time
        eta = elapsed / max(done, 1) * (trainer.max_steps - trainer.step)
        line = (
            f"step {trainer.step}/{trainer.max_steps} | loss {row['loss']:.4f} | lr {row['lr']:.2e} "
            f"| gnorm {row['grad_norm']:.3f} | {row.get('tokens_per_s', 0):,.0f} tok/s"
        )
        if "mfu" in row:
            line += f" | MFU {row['mfu']:.1%}"
        if "val_loss" in row:
            line += f" | val {row['val_loss']:.4f}"
        line += f" | ETA {_duration(eta)}"
        end = "\n" if not self.interactive or "val_loss" in row or trainer.step == trainer.max_steps else "\r"
        print(line, file=sys.stderr, end=end, flush=True)


class Checkpointer(Callback):
    """Saves every `checkpoint_every` steps, at each of `keep_steps`, and at the end (see
    `train.checkpoint`)."""

    priority = 0
    name = "checkpointer"

    def __init__(self) -> None:
        self.owed = False  # a checkpoint was due while `trainer.checkpoint_hold` said not now

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        t, step = trainer.cfg.trainer, trainer.step
        if not (self.owed or step % t.checkpoint_every == 0 or step == trainer.max_steps or step in trainer.kept_steps):
            return
        if trainer.checkpoint_hold and step != trainer.max_steps:
            if not self.owed and trainer.world.is_main:
                log.info(f"step {step}: checkpoint postponed ({trainer.checkpoint_hold})")
            self.owed = True
            return
        self.owed = False
        trainer.save_checkpoint()


def default_callbacks(cfg: RunConfig) -> list[Callback]:
    """The training callbacks a run's config asks for. Evaluation's (`evals.tasks`) is not
    among them: `lmforge.experiments.train_run.run_callbacks`, above both training and
    evaluation, adds it, so `lmforge.train` never imports `lmforge.eval`."""
    from lmforge.train.nonfinite import NonFiniteGuard
    from lmforge.train.sinks import TensorBoardSink, WandbSink
    from lmforge.train.spikes import SpikeMonitor
    from lmforge.train.stragglers import StragglerMonitor

    extra: list[Callback] = []
    if cfg.spikes.enabled:
        extra.append(SpikeMonitor(cfg.spikes))
    if cfg.sinks.tensorboard:
        extra.append(TensorBoardSink())
    if cfg.sinks.wandb:
        extra.append(WandbSink(cfg.sinks.wandb_project, cfg.sinks.wandb_mode))
    return [SpeedMonitor(), StragglerMonitor(cfg.faults), Validator(), NonFiniteGuard(cfg.faults), *extra, MetricsLogger(),
            Checkpointer()]



def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()  # a vector: MoE's expert_share
    return value


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
