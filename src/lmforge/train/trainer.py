"""The training loop. `Trainer.fit` reads top to bottom: resume, then for each step take a
batch, run the micro-batches, step the optimizer, and hand the step's metrics to the
callbacks (speed, validation, logging, checkpointing)."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from lmforge.data.dataset import BatchLoader, InstanceDataset, TokenStream
from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import LmforgeError
from lmforge.fsutil import atomic_write
from lmforge.model.io import load_model, save_model
from lmforge.model.loss import IGNORE_INDEX, lm_loss
from lmforge.train import checkpoint as ckpt
from lmforge.train.callbacks import Callback, Checkpointer, MetricsLogger, SpeedMonitor, Validator, append_jsonl
from lmforge.train.config import RunConfig
from lmforge.train.optim import build_optimizer, lr_at

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
# Fields a resumed run may change: they affect bookkeeping, never the numbers trained.
RESUME_MAY_CHANGE = {
    f"trainer.{k}"
    for k in ("log_every", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints", "compile", "device")
}


def check_data_matches_model(cfg: RunConfig, stream: TokenStream, tokenizer: Tokenizer | None) -> None:
    """Refuse data the model cannot have been meant for: ids beyond its vocabulary, or a
    tokenizer other than the run's."""
    if stream.vocab_size > cfg.model.vocab_size:
        raise LmforgeError(
            f"data.train was tokenized with a {stream.vocab_size}-id tokenizer but model.vocab_size is "
            f"{cfg.model.vocab_size}; set model.vocab_size={stream.vocab_size} or retokenize"
        )
    if tokenizer is not None and tokenizer.fingerprint != stream.tokenizer_fingerprint:
        raise LmforgeError(
            f"data.train was tokenized with another tokenizer (fingerprint {stream.tokenizer_fingerprint}) "
            f"than tokenizer={cfg.tokenizer} ({tokenizer.fingerprint}); retokenize with it"
        )


