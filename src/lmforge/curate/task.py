"""One task of a curation run, as a worker runs it: one stage over one shard.

The parent builds the pipeline's steps once (`CurateConfig.built_steps`) and cuts them into
stages; each `Task` carries the validated config and its stage's step objects, which the executor
pickles to a worker process or Ray task (or, in process, hands over as they are). Steps do not
pickle heavy state (the fastText model, decontamination indexes): they build it in `setup()`.
A worker sets up the first copy of a stage it receives and keeps it for that stage's later tasks,
so heavy state loads once per process, not once per task.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from lmforge.curate import shards as io
from lmforge.curate.config import CurateConfig
from lmforge.curate.executors import documents_read
from lmforge.curate.layout import Layout
from lmforge.curate.stage_runner import StageRunner
from lmforge.curate.stages import Stage
from lmforge.curate.steps import CurateDocument
from lmforge.curate.task_outputs import TaskOutputs
from lmforge.curate.text import SpacyWords
from lmforge.data.tokenizer import TokenCounter


@dataclass(frozen=True)
class Task:
    """One stage over one shard, with everything a worker needs as typed objects."""

    run_id: str  # one per `curate()` call: names the run in a worker's stages (`_prepared`)
    config: CurateConfig
    stage: Stage  # its steps as built in the parent; pickled without their heavy state
    shard: int
    input: io.InputShard


REPORT_EVERY = 100
"""Documents between a task's reports to its stage's progress bar (`documents_read`)."""

# Stages set up in this process, by (run, stage index). Each task arrives with its own unpickled
# copy of its stage, so setting up the copy of every task would reload models per task; the
# first copy is set up and kept instead. A process that outlives runs (a Ray worker, the test
# process with the in-process executor) keeps only the latest few.
_STAGES: dict[tuple[str, int], Stage] = {}
_KEEP_STAGES = 4


def _prepared(task: Task) -> Stage:
    key = (task.run_id, task.stage.index)
    stage = _STAGES.get(key)
    if stage is None:
        if len(_STAGES) >= _KEEP_STAGES:
            del _STAGES[next(iter(_STAGES))]  # the oldest
        stage = task.stage
        for step in stage.all_steps():
            step.setup()
        _STAGES[key] = stage
    return stage


@lru_cache(maxsize=2)
def _token_counter(run_id: str, spec: str | None) -> TokenCounter:
    """The statistics' token counter, loaded once per process and run."""
    return TokenCounter(spec)


@lru_cache(maxsize=1)
def _splitter() -> SpacyWords:
    """One word splitter per process (it loads spaCy's English rules on first use)."""
    return SpacyWords()


def run_task(task: Task) -> dict[str, Any]:
    """Run one stage over one shard, write its files and its marker; returns its statistics."""
    stage = _prepared(task)
    config = task.config
    started = time.perf_counter()
    actions: dict[int, Any] = {}
    if stage.apply is not None:
        raw = json.loads(Layout(config.output).actions(stage.index - 1, task.shard).read_text())
        actions = {int(k): v for k, v in raw.items()}
    runner = StageRunner(stage, actions, _token_counter(task.run_id, config.tokenizer))
    outputs = TaskOutputs(config, stage, task.shard)
    read = 0
    try:
        for pos, doc in enumerate(_documents(task, outputs)):
            read += 1
            if read % REPORT_EVERY == 0:
                documents_read(REPORT_EVERY)
            outcome = runner.run(pos, doc)
            if outcome.kept:
                outputs.keep(doc, outcome.signature)
            else:
                outputs.remove(doc, outcome.removed_by, outcome.reason)
        documents_read(read % REPORT_EVERY)  # before returning: the parent settles on `read`
        tokens_entry = outputs.commit()
    except BaseException:
        outputs.abort()
        raise
    stats = {"stage": stage.index, "shard": task.shard, "read": read, "rejected": outputs.rejected_lines,
             "file_problems": outputs.file_problems, "written": outputs.written,
             "seconds": time.perf_counter() - started, "steps": runner.counts.to_json()}  # fmt: skip
    if tokens_entry is not None:
        stats["tokens"] = tokens_entry
    outputs.write_marker(stats)
    return stats


def _documents(task: Task, outputs: TaskOutputs) -> Iterator[CurateDocument]:
    """Stage 0: the input shard's documents; each bad line or unreadable file becomes a rejects
    row (`strict`: raises BadInput, one line `file:line: reason`). Later stages: the previous
    stage's output."""
    splitter = _splitter()
    if task.stage.index == 0:
        for line_no, doc, problem, raw in io.read_input(task.input):
            if problem is not None:
                if task.config.strict:
                    raise problem
                outputs.reject(problem, line_no, raw)
                continue
            assert doc is not None
            yield CurateDocument(doc.id, doc.text, doc.source, doc.metadata, splitter)
    else:
        layout = Layout(task.config.output)
        for row in io.read_rows(layout.intermediate(task.stage.index - 1, task.shard)):
            d = CurateDocument(row["id"], row["text"], row["source"], row.get("metadata", {}), splitter)
            d.attributes = row.get("attributes", {})
            yield d
