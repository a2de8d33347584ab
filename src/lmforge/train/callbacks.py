"""Side concerns of training, each a callback with its own state: speed, validation,
logging and checkpointing. The loop calls hooks in priority order (higher first), so the
speed monitor and validator add their numbers before the logger writes the step's row."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lmforge.model.loss import lm_loss
from lmforge.model.size import flops_per_token

if TYPE_CHECKING:
    from lmforge.train.trainer import Trainer

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s, for MFU. Matched against torch.cuda.get_device_name().
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


class Callback:
    priority = 0

    def on_train_start(self, trainer: Trainer) -> None: ...

    def pre_step(self, trainer: Trainer) -> None: ...

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...

    def on_train_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class SpeedMonitor(Callback):
    """Training tokens/s over the last log interval and, on CUDA, model FLOPs utilisation.
    Only time inside steps counts: validation and checkpointing do not dilute the rate."""

    priority = 30

    def on_train_start(self, trainer: Trainer) -> None:
        self.flops_per_token = flops_per_token(trainer.cfg.model, trainer.cfg.data.seq_len)
        self.peak = None
        if trainer.device.type == "cuda":
            name = torch.cuda.get_device_name(trainer.device)
            self.peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
        self.seconds, self.tokens = 0.0, 0

    def pre_step(self, trainer: Trainer) -> None:
        self.step_start, self.tokens_before = time.perf_counter(), trainer.tokens_seen

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        log_step = trainer.step % trainer.cfg.trainer.log_every == 0
        if log_step and trainer.device.type == "cuda":
            # Host sync once per log interval: kernels queued by earlier steps finish here, so
            # the interval's summed step times cover the GPU work, not just the launches.
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - self.step_start
        self.tokens += trainer.tokens_seen - self.tokens_before
        if not log_step:
            return
        rate = self.tokens / max(self.seconds, 1e-9)
        metrics["tokens_per_s"] = rate
        if self.peak:
            metrics["mfu"] = rate * self.flops_per_token / self.peak
        self.seconds, self.tokens = 0.0, 0


class Validator(Callback):
    """Mean loss over the same validation instances every `eval_every` steps (and at 0 and end)."""

    priority = 20

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.val_dataset is not None and trainer.step == 0:
            trainer.initial_val_loss = self.evaluate(trainer)
            trainer.logger_row({"step": 0, "tokens": 0, "val_loss": trainer.initial_val_loss})

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if trainer.val_dataset is None:
            return
        if trainer.step % trainer.cfg.trainer.eval_every == 0 or trainer.step == trainer.max_steps:
            metrics["val_loss"] = self.evaluate(trainer)

    @torch.no_grad()
    def evaluate(self, trainer: Trainer) -> float:
        data = trainer.val_dataset
        assert data is not None
        mb = trainer.cfg.trainer.micro_batch_size
        count = min(trainer.cfg.trainer.eval_batches * mb, data.num_instances)
        trainer.model.eval()
        total, tokens = torch.zeros((), device=trainer.device), 0
        for start in range(0, count, mb):
            batch = data.batch(np.arange(start, min(start + mb, count)))
            with trainer.autocast():
                logits = trainer.model(batch.inputs.to(trainer.device))
            ce, _, n = lm_loss(logits, batch.targets.to(trainer.device), reduction="sum")
            total += ce
            tokens += int(n)
        trainer.model.train()
        return float(total) / max(tokens, 1)  # host sync: once per evaluation


class MetricsLogger(Callback):
    """A row per logged step in metrics.jsonl, and a one-line console progress with ETA."""

    priority = 10

    def on_train_start(self, trainer: Trainer) -> None:
        self.start_time, self.start_step = time.perf_counter(), trainer.step
        self.interactive = sys.stderr.isatty()

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if trainer.step % trainer.cfg.trainer.log_every and "val_loss" not in metrics:
            return
        row = {"step": trainer.step, "tokens": trainer.tokens_seen}
        row.update({k: float(v) if isinstance(v, torch.Tensor) else v for k, v in metrics.items()})  # host sync
        trainer.logger_row(row)
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
    """Saves every `checkpoint_every` steps and at the end (see `train.checkpoint`)."""

    priority = 0

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        every = trainer.cfg.trainer.checkpoint_every
        if trainer.step % every == 0 or trainer.step == trainer.max_steps:
            trainer.save_checkpoint()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def append_jsonl(path: os.PathLike, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
