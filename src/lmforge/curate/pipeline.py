"""`lmforge data curate PIPELINE.yaml`: run curation steps over sharded documents, resumably.

The pipeline is cut into stages at each global step (deduplication):

    stage 0: read input shard → document steps … → signatures of global step A → work file
    resolve A over all shards (one process)
    stage 1: work file → A's decisions → document steps … → final output

Each (stage, shard) task writes its files under temporary names, renames them, and then writes
a completion marker holding its statistics. A rerun skips every task with a marker and redoes
the others from scratch, so a killed run resumes without duplicating output, and its output is
byte-for-byte the output of an uninterrupted run. Tasks of a stage run in parallel processes
(`executor: local`) or on a Ray cluster (`executor: ray`); results never depend on either.

The config is `config.py`'s `CurateConfig`. This module cuts the input into shards (`shards.py`)
and the steps into stages (`stages.py`) and drives the run; a task is run by `task.py`:
`stage_runner.py` takes each document through the stage's steps and `task_outputs.py` writes the
task's files. Where each file lives is `layout.py`.

Output folder:
    documents/shard-NNNNN.jsonl.gz   kept documents (dolma rows), one file per shard: an input file,
                                     or a piece of one (`shard_docs`, `shard_mb`)
    attributes/shard-NNNNN.jsonl.gz  what every step measured on them, same rows in the same order
                                     ({"id", "attributes": {"<step>__<value>": [[0, len, value]]}})
    removed/shard-NNNNN.sK.jsonl.gz  removed documents with `removed_by`, `reason`, `attributes`
    rejects/shard-NNNNN.jsonl        input lines that could not be read ({file, line, reason, error, raw};
                                     a file that cannot be read at all is one row with line null)
    tokens/                          with `tokenize:`, the kept documents as training token files (the
                                     `data tokenize` format: one part per non-empty documents shard, in
                                     shard order, byte for byte what `data tokenize documents/` writes;
                                     with `validation:` two such folders, tokens/train and tokens/val)
    stats.json, stats.png            documents and tokens in/out per step and per source (tokens of
                                     `tokenizer` if set, else whitespace-separated words)
    pipeline.yaml, pipeline.json     the resolved config; what input each shard is (file; line and
                                     byte range where the file was counted)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge.curate import shards as io
from lmforge.curate.config import CurateConfig, TokenizeConfig  # noqa: F401  (TokenizeConfig: part of this API)
from lmforge.curate.executors import StageProgress, make_executor, worker_count
from lmforge.curate.layout import Layout
from lmforge.curate.stages import make_stages
from lmforge.curate.steps import GlobalStep
from lmforge.curate.task import Task, run_task
from lmforge.curate.tokens import check_tokenize, write_tokens
from lmforge.data.documents import TEXT_SUFFIXES, expand_paths
from lmforge.errors import ConfigError, LmforgeError
from lmforge.fsutil import atomic_write, file_sha256

log = logging.getLogger(__name__)

# -- the whole run ---------------------------------------------------------------------------------


def curate(config: CurateConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a pipeline; returns the statistics also written to output/stats.json."""
    from lmforge.curate.report import merge_stats, write_report

    # Absolute paths: Ray workers on other nodes do not share this process's working directory.
    # One replace: each validates the config again, and so builds its steps again.
    output = config.output.absolute()
    tokenize = check_tokenize(config.tokenize, output) if config.tokenize is not None else None
    config = config.replace(input=[str(Path(p).absolute()) for p in config.input], output=output, tokenize=tokenize)
    steps = config.built_steps
    stages = make_stages(steps)
    if config.output.exists() and not config.output.is_dir():
        raise ConfigError(f"output: {config.output} exists and is not a folder")
    for p in map(Path, config.input):
        if p.is_dir() and (config.output == p or p in config.output.parents):
            raise ConfigError(f"output: {config.output} is inside input folder {p}; its outputs would be read as input")
    found = expand_paths(config.input)
    if not found:
        raise LmforgeError(f"input: no document files found in {', '.join(config.input)}")
    layout = Layout(config.output)
    stats_path = config.output / "stats.json"
    started = time.perf_counter()
    with make_executor(config) as executor:
        files = _input_shards(config, found, executor, progress)
        _claim_output(config, files, layout)
        if stats_path.exists():
            if progress:
                print(f"{config.output}: already complete (delete it to run again)")
            return json.loads(stats_path.read_text())
        _warn_idle_workers(config, files)
        run_id = uuid.uuid4().hex
        resumed = any(layout.marker(0, i).exists() for i in range(len(files)))
        for stage in stages:
            todo = [Task(run_id, config, stage, i, f) for i, f in enumerate(files)
                    if not layout.marker(stage.index, i).exists()]  # fmt: skip
            desc = f"stage {stage.index + 1}/{len(stages)} ({stage.describe()})"
            executor.run(run_task, todo, _stage_progress(stage.index, desc, files, todo, layout, progress))
            if stage.collect is not None and not layout.resolve_marker(stage.index).exists():
                _resolve(stage.collect, stage.index, len(files), layout, progress)
    if config.tokenize is not None:
        write_tokens(config, layout, stages[-1].index, len(files), progress)
    seconds = time.perf_counter() - started
    markers = [json.loads(layout.marker(st.index, i).read_text()) for st in stages for i in range(len(files))]
    resolves = {st.collect.label: json.loads(layout.resolve_marker(st.index).read_text())
                for st in stages if st.collect is not None}  # fmt: skip
    unit = f"tokens ({config.tokenizer})" if config.tokenizer else "whitespace-separated words"
    stats = merge_stats(steps, markers, resolves, n_stages=len(stages), seconds=seconds, unit=unit)
    problems = [p for m in markers if m["stage"] == 0 for p in m.get("file_problems", [])]
    stats["input"]["skipped_files"] = len(problems)
    for problem in problems:
        log.warning(f"skipped {problem}")  # one line per unreadable file
    if problems or stats["input"]["rejected_lines"]:
        files_, lines_ = _plural(len(problems), "file"), _plural(stats["input"]["rejected_lines"], "line")
        log.warning(f"skipped {files_} and {lines_}; see {config.output / 'rejects'}")
    if resumed:  # this invocation did only part of the work: a rate would mislead
        stats.update(resumed=True, documents_per_second=None)
    write_report(stats, config.output, progress=progress)
    # stats.json marks the run complete; only then may the work folder go (a kill during the
    # delete must not leave a run that looks resumable but has lost its decisions).
    atomic_write(stats_path, json.dumps(stats, indent=1))
    if not config.keep_work:
        trash = config.output / f".work-deleted-{os.getpid()}"
        if (config.output / "work").exists():
            os.replace(config.output / "work", trash)
            shutil.rmtree(trash, ignore_errors=True)
    return stats


