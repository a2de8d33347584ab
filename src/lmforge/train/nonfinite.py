"""Non-finite steps: refused always, rolled back when they repeat.

A step whose global loss or gradient norm is NaN or infinite is never applied: `TrainModule`
drops its gradients instead of stepping (multiplying by zero would not do: 0 × NaN is NaN,
and one NaN in Adam's moments makes every later update NaN). The values are global (reduced
over ranks), so every rank decides alike without another collective.

One such step is noise (a bad batch, an overflow); several close together mean the run is
diverging from where it stands. `NonFiniteGuard` counts them: while one is recent, no
checkpoint is written (so the state to return to predates the trouble); when
`faults.nonfinite_rollback_after` fall within `faults.nonfinite_window` steps, the run rolls
back: rank 0 appends a record to RUN/faults/rollbacks.jsonl and every rank exits with
`RollbackRequested.exit_code`. The relaunch (by torchrun's `--max-restarts`, a requeue, or a
person) resumes from `latest`, which predates the first bad step, and skips the bad steps'
batches: they are read, keeping the data order, but not applied (`skipped_batch` in
metrics.jsonl). A run with the same `trainer.skip_steps` from the start is the fault-free run
it equals.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.errors import LmforgeError, RollbackRequested
from lmforge.train import checkpoint as ckpt
from lmforge.train.callback import Callback, append_jsonl
from lmforge.train.config import FaultsConfig

if TYPE_CHECKING:
    from lmforge.train.trainer import Trainer

log = logging.getLogger(__name__)

ROLLBACKS = Path("faults") / "rollbacks.jsonl"


def read_rollbacks(run_dir: Path) -> list[dict[str, Any]]:
    """The rollback records of a run, oldest first (none for a run that never rolled back)."""
    path = run_dir / ROLLBACKS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rolled_back_steps(run_dir: Path) -> set[int]:
    """Steps whose batches earlier rollbacks decided to skip."""
    return {step for record in read_rollbacks(run_dir) for step in record["skip_steps"]}


class NonFiniteGuard(Callback):
    priority = 25  # after the step's metrics exist, before the logger and the checkpointer
    name = "nonfinite"

    def __init__(self, cfg: FaultsConfig):
        self.cfg = cfg
        self.recent: list[int] = []  # non-finite steps within the window (none at a checkpoint)

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if metrics.get("nonfinite"):
            self.recent.append(trainer.step)
            log.warning(f"step {trainer.step}: loss {float(metrics['loss'])}, grad_norm {float(metrics['grad_norm'])} "
                        "(not finite): the step is not applied")
        self.recent = [s for s in self.recent if s > trainer.step - self.cfg.window]
        trainer.checkpoint_hold = f"step {self.recent[-1]} was not finite" if self.recent else None
        if len(self.recent) >= self.cfg.nonfinite_rollback_after:
            self.roll_back(trainer)

    def roll_back(self, trainer: Trainer) -> None:
        bad, cfg = self.recent, self.cfg
        what = (f"step {trainer.step}: {len(bad)} non-finite steps within {cfg.window} (steps "
                f"{', '.join(map(str, bad))})")
        done = read_rollbacks(trainer.run_dir)
        if len(done) >= cfg.max_rollbacks:
            raise LmforgeError(
                f"{what}, after {len(done)} rollbacks (faults.max_rollbacks={cfg.max_rollbacks}); giving up: look at "
                f"those steps' documents (`lmforge inspect-batch {trainer.run_dir} --step {bad[0]}`), lower optim.lr, "
                "or raise faults.max_rollbacks to try again"
            )
        trainer.finish_checkpoint()  # a background save from before the trouble becomes `latest`
        resume = ckpt.find_resumable(trainer.checkpoint_root, quiet=True)
        target = resume.name if resume is not None else "the start"
        if trainer.world.is_main:
            (trainer.run_dir / ROLLBACKS).parent.mkdir(parents=True, exist_ok=True)
            append_jsonl(trainer.run_dir / ROLLBACKS, {
                "rollback": len(done) + 1, "at_step": trainer.step, "skip_steps": bad,
                "resume_from": target, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            })
        trainer.world.barrier()  # the record exists before any rank exits (torchrun stops the rest)
        raise RollbackRequested(
            f"{what}: rolling back to {target}; the relaunch skips their batches (recorded in "
            f"{trainer.run_dir / ROLLBACKS}); run the same command again (torchrun --max-restarts does it itself)"
        )
