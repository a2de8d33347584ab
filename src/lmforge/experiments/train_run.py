"""What `lmforge train` runs: the Trainer with every callback its config asks for.

The loop (`lmforge.train`) knows callbacks only through their interface, and evaluation
(`lmforge.eval`) provides one of them; this module, above both, assembles them, so training
never imports evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lmforge.eval.in_loop import DownstreamEval
from lmforge.train.callback import Callback
from lmforge.train.callbacks import default_callbacks
from lmforge.train.config import RunConfig
from lmforge.train.trainer import Trainer


def run_callbacks(cfg: RunConfig, extra: Iterable[Callback] = ()) -> list[Callback]:
    """Training's callbacks, evaluation's when `evals.tasks` asks for it, then `extra`."""
    callbacks = default_callbacks(cfg)
    if cfg.evals.tasks:
        callbacks.append(DownstreamEval(cfg.evals, cfg.tokenizer))
    return callbacks + list(extra)


def train(cfg: RunConfig, extra: Iterable[Callback] = ()) -> dict[str, Any]:
    """Train (or resume) the run `cfg` describes; returns the last step's metrics."""
    trainer = Trainer(cfg, callbacks=run_callbacks(cfg, extra))
    try:
        return trainer.fit()
    finally:
        trainer.close()
