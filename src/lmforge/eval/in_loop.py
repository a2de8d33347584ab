"""Downstream tasks scored while training: a callback that runs OLMES rank classification on a
small, fixed task set every `evals.every` steps, and puts each task's primary metric (and
bits per byte of the gold answers) into the step's metrics row as `eval/<task>/<metric>`.

Under torchrun every rank scores every request: the forward passes of a sharded model are
collective, and a small task set costs little next to the training it measures.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmforge.data.tokenizer import Tokenizer
from lmforge.eval.harness import evaluate_task, parse_tasks
from lmforge.eval.tasks import Task, load_task
from lmforge.train.callback import DOWNSTREAM_EVAL, Callback
from lmforge.train.config import DownstreamEvalConfig

if TYPE_CHECKING:
    from lmforge.train.trainer import Trainer


class DownstreamEval(Callback):
    priority = 15  # after validation, before the logger writes the row
    name = DOWNSTREAM_EVAL

    def __init__(self, cfg: DownstreamEvalConfig, tokenizer: str | Path):
        self.cfg = cfg
        self.tokenizer = Tokenizer.load(tokenizer)
        # Loaded once (fetching the OLMES wheel on first use); unknown names fail here, at start.
        self.tasks: list[Task] = [load_task(t, v, limit=cfg.limit) for t, v in parse_tasks(cfg.tasks, cfg.variant)]

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.step == 0:
            trainer.log_row({"step": 0, "tokens": 0, **self.evaluate(trainer)})

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if trainer.step % self.cfg.every == 0 or trainer.step == trainer.max_steps:
            metrics.update(self.evaluate(trainer))

    @torch.no_grad()
    def evaluate(self, trainer: Trainer) -> dict[str, float]:
        with trainer.progress.during("eval"):  # the watchdog's long budget
            return self._evaluate(trainer)

    def _evaluate(self, trainer: Trainer) -> dict[str, float]:
        model = trainer.module.model
        model.eval()
        out: dict[str, float] = {}
        try:
            for task in self.tasks:
                # The same scoring as `lmforge eval CHECKPOINT` on this step's checkpoint.
                result = evaluate_task(model, self.tokenizer, task, batch_size=self.cfg.batch_size, progress=False)
                out[f"eval/{task.spec}/{result['primary_metric']}"] = result["primary_score"]
                bpb = result["metrics"].get("bits_per_byte_corr")
                if bpb is not None:
                    out[f"eval/{task.spec}/bits_per_byte"] = bpb
        finally:
            model.train()
        return out
