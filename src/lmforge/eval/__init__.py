"""Evaluation: OLMES task data (`tasks`), log-likelihood scoring that agrees with lm-eval
(`scoring`), OLMES's rank-classification metrics (`metrics`) and `evaluate` (`harness`).

Importing this package is cheap (the task data module only); torch-side names load on use, so
`lmforge.curate.decontam` can import `lmforge.eval.tasks` without the model stack."""

from __future__ import annotations

from typing import Any

from lmforge.eval.tasks import OLMES_TASKS, Doc, Request, Task, load_task, resolve_task

_LAZY = {
    "evaluate": "lmforge.eval.harness",
    "evaluate_task": "lmforge.eval.harness",
    "format_table": "lmforge.eval.harness",
    "write_json": "lmforge.eval.harness",
    "load_for_eval": "lmforge.eval.harness",
    "parse_tasks": "lmforge.eval.harness",
    "score_requests": "lmforge.eval.scoring",
    "encode_requests": "lmforge.eval.scoring",
    "Score": "lmforge.eval.scoring",
    "doc_metrics": "lmforge.eval.metrics",
    "aggregate": "lmforge.eval.metrics",
}

__all__ = ["OLMES_TASKS", "Doc", "Request", "Task", "load_task", "resolve_task", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lmforge.eval' has no attribute {name!r}")