class Trainer:
    def __init__(self, cfg: RunConfig, callbacks: list[Callback] | None = None):
        self.cfg = cfg
        self.run_dir = Path(cfg.trainer.run_dir)
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if cfg.trainer.device == "auto" else cfg.trainer.device
        )
        self.tokenizer = Tokenizer.load(cfg.tokenizer) if cfg.tokenizer else None

        # Data: order and masking are pure functions of the config, so nothing here is random.
        stream = TokenStream(cfg.data.train)
        check_data_matches_model(cfg, stream, self.tokenizer)
        self.dataset = InstanceDataset(
            stream, cfg.data.seq_len, seed=cfg.trainer.seed, mask_repetitions=cfg.data.mask_repetitions
        )
        self.loader = BatchLoader(self.dataset, cfg.batch_instances)
        self.val_dataset = None
        if cfg.data.validation:
            val_stream = TokenStream(cfg.data.validation)
            if val_stream.tokenizer_fingerprint != stream.tokenizer_fingerprint:
                raise LmforgeError("data.validation was tokenized with a different tokenizer than data.train")
            self.val_dataset = InstanceDataset(val_stream, cfg.data.seq_len, seed=0, mask_repetitions=False)

        # Model and optimizer: the init is the only random draw, seeded here.
        _seed_everything(cfg.trainer.seed)
        self.model = cfg.model.build(device=self.device)
        self.forward = torch.compile(self.model) if cfg.trainer.compile else self.model
        self.optimizer = build_optimizer(self.model, cfg.optim)

        self.callbacks = sorted(
            [SpeedMonitor(), Validator(), MetricsLogger(), Checkpointer()] if callbacks is None else callbacks,
            key=lambda c: (-c.priority, type(c).__name__),
        )
        self.step = 0
        self.tokens_seen = 0
        self.max_steps = cfg.max_steps
        self.initial_val_loss: float | None = None

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        self.prepare_run_dir()
        batches = iter(self.loader)
        for cb in self.callbacks:
            cb.on_train_start(self)
        metrics: dict[str, Any] = {}
        while self.step < self.max_steps:
            self.step += 1
            for cb in self.callbacks:
                cb.pre_step(self)
            batch = next(batches)
            metrics = self.train_step(batch)
            for cb in self.callbacks:
                cb.post_step(self, metrics)
        for cb in self.callbacks:
            cb.on_train_end(self, metrics)
        return metrics

    def train_step(self, batch) -> dict[str, Any]:
        lr = lr_at(self.step, self.max_steps, self.cfg.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        mb = self.cfg.trainer.micro_batch_size
        inputs, targets = batch.inputs.to(self.device), batch.targets.to(self.device)
        # Normalise by the batch's counted tokens, so the gradient is the mean over the whole batch.
        n_tokens = (targets != IGNORE_INDEX).sum().clamp(min=1)
        ce_sum = torch.zeros((), device=self.device)
        z_sum = torch.zeros((), device=self.device)
        for start in range(0, len(inputs), mb):
            with self.autocast():
                logits = self.forward(inputs[start : start + mb])
            ce, z, _ = lm_loss(logits, targets[start : start + mb], z_loss_weight=self.cfg.optim.z_loss, reduction="sum")
            ((ce + z) / n_tokens).backward()
            ce_sum += ce.detach()
            z_sum += z.detach()
        clip = self.cfg.optim.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.tokens_seen += batch.inputs.numel()
        # Tensors stay on the device; the logger syncs once per log interval.
        return {
            "loss": ce_sum / n_tokens,
            "z_loss": z_sum / n_tokens,
            "grad_norm": grad_norm,
            "lr": lr,
            "masked_instances": batch.n_masked_instances,
            # Which instances this step saw, as one number: `inspect-batch` must agree with it.
            "batch_crc": batch_crc(batch.instances),
        }

    def autocast(self):
        """bf16 autocast on CUDA (fp32 master weights and reductions); plain fp32 on CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- run directory, metrics and checkpoints ------------------------------------------------------
    def prepare_run_dir(self) -> None:
        """Start a run, or resume one: the run dir's config must be this config."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.run_dir / CONFIG_FILE
        if config_path.exists():
            changed = [k for k in _diff_keys(yaml.safe_load(config_path.read_text()), self.cfg.to_dict())
                       if k not in RESUME_MAY_CHANGE]
            if changed:
                raise LmforgeError(
                    f"{self.run_dir} holds a run with a different config ({', '.join(changed)}); "
                    "use a new trainer.run_dir, or resume with the same config"
                )
        atomic_write(config_path, self.cfg.to_yaml())
        resume_from = ckpt.find_resumable(self.checkpoint_root)
        if resume_from is not None:
            self.load_checkpoint(resume_from)
            log.info(f"resumed from {resume_from} (step {self.step}, {self.tokens_seen:,} tokens)")
        self._truncate_metrics()

    @property
    def checkpoint_root(self) -> Path:
        return self.run_dir / "checkpoints"

    def logger_row(self, row: dict[str, Any]) -> None:
        append_jsonl(self.run_dir / METRICS_FILE, row)

    def _truncate_metrics(self) -> None:
        """Drop rows logged after the checkpoint we resume from: those steps run again."""
        path = self.run_dir / METRICS_FILE
        if not path.exists():
            return
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [r for r in rows if _row_step(r) <= self.step]
        if self.step == 0:
            kept = []  # a fresh start (no complete checkpoint): begin the log again
        atomic_write(path, "".join(r + "\n" for r in kept))

    def save_checkpoint(self) -> Path:
        def write(folder: Path) -> None:
            save_model(self.model, folder, self.tokenizer)
            torch.save(self.optimizer.state_dict(), folder / "optim.pt")
            torch.save(ckpt.rng_state(), folder / "rng.pt")
            state = {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "loader": self.loader.state_dict(),
                "initial_val_loss": self.initial_val_loss,
                "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks},
            }
            (folder / "trainer.json").write_text(json.dumps(state, indent=1))
            (folder / CONFIG_FILE).write_text(self.cfg.to_yaml())

        path = ckpt.write_checkpoint(self.checkpoint_root, self.step, write)
        ckpt.prune(self.checkpoint_root, self.cfg.trainer.keep_checkpoints)
        return path

    def load_checkpoint(self, folder: Path) -> None:
        model = load_model(folder, device=self.device)
        self.model.load_state_dict(model.state_dict())
        self.optimizer.load_state_dict(ckpt.load_torch(folder / "optim.pt"))
        ckpt.set_rng_state(ckpt.load_torch(folder / "rng.pt"))
        state = json.loads((folder / "trainer.json").read_text())
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.initial_val_loss = state.get("initial_val_loss")
        self.loader.load_state_dict(state["loader"])
        for cb in self.callbacks:
            cb.load_state_dict(state["callbacks"].get(type(cb).__name__, {}))


def batch_crc(instances: np.ndarray) -> int:
    return zlib.crc32(np.asarray(instances, dtype=np.int64).tobytes())


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _row_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except json.JSONDecodeError:
        return 1 << 62  # a torn last line from a killed run: drop it


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [prefix.rstrip(".")] if a != b else []


def train(cfg: RunConfig) -> dict[str, Any]:
    """Train (or resume) the run `cfg` describes; returns the last step's metrics."""
    return Trainer(cfg).fit()

