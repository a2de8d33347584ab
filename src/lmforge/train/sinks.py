"""Metric sinks beside metrics.jsonl: TensorBoard event files and Weights & Biases runs. Each
receives exactly the rows metrics.jsonl gets (rank 0 only), so the three never disagree."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmforge.errors import LmforgeError
from lmforge.train.callback import Callback

if TYPE_CHECKING:
    from lmforge.train.trainer import Trainer


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if k not in ("step", "batch_crc") and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardSink(Callback):
    name = "tensorboard"
    priority = 50  # opened before the validator logs step 0

    def __init__(self) -> None:
        self.writer = None

    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.world.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise LmforgeError("sinks.tensorboard needs the tensorboard package: pip install 'lmforge[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(trainer.run_dir / "tensorboard"))

    def on_log(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in _scalars(row).items():
            self.writer.add_scalar(key, value, global_step=row["step"])
        self.writer.flush()

    def on_train_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbSink(Callback):
    name = "wandb"
    priority = 50

    def __init__(self, project: str, mode: str) -> None:
        self.project, self.mode = project, mode
        self.run = None

    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.world.is_main:
            return
        try:
            import wandb
        except ImportError:
            raise LmforgeError("sinks.wandb needs the wandb package: pip install 'lmforge[wandb]'") from None
        self.run = wandb.init(project=self.project, mode=self.mode, dir=str(trainer.run_dir),
                              name=trainer.run_dir.name, config=trainer.cfg.to_dict(), resume="allow",
                              id=_run_id(trainer))

    def on_log(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log(_scalars(row), step=row["step"])

    def on_train_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def _run_id(trainer: Trainer) -> str:
    """One W&B run per run directory, so a resumed run continues its W&B run."""
    import hashlib

    return hashlib.sha256(str(trainer.run_dir.resolve()).encode()).hexdigest()[:16]