def _input_shards(config: CurateConfig, found: list[Path], executor: Any, progress: bool) -> list[io.InputShard]:
    """The input cut into shards; the first pass over several files runs on the executor."""
    if config.shard_docs is None and config.shard_mb is None:
        return io.split_inputs(found, None, None)

    def on_workers(fn: Callable, files: list[Path]) -> list:
        return executor.map(fn, files, desc="input: counting lines", progress=progress)

    return io.split_inputs(found, config.shard_docs, config.shard_mb, on_workers if len(found) > 1 else None)


def _warn_idle_workers(config: CurateConfig, shards: list[io.InputShard]) -> None:
    """One line when the run has more workers than shards (some would have nothing to do)."""
    workers = worker_count(config)
    if workers <= len(shards):
        return
    what = "Ray tasks" if config.executor == "ray" else "processes"
    given = f"{workers} (one per core)" if not config.workers else str(workers)
    pieces = Counter(s.path for s in shards if not s.path.endswith(io.UNCOMPRESSED_SUFFIXES))
    capped = [p for p, n in pieces.items() if n >= io.MAX_COMPRESSED_PIECES]
    hint = "set shard_docs or shard_mb lower, or give more files"
    if capped:
        hint = (f"give more files: a compressed file is cut into at most {io.MAX_COMPRESSED_PIECES} pieces "
                f"(store {Path(capped[0]).name} as several files, or decompressed)")  # fmt: skip
    log.warning(f"workers: {given} but the input is {_plural(len(shards), 'shard')}, so at most "
                f"{len(shards)} {what} run; {hint}")  # fmt: skip


def _stage_progress(stage: int, desc: str, shards: list[io.InputShard], todo: list[Task], layout: Layout,
                    enabled: bool) -> StageProgress:  # fmt: skip
    """The stage's bar: documents each task will read (its shard's lines in stage 0, what the
    previous stage kept of it after) and those of shards already done."""
    if not enabled:
        return StageProgress(desc, {}, done_docs=0, shards=len(shards), done_shards=0, enabled=False)

    def expected(i: int) -> int | None:
        if stage > 0:
            return json.loads(layout.marker(stage - 1, i).read_text())["written"]
        return 1 if shards[i].path.endswith(TEXT_SUFFIXES) else shards[i].lines

    todo_ids = {t.shard for t in todo}
    done = [i for i in range(len(shards)) if i not in todo_ids]
    done_docs = sum(json.loads(layout.marker(stage, i).read_text())["read"] for i in done)
    return StageProgress(desc, {i: expected(i) for i in sorted(todo_ids)}, done_docs=done_docs, shards=len(shards),
                         done_shards=len(done), enabled=True)  # fmt: skip


def _plural(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def _claim_output(config: CurateConfig, files: list[io.InputShard], layout: Layout) -> None:
    """Record the pipeline and shard list in the output folder; refuse to resume into a folder
    made by a different pipeline or input (its finished shards would be mixed with new ones)."""
    config.output.mkdir(parents=True, exist_ok=True)
    side_files = {f: file_sha256(Path(f)) for step in config.built_steps for f in step.input_files()}
    record = {"pipeline": config.output_affecting(), "shards": [f.describe() for f in files], "step_files": side_files}
    path = config.output / "pipeline.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(record)):
            if old.get("pipeline") != record["pipeline"]:
                what = "pipeline"
            elif old.get("shards") != record["shards"]:
                what = "input (its files, or how they are cut into shards)"
            else:
                changed = [f for f in side_files if old.get("step_files", {}).get(f) != side_files[f]]
                what = f"content of {', '.join(changed) or 'a step file'}"
            raise ConfigError(
                f"output: {config.output} holds a run with a different {what}; "
                "use another output folder or delete this one"
            )
    else:
        atomic_write(path, json.dumps(record, indent=1))
        atomic_write(config.output / "pipeline.yaml", config.to_yaml())


def _resolve(step: GlobalStep, stage: int, n_shards: int, layout: Layout, progress: bool) -> None:
    started = time.perf_counter()
    step.setup()
    signatures = (step.load_signatures(layout.signatures(stage, i)) for i in range(n_shards))  # one at a time
    actions = step.resolve(signatures)
    for i, acts in enumerate(actions):
        path = layout.actions(stage, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps({str(k): v for k, v in sorted(acts.items())}))
    summary = dict(getattr(step, "summary", {}) or {})
    summary.update(seconds=time.perf_counter() - started, actions=sum(map(len, actions)))
    atomic_write(layout.resolve_marker(stage), json.dumps(summary))
    if progress:
        print(f"{step.label}: resolved {summary['actions']:,} documents to change in {summary['seconds']:.1f} s")
