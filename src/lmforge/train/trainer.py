"""The training loop. `Trainer.fit` reads top to bottom: resume, then for each step take this
rank's slice of the batch, let the TrainModule run the optimizer step, and hand the step's
metrics to the callbacks (speed, validation, logging, checkpointing).

The loop owns batches, the step counter, callbacks and resuming; the `TrainModule` owns the
model, devices, parallelism and the optimizer. Under torchrun every rank runs this same loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from lmforge import __version__
from lmforge.data.dataset import BatchLoader, InstanceDataset, TokenStream
from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import ConfigError, LmforgeError
from lmforge.fsutil import atomic_write
from lmforge.model.config import ModelConfig
from lmforge.model.hf import from_hf
from lmforge.model.io import CONFIG_FILE as MODEL_CONFIG_FILE
from lmforge.model.io import is_hf_folder, load_model, model_folder_problem, save_tokenizer
from lmforge.parallel import World, init_world
from lmforge.train import checkpoint as ckpt
from lmforge.train.callback import DOWNSTREAM_EVAL, Callback, append_jsonl
from lmforge.train.callbacks import default_callbacks
from lmforge.train.config import FaultsConfig, RunConfig
from lmforge.train.module import TrainModule
from lmforge.train.nonfinite import rolled_back_steps
from lmforge.train.optim import lr_at
from lmforge.train.preempt import StopSignal
from lmforge.train.progress import Progress
from lmforge.train.watchdog import Watchdog

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
TRAINER_STATE = "trainer.json"
LAUNCHES = Path("faults") / "launches.jsonl"
# Fields a resumed run may change: they affect bookkeeping or how the numbers are computed
# (the world size, AC, compile), never what is trained.
RESUME_MAY_CHANGE = {
    *(f"trainer.{k}" for k in ("log_every", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints",
                               "async_checkpoint")),
    *(f"parallel.{k}" for k in ("device", "dp_replicate", "dp_shard", "ep", "activation_checkpointing", "ac_every",
                                 "compile", "loss_chunk_tokens", "prefetch_batches")),
    *(f"faults.{f.name}" for f in dataclasses.fields(FaultsConfig)),
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
    def __init__(self, cfg: RunConfig, callbacks: list[Callback] | None = None, world: World | None = None):
        self.cfg = cfg
        self.run_dir = Path(cfg.trainer.run_dir)
        self.world = world or init_world(cfg.parallel, fault_dir=self.run_dir / "faults" / "nccl")
        cfg.check_world_size(self.world.size)
        cfg.check_restarts(int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", 0)))  # set by torchrun
        self.tokenizer = Tokenizer.load(cfg.tokenizer) if cfg.tokenizer else None

        # Data: order and masking are pure functions of the config, so nothing here is random.
        # Each rank reads only its slice of every global batch.
        stream = TokenStream(cfg.data.train)
        check_data_matches_model(cfg, stream, self.tokenizer)
        self.dataset = InstanceDataset(
            stream, cfg.data.seq_len, seed=cfg.trainer.seed, mask_repetitions=cfg.data.mask_repetitions
        )
        self.loader = BatchLoader(
            self.dataset, cfg.batch_instances, rank=self.world.rank, world_size=self.world.size,
            prefetch=cfg.parallel.prefetch_batches, pin_memory=self.world.device.type == "cuda",
            content_crc=self.world.is_main,  # rank 0 logs it
        )
        self.val_dataset = None
        if cfg.data.validation:
            val_stream = TokenStream(cfg.data.validation)
            if val_stream.tokenizer_fingerprint != stream.tokenizer_fingerprint:
                raise LmforgeError(
                    f"data.validation was tokenized with a different tokenizer (fingerprint "
                    f"{val_stream.tokenizer_fingerprint}) than data.train ({stream.tokenizer_fingerprint}); retokenize "
                    "data.validation with data.train's tokenizer, or make both with one `lmforge data tokenize INPUTS "
                    "--tokenizer T --out OUT --validation 0.01` (data.train: [OUT/train], data.validation: [OUT/val])"
                )
            self.val_dataset = InstanceDataset(val_stream, cfg.data.seq_len, seed=0, mask_repetitions=False)

        self.module = TrainModule(cfg, self.world)
        self.callbacks = sorted(default_callbacks(cfg) if callbacks is None else callbacks,
                                key=lambda c: (-c.priority, c.name))
        names = [c.name for c in self.callbacks]
        if cfg.evals.tasks and DOWNSTREAM_EVAL not in names:
            raise LmforgeError(
                "evals.tasks is set but no downstream-eval callback was given; build the callbacks with "
                "lmforge.experiments.train_run.run_callbacks(cfg) (what `lmforge train` does)"
            )
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise LmforgeError(f"two callbacks are named {dup!r}: give each its own `name` (it keys its checkpoint state)")
        self.step = 0
        self.tokens_seen = 0
        self.max_steps = cfg.max_steps
        self.pending: ckpt.PendingCheckpoint | None = None
        self.skip_steps: set[int] = set(cfg.trainer.skip_steps)  # + earlier rollbacks' (prepare_run_dir)
        self.saved_step = -1  # the step of the last checkpoint this process wrote (or is writing)
        self.checkpoint_hold: str | None = None
        """Why no checkpoint may be written now (a recent non-finite step), or None."""
        self._async_groups: dict | None = None
        self.kept_steps = cfg.trainer.kept_steps(self.max_steps)
        """Steps whose checkpoints are never pruned (trainer.keep_steps, trainer.release_every)."""
        self.progress = Progress()
        """This rank's step and phase, for the watchdog and the straggler monitor."""

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        self.check_run_dir()
        self.warn_unreleasable()
        progress = self.progress
        with StopSignal() as stop, self.watching():
            self.start_or_resume()
            self.record_launch()
            batches = iter(self.loader)
            for cb in self.callbacks:
                cb.on_train_start(self)
            metrics: dict[str, Any] = {}
            while self.step < self.max_steps:
                progress.begin_step(self.step + 1)
                batch = next(batches)
                self.step += 1
                for cb in self.callbacks:
                    cb.pre_step(self, batch)
                lr = lr_at(self.step, self.max_steps, self.cfg.optim)
                progress.enter("forward_backward")
                metrics = self.module.train_batch(batch, lr, before_step=lambda m: self.pre_optim_step(batch, m))
                progress.enter("callbacks")
                self.tokens_seen += self.cfg.trainer.batch_tokens
                # Which instances this step saw, as one number: `inspect-batch` must agree with it.
                metrics.update(lr=lr, batch_crc=batch_crc(batch.step_instances))
                if batch.content_crc is not None:  # the tokens themselves (rank 0, which logs)
                    metrics["content_crc"] = batch.content_crc
                for cb in self.callbacks:
                    cb.post_step(self, metrics)
                if stop.agreed(self.world):
                    batches.close()
                    self.stop_for_signal(stop.name)
                    return metrics
            batches.close()
            progress.enter("end")
            for cb in self.callbacks:
                cb.on_train_end(self, metrics)
            self.finish_checkpoint()
        return metrics

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """The hang watchdog around everything collective (`lmforge.train.watchdog`)."""
        mode = self.cfg.faults.watchdog
        if mode == "off" or (mode == "auto" and self.world.size == 1):
            yield
            return
        # One name for this launch, the same on every rank: heartbeats and hang records of an
        # earlier launch (before a restart) are told apart by it.
        launch = self.world.broadcast_object(f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        with Watchdog(self.cfg.faults, self.run_dir, self.world, self.progress, launch):
            yield

    def stop_for_signal(self, signal_name: str) -> None:
        """Every rank, after the step in which some rank got SIGTERM: checkpoint this step (unless
        the checkpointer just did, or a recent non-finite step forbids it) and leave the loop."""
        if self.saved_step != self.step and self.checkpoint_hold is None:
            self.save_checkpoint()
        self.finish_checkpoint()
        if self.world.is_main:
            kept = "" if self.checkpoint_hold is None else f" (no checkpoint: {self.checkpoint_hold})"
            log.warning(f"{signal_name}: stopped after step {self.step}{kept}; run the same command to continue")

    def pre_optim_step(self, batch, metrics: dict[str, Any]) -> bool:
        """Every callback sees the step before it is applied; any may veto it (skip-step). A
        step in `skip_steps` (config, or an earlier rollback) is read but never applied."""
        if self.step in self.skip_steps:
            metrics["skipped_batch"] = 1
            return False
        self.progress.enter("optimizer")
        verdicts = [cb.pre_optim_step(self, batch, metrics) for cb in self.callbacks]
        return all(verdicts)

    def callback(self, name: str) -> Callback:
        return next(c for c in self.callbacks if c.name == name)

    # -- run directory, metrics and checkpoints ------------------------------------------------------
    def prepare_run_dir(self) -> None:
        """Start a run, or resume one: the run dir's config must be this config. A start that
        is refused (another config, an init_from that does not fit) creates nothing."""
        self.check_run_dir()
        self.start_or_resume()

    def warn_unreleasable(self) -> None:
        t = self.cfg.trainer
        if self.world.is_main and t.keep_checkpoints and not self.kept_steps and self.max_steps > t.checkpoint_every:
            log.warning(f"trainer.keep_checkpoints={t.keep_checkpoints} deletes all but the last {t.keep_checkpoints} "
                        "checkpoints, so a release of this run will have no earlier revisions; set "
                        "trainer.release_every (or keep_steps) to keep the ones to publish")

    def check_run_dir(self) -> None:
        """Refuse a run dir that holds another run (every rank alike, before anything is written)."""
        config_path = self.run_dir / CONFIG_FILE
        problem = None
        if self.world.is_main and config_path.exists():
            changed = [k for k in _diff_keys(_saved_run_config(config_path), self.cfg.to_dict())
                       if k not in RESUME_MAY_CHANGE]
            if changed:
                problem = (f"{self.run_dir} holds a run with a different config ({', '.join(changed)}); "
                           "use a new trainer.run_dir, or resume with the same config")
        # Every rank must agree before anything collective happens (and fail together).
        problem = self.world.broadcast_object(problem if self.world.is_main else None)
        if problem:
            raise LmforgeError(problem)

    def start_or_resume(self) -> None:
        """Resume from the last complete checkpoint, or initialise; then record the config."""
        self.skip_steps |= rolled_back_steps(self.run_dir)
        resume_from = ckpt.find_resumable(self.checkpoint_root, quiet=not self.world.is_main)
        if resume_from is not None:
            self.load_checkpoint(resume_from)
            if self.world.is_main:
                log.info(f"resumed from {resume_from} (step {self.step}, {self.tokens_seen:,} tokens)")
        elif self.cfg.trainer.init_from is not None:
            self.init_from(Path(self.cfg.trainer.init_from), optimizer=self.cfg.trainer.init_optimizer)
        if self.world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.run_dir / CONFIG_FILE, self.cfg.to_yaml())
            self._truncate_metrics()
        self.world.barrier()

    def record_launch(self) -> None:
        """One row per launch in RUN/faults/launches.jsonl: when it started training and from
        which step, so restarts (torchrun's, a requeue's) and the work they redid are on record."""
        if self.world.is_main:
            (self.run_dir / LAUNCHES).parent.mkdir(exist_ok=True)
            append_jsonl(self.run_dir / LAUNCHES, {
                "time": time.time(), "from_step": self.step, "world_size": self.world.size,
                "device": self.world.device.type, "restart": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)),
                "versions": {"lmforge": __version__, "torch": torch.__version__, "numpy": np.__version__},
            })

    @property
    def checkpoint_root(self) -> Path:
        return self.run_dir / "checkpoints"

    def log_row(self, row: dict[str, Any]) -> None:
        """Append a row to metrics.jsonl and hand it to the sinks (rank 0; the values are the
        same on every rank)."""
        if self.world.is_main:
            append_jsonl(self.run_dir / METRICS_FILE, row)
            for cb in self.callbacks:
                cb.on_log(self, row)

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

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of this step; with trainer.async_checkpoint its tensors are
        written in the background and it becomes `latest` when the next one starts (or at the
        end of training). Returns the folder it has (or will have), or None if it could not be written and
        faults.on_checkpoint_error says continue."""
        with self.progress.during("checkpoint"):
            return self._save_checkpoint()

    def _save_checkpoint(self) -> Path | None:
        rank, background = self.world.rank, self.cfg.trainer.async_checkpoint
        self.finish_checkpoint()  # at most one checkpoint in flight

        def write_all(folder: Path) -> list:  # every rank: its shards and its RNG
            rng = ckpt.rng_state()
            state = self.module.state_dict()
            # The collective writes first: a failure in them reaches every rank alike.
            futures = ckpt.save_state(folder, state, background=background,
                                      process_groups=self._checkpoint_groups(list(state)) if background else None)
            (folder / "rng").mkdir(exist_ok=True)
            (folder / "rng" / f"rank-{rank}.json").write_text(json.dumps(rng))
            return futures

        def write_main(folder: Path) -> None:  # rank 0: the small files
            state = {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "world_size": self.world.size,
                "loader": self.loader.state_dict(),
                "callbacks": {cb.name: cb.state_dict() for cb in self.callbacks},
            }
            (folder / TRAINER_STATE).write_text(json.dumps(state, indent=1))
            (folder / CONFIG_FILE).write_text(self.cfg.to_yaml())
            (folder / MODEL_CONFIG_FILE).write_text(self.cfg.model.to_yaml())
            if self.tokenizer is not None:
                save_tokenizer(self.tokenizer, folder)

        try:
            self.pending = ckpt.begin_checkpoint(self.checkpoint_root, self.step, self.world, write_all, write_main)
        except ckpt.CheckpointWriteError as error:
            self.checkpoint_failed(error)
            return None
        self.saved_step = self.step
        if not background:
            self.finish_checkpoint()
        return self.checkpoint_root / f"step-{self.step}"

    def checkpoint_failed(self, error: ckpt.CheckpointWriteError) -> None:
        """Every rank alike: stop with the error's one line, or log it and train on."""
        self.pending = None
        if self.cfg.faults.on_checkpoint_error == "stop":
            raise error
        if self.world.is_main:
            log.error(f"{error}; training goes on (faults.on_checkpoint_error: continue)")

    def finish_checkpoint(self) -> None:
        """Make the checkpoint in flight (if any) complete and `latest`; prune old ones."""
        if self.pending is None:
            return
        pending, self.pending = self.pending, None
        try:
            with self.progress.during("checkpoint"):
                final = ckpt.finish_checkpoint(pending, self.world)
        except ckpt.CheckpointWriteError as error:
            self.checkpoint_failed(error)
            return
        if self.world.is_main:
            log.info(f"step {pending.step}: wrote checkpoint {final}")
            pruned = ckpt.prune(self.checkpoint_root, self.cfg.trainer.keep_checkpoints, self.kept_steps)
            if pruned:
                names = ", ".join(p.name for p in pruned)
                log.info(f"step {pending.step}: deleted {names} (trainer.keep_checkpoints={self.cfg.trainer.keep_checkpoints})")

    def _checkpoint_groups(self, keys: list[str]) -> dict:
        """A gloo group per state entry for background writes (created once, by all ranks at
        the same step, in the same order), so their collectives never pair up with training's
        or with each other's."""
        if self._async_groups is None:
            import torch.distributed as dist

            distributed = self.world.distributed
            self._async_groups = {key: dist.new_group(backend="gloo") if distributed else None for key in keys}
        return self._async_groups

    def load_checkpoint(self, folder: Path) -> None:
        self.check_checkpoint_model(folder)
        state = self.module.state_dict()
        ckpt.load_state(folder, state)
        self.module.load_state_dict(state)
        rng = folder / "rng" / f"rank-{self.world.rank}.json"
        if rng.exists():  # a rank beyond the saving world size keeps its fresh RNG (training draws none)
            ckpt.set_rng_state(ckpt.read_json(rng))
        trainer_state = ckpt.read_json(folder / TRAINER_STATE)
        self.step, self.tokens_seen = trainer_state["step"], trainer_state["tokens_seen"]
        self.loader.load_state_dict(trainer_state["loader"])
        for cb in self.callbacks:
            cb.load_state_dict(trainer_state["callbacks"].get(cb.name, {}))

    def init_from(self, folder: Path, *, optimizer: bool) -> None:
        """Weights (and optionally optimizer state) of another run's checkpoint, or of a
        transformers OLMo 2 folder, as step 0 of this one: the step counter, data position and
        schedule start afresh."""
        if is_hf_folder(folder):
            if optimizer:
                raise LmforgeError(f"trainer.init_optimizer: {folder} is a transformers folder, which holds no "
                                   "optimizer state; drop --init-optimizer (trainer.init_optimizer: false)")
            model = from_hf(folder)
            self.check_init_model(folder, model.cfg)
            self.module.load_full_weights(model.state_dict())
            del model
        else:
            if not (folder / MODEL_CONFIG_FILE).exists():
                raise LmforgeError(f"trainer.init_from: {model_folder_problem(folder)}")
            self.check_init_model(folder, _saved_model_config(folder))
            if optimizer and not (folder / "optim").is_dir():
                raise LmforgeError(f"trainer.init_optimizer: {folder} has no optimizer state (only training "
                                   "checkpoints do)")
            if (folder / "model").is_dir():
                state = self.module.state_dict()
                wanted = {"model": state["model"], **({"optim": state["optim"]} if optimizer else {})}
                ckpt.load_state(folder, wanted)
                self.module.load_state_dict(wanted)
            else:
                self.module.load_full_weights(load_model(folder).state_dict())
        if self.world.is_main:
            log.info(f"initialised from {folder}" + (" (weights and optimizer state)" if optimizer else " (weights)"))

    def check_init_model(self, folder: Path, saved: ModelConfig) -> None:
        """A model to start from must have this run's tensors (shapes compared resolved:
        n_kv_heads None is n_heads); other numerics that differ are the run's choice, said once."""
        ours = self.cfg.model
        if differ := ours.weight_differences(saved):
            theirs, mine = saved.resolved(), ours.resolved()
            detail = ", ".join(f"{k}: {theirs[k]} vs {mine[k]}" for k in differ)
            fix = " ".join(f"--model.{k}={_yaml_value(theirs[k])}" for k in differ)
            raise LmforgeError(
                f"trainer.init_from: {folder} holds a model of another shape ({detail}: checkpoint vs config); "
                f"give this run its shape ({fix}) or start from a checkpoint of this one"
            )
        if (differ := ours.function_differences(saved)) and self.world.is_main:
            theirs, mine = saved.resolved(), ours.resolved()
            log.warning(f"trainer.init_from: {folder} computes with " + ", ".join(f"{k}={theirs[k]}" for k in differ)
                        + "; this run uses " + ", ".join(f"{k}={mine[k]}" for k in differ) + " (to keep the model's: "
                        + " ".join(f"--model.{k}={_yaml_value(theirs[k])}" for k in differ) + ")")

    def check_checkpoint_model(self, folder: Path) -> None:
        """A checkpoint to resume must be of this run's model (configs compared resolved)."""
        saved = _saved_model_config(folder)
        changed = _diff_keys(saved.resolved(), self.cfg.model.resolved())
        if changed:
            detail = ", ".join(f"{k}: {_get(saved.resolved(), k)} vs {_get(self.cfg.model.resolved(), k)}"
                               for k in changed)
            raise LmforgeError(
                f"{folder} holds a model of another shape ({detail}: checkpoint vs config); "
                "resume it with its own model config, or start a new trainer.run_dir"
            )

    def close(self) -> None:
        self.world.close()


def _saved_run_config(path: Path) -> dict[str, Any]:
    """A run's config.yaml as a full config: fields added to lmforge since it was written count
    as their defaults, so a newer lmforge resumes an older run (as written if it no longer loads:
    the difference is then reported field by field)."""
    saved = yaml.safe_load(path.read_text())
    try:
        return RunConfig.from_dict(saved).to_dict()
    except ConfigError:
        return saved


def _saved_model_config(folder: Path) -> ModelConfig:
    return ModelConfig.from_dict(yaml.safe_load((folder / MODEL_CONFIG_FILE).read_text()), where="model.")


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def batch_crc(instances: np.ndarray) -> int:
    return zlib.crc32(np.asarray(instances, dtype=np.int64).tobytes())


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


def _get(data: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        data = data.get(key) if isinstance(data, dict) else None
    return data

