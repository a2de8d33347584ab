"""The callback interface of the training loop: hooks a side concern implements (all optional),
its checkpointed state, and the small helpers every callback module shares. The built-in
callbacks and `default_callbacks` live in `lmforge.train.callbacks`; evaluation's in
`lmforge.eval.in_loop`.

A callback's checkpointed state is keyed by its `name`; two callbacks in one run must have
different names (a second validator on another data set gets `name="validator_wiki"`).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmforge.train.trainer import Trainer


class Callback:
    priority = 0
    name = "callback"
    """Key of this callback's state in checkpoints; unique within a run."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def pre_step(self, trainer: Trainer, batch) -> None: ...

    def pre_optim_step(self, trainer: Trainer, batch, metrics: dict[str, Any]) -> bool:
        """After backward, before the optimizer step, with the step's loss and gradient norm
        (device tensors; reading them syncs). Return False to skip the step."""
        return True

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...

    def on_train_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...

    def on_log(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """A row as it is appended to metrics.jsonl (rank 0 only): for metric sinks."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


DOWNSTREAM_EVAL = "downstream_eval"
"""The name of evaluation's callback (`lmforge.eval.in_loop.DownstreamEval`), which a run with
`evals.tasks` must be given."""


def append_jsonl(path: os.PathLike, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
