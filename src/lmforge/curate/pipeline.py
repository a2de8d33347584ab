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

This module validates the config, cuts its steps into stages (`stages.py`) and drives the run;
a task is run by `task.py`: `stage_runner.py` takes each document through the stage's steps
and `task_outputs.py` writes the task's files. Where each file lives is `layout.py`.

Output folder:
    documents/shard-NNNNN.jsonl.gz   kept documents (dolma rows), one file per input file
    attributes/shard-NNNNN.jsonl.gz  what every step measured on them, same rows in the same order
                                     ({"id", "attributes": {"<step>__<value>": [[0, len, value]]}})
    removed/shard-NNNNN.sK.jsonl.gz  removed documents with `removed_by`, `reason`, `attributes`
    rejects/shard-NNNNN.jsonl        input lines that could not be read ({file, line, reason, error, raw};
                                     a file that cannot be read at all is one row with line null)
    tokens/                          with `tokenize:`, the kept documents as training token files (the
                                     `data tokenize` format: one part per non-empty documents shard, in
                                     shard order, byte for byte what `data tokenize documents/` writes)
    stats.json, stats.png            documents and tokens in/out per step and per source (tokens of
                                     `tokenizer` if set, else whitespace-separated words)
    pipeline.yaml, pipeline.json     the resolved config; which input (file or byte range) each shard is
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmforge.config import Config, require
from lmforge.curate import shards as io
from lmforge.curate.layout import Layout
from lmforge.curate.stages import make_stages
from lmforge.curate.steps import GlobalStep, Step, build_step
from lmforge.curate.task import Task, run_task
from lmforge.curate.tokens import TokenizeConfig, check_tokenize, write_tokens
from lmforge.data.documents import expand_paths
from lmforge.errors import ConfigError, LmforgeError
from lmforge.fsutil import atomic_write, file_sha256

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class CurateConfig(Config):
    """A curation pipeline: where documents come from, the steps, where results go."""

    input: list[str]
    """Files or folders of dolma JSONL (.jsonl, .jsonl.gz, .jsonl.zst). Each file is a shard,
    except that uncompressed files larger than `shard_mb` are cut into several."""
    shard_mb: float | None = 256.0
    """Largest piece of an uncompressed input file one task reads (None: whole files)."""
    output: Path
    steps: list[Any]
    """In order; each `- <step name>: {options}` (see `lmforge data curate --list-steps`)."""
    workers: int = 0
    """Parallel processes (local) or Ray tasks in flight. 0: one per CPU core."""
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    """Ray cluster to join ('auto', 'ray://host:10001'); None starts a local Ray instance. The
    output folder must be on storage every Ray node can read and write."""
    write_removed: bool = True
    write_attributes: bool = True
    tokenizer: str | None = None
    """Count tokens in the statistics with this tokenizer (a known name such as olmo2, or a
    tokenizer.json / folder). None: count whitespace-separated words (much cheaper)."""
    keep_work: bool = False
    """Keep intermediate shards and signatures after a successful run (for debugging)."""
    tokenize: TokenizeConfig | None = None
    """Also write the kept documents as training token files, shard by shard in the last stage's
    tasks (resumable like them), so `lmforge train` reads the run directly: `{tokenizer: olmo2,
    out: FOLDER}` (out defaults to OUTPUT/tokens). The result is byte for byte what
    `lmforge data tokenize OUTPUT/documents` would write, without reading the JSONL again."""
    strict: bool = False
    """Stop at the first bad input line (invalid UTF-8, bad JSON, no string `text`) or unreadable
    file (not gzip, truncated) with a one-line `file:line: reason` error. False: such lines and
    files go to rejects/, the run goes on, and the end says how many files and lines were skipped."""
    built_steps: list[Step] = field(init=False, repr=False, compare=False)
    """The steps as objects, built from `steps` when the config is validated (building them is
    how their options are checked). A run uses these same objects throughout: for its stages,
    the step files it records, its report, and in the tasks it hands to workers."""

    def validate(self) -> None:
        require(len(self.input) > 0, "input", "name at least one file or folder")
        require(len(self.steps) > 0, "steps", "name at least one step")
        require(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}")
        if self.shard_mb is not None:
            require(self.shard_mb > 0, "shard_mb", f"must be > 0 (or null for whole files), got {self.shard_mb}")
        self.built_steps = [build_step(spec, f"steps[{i}]") for i, spec in enumerate(self.steps)]
        labels = [s.label for s in self.built_steps]
        dup = [lb for lb, n in Counter(labels).items() if n > 1]
        require(not dup, "steps", f"step label {dup[:1]} is used twice; give one a `label: <name>` option")

    def output_affecting(self) -> dict[str, Any]:
        """The parts of the config that change what is written (not how fast)."""
        d = self.to_dict()
        for k in ("workers", "executor", "ray_address", "keep_work", "strict"):
            d.pop(k)
        return d


# -- the whole run ---------------------------------------------------------------------------------


def curate(config: CurateConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a pipeline; returns the statistics also written to output/stats.json."""
    from lmforge.curate.executors import make_executor
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
    files = io.split_inputs(found, config.shard_mb)
    layout = Layout(config.output)
    _claim_output(config, files, layout)
    stats_path = config.output / "stats.json"
    if stats_path.exists():
        if progress:
            print(f"{config.output}: already complete (delete it to run again)")
        return json.loads(stats_path.read_text())

    run_id = uuid.uuid4().hex
    started = time.perf_counter()
    resumed = any(layout.marker(0, i).exists() for i in range(len(files)))
    with make_executor(config) as executor:
        for stage in stages:
            todo = [Task(run_id, config, stage, i, f) for i, f in enumerate(files)
                    if not layout.marker(stage.index, i).exists()]  # fmt: skip
            desc = f"stage {stage.index + 1}/{len(stages)} ({stage.describe()})"
            executor.run(run_task, todo, total=len(files), done=len(files) - len(todo), desc=desc, progress=progress)
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


def _plural(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def _claim_output(config: CurateConfig, files: list[io.InputShard], layout: Layout) -> None:
    """Record the pipeline and shard list in the output folder; refuse to resume into a folder
    made by a different pipeline or input (its finished shards would be mixed with new ones)."""
    config.output.mkdir(parents=True, exist_ok=True)
    side_files = {f: file_sha256(Path(f)) for step in config.built_steps for f in step.input_files()}
    record = {"pipeline": config.output_affecting(), "shards": [str(f) for f in files], "step_files": side_files}
    path = config.output / "pipeline.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(record)):
            if old.get("pipeline") != record["pipeline"]:
                what = "pipeline"
            elif old.get("shards") != record["shards"]:
                what = "list of input files"
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
