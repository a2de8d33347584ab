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
import math
import os
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from collections.abc import Callable

from lmforge.config import Config, require
from lmforge.curate.steps import CurateDocument, DocumentStep, GlobalStep, Step, Verdict, build_step
from lmforge.curate.text import SpacyWords
from lmforge.curate import shards as io
from lmforge.curate.tokens import ShardTokens, TokenizeConfig, check_tokenize, write_tokens
from lmforge.data.documents import expand_paths
from lmforge.data.tokenizer import TokenCounter
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

    def validate(self) -> None:
        require(len(self.input) > 0, "input", "name at least one file or folder")
        require(len(self.steps) > 0, "steps", "name at least one step")
        require(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}")
        if self.shard_mb is not None:
            require(self.shard_mb > 0, "shard_mb", f"must be > 0 (or null for whole files), got {self.shard_mb}")
        labels = [s.label for s in self.build_steps()]
        dup = [lb for lb, n in Counter(labels).items() if n > 1]
        require(not dup, "steps", f"step label {dup[:1]} is used twice; give one a `label: <name>` option")

    def build_steps(self) -> list[Step]:
        return [build_step(spec, f"steps[{i}]") for i, spec in enumerate(self.steps)]

    def output_affecting(self) -> dict[str, Any]:
        """The parts of the config that change what is written (not how fast)."""
        d = self.to_dict()
        for k in ("workers", "executor", "ray_address", "keep_work", "strict"):
            d.pop(k)
        return d


@dataclass
class Stage:
    index: int
    apply: GlobalStep | None  # decisions of the previous stage's global step
    steps: list[DocumentStep]
    collect: GlobalStep | None  # global step whose signatures this stage computes

    def describe(self) -> str:
        parts = ([f"apply {self.apply.label}"] if self.apply else []) + [s.label for s in self.steps]
        parts += [f"{self.collect.label} signatures"] if self.collect else ["write"]
        return " → ".join(parts)


def make_stages(steps: list[Step]) -> list[Stage]:
    stages: list[Stage] = []
    pending: GlobalStep | None = None
    local: list[DocumentStep] = []
    for step in steps:
        if isinstance(step, GlobalStep):
            stages.append(Stage(len(stages), pending, local, step))
            pending, local = step, []
        else:
            local.append(step)  # type: ignore[arg-type]
    stages.append(Stage(len(stages), pending, local, None))
    return stages


@dataclass
class Layout:
    """Where every file of a run lives."""

    root: Path

    def shard(self, i: int) -> str:
        return f"shard-{i:05d}"

    def documents(self, i: int) -> Path:
        return self.root / "documents" / f"{self.shard(i)}.jsonl.gz"

    def attributes(self, i: int) -> Path:
        return self.root / "attributes" / f"{self.shard(i)}.jsonl.gz"

    def removed(self, i: int, stage: int) -> Path:
        return self.root / "removed" / f"{self.shard(i)}.s{stage}.jsonl.gz"

    def rejects(self, i: int) -> Path:
        return self.root / "rejects" / f"{self.shard(i)}.jsonl"

    def work(self, stage: int) -> Path:
        return self.root / "work" / f"stage-{stage}"

    def intermediate(self, stage: int, i: int) -> Path:
        return self.work(stage) / f"{self.shard(i)}.jsonl"

    def signatures(self, stage: int, i: int) -> Path:
        return self.work(stage) / f"{self.shard(i)}.sig"

    def token_part(self, i: int) -> Path:
        """Where a last-stage task leaves its shard's token part (`.npy`, `.csv.gz`, `.ids.npy`)."""
        return self.root / "work" / "tokens" / self.shard(i)

    def marker(self, stage: int, i: int) -> Path:
        return self.work(stage) / f"{self.shard(i)}.done.json"

    def actions(self, stage: int, i: int) -> Path:
        return self.root / "work" / f"resolve-{stage}" / f"{self.shard(i)}.json"

    def resolve_marker(self, stage: int) -> Path:
        return self.root / "work" / f"resolve-{stage}" / "done.json"


# -- one task: a stage over one shard --------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    config_json: str  # the CurateConfig as JSON: small, picklable, and a cache key in workers
    stage: int
    shard: int
    input: io.InputShard


@lru_cache(maxsize=4)
def _prepared(config_json: str) -> tuple[CurateConfig, list[Stage], SpacyWords, Callable[[str], int]]:
    """Steps built and set up once per worker process (setup may load indexes or tokenizers);
    cached per process because a worker runs many tasks of the same pipeline."""
    config = CurateConfig.from_dict(json.loads(config_json))
    steps = config.build_steps()
    for step in steps:
        step.setup()
    return config, make_stages(steps), SpacyWords(), TokenCounter(config.tokenizer)


class _Counts:
    """Documents and tokens in and out of each step, overall and per source."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def _entry(self, label: str) -> dict[str, Any]:
        e = self.data.get(label)
        if e is None:
            e = self.data[label] = {"docs_in": 0, "docs_out": 0, "tokens_in": 0, "tokens_out": 0,
                                    "removed": Counter(), "sources": defaultdict(lambda: [0, 0, 0, 0]),
                                    "counted": Counter()}  # fmt: skip
        return e

    def add(self, label: str, source: str, *, docs_in: int = 0, docs_out: int = 0, tokens_in: int = 0,
            tokens_out: int = 0, reason: str | None = None) -> None:  # fmt: skip
        e = self._entry(label)
        e["docs_in"] += docs_in
        e["docs_out"] += docs_out
        e["tokens_in"] += tokens_in
        e["tokens_out"] += tokens_out
        s = e["sources"][source]
        s[0] += docs_in
        s[1] += docs_out
        s[2] += tokens_in
        s[3] += tokens_out
        if reason:
            e["removed"][reason] += 1

    def add_values(self, label: str, values: dict[str, Any], keys: tuple[str, ...]) -> None:
        """Sum a step's counted verdict values (`Step.counted_values`)."""
        counted = self._entry(label)["counted"]
        for key in keys:
            counted[key] += values.get(key) or 0

    def to_json(self) -> dict[str, Any]:
        return {k: {**v, "removed": dict(v["removed"]), "sources": dict(v["sources"]), "counted": dict(v["counted"])}
                for k, v in self.data.items()}


def run_task(task: Task) -> dict[str, Any]:
    """Run one stage over one shard, write its files and its marker; returns its statistics."""
    config, stages, splitter, count_tokens = _prepared(task.config_json)
    stage = stages[task.stage]
    layout = Layout(config.output)
    started = time.perf_counter()
    counts = _Counts()
    read = rejected = 0
    file_problems: list[str] = []

    last = stage.collect is None
    writers: list[io.ShardWriter] = []

    def writer(path: Path) -> io.ShardWriter:
        w = io.ShardWriter(path)
        writers.append(w)
        return w

    signatures: list[Any] = []
    actions: dict[int, Any] = {}
    tokens_part: ShardTokens | None = None
    tokens_entry: dict[str, Any] | None = None
    if stage.apply is not None:
        raw = json.loads(layout.actions(task.stage - 1, task.shard).read_text())
        actions = {int(k): v for k, v in raw.items()}

    try:
        out = writer(layout.documents(task.shard) if last else layout.intermediate(task.stage, task.shard))
        attrs = writer(layout.attributes(task.shard)) if last and config.write_attributes else None
        removed = writer(layout.removed(task.shard, task.stage)) if config.write_removed else None
        rejects = writer(layout.rejects(task.shard)) if task.stage == 0 else None
        if last and config.tokenize is not None:
            tokens_part = ShardTokens(config, layout, task.shard)
        for pos, doc in enumerate(_documents(task, splitter, rejects, config.strict, file_problems)):
            read += 1
            tokens = count_tokens(doc.text)
            verdict: Verdict | None = None
            step_label = ""
            if stage.apply is not None:
                step_label = stage.apply.label
                action = actions.get(pos)
                before = doc.text
                if action is not None:
                    verdict = stage.apply.apply(doc, action)
                    _record(doc, step_label, verdict)
                # The global step's documents in were counted when its signatures were taken.
                tokens = _count(counts, step_label, doc, before, tokens, verdict, count_tokens, count_in=False)
            if verdict is None or verdict.kept:
                for step in stage.steps:
                    step_label = step.label
                    before = doc.text
                    verdict = step(doc)
                    _record(doc, step_label, verdict)
                    if step.counted_values:
                        counts.add_values(step_label, verdict.values, step.counted_values)
                    tokens = _count(counts, step_label, doc, before, tokens, verdict, count_tokens)
                    if not verdict.kept:
                        break
            if verdict is not None and not verdict.kept:
                if removed is not None:
                    removed.write(_row(doc) | {"removed_by": step_label, "reason": verdict.reason,
                                               "attributes": doc.attributes})  # fmt: skip
                continue
            if stage.collect is not None:
                counts.add(stage.collect.label, doc.source, docs_in=1, tokens_in=tokens)
                signatures.append(stage.collect.signature(doc))
                out.write(_row(doc) | {"attributes": doc.attributes})
            else:
                line = io.dumps(_row(doc)).encode("utf-8") + b"\n"
                out.write_line(line)
                if tokens_part is not None:
                    tokens_part.add(doc, len(line))
                if attrs is not None:
                    attrs.write({"id": doc.id, "source": doc.source, "attributes": _dolma_attributes(doc)})
        if rejects is not None:
            rejected = rejects.rows - len(file_problems)
        if stage.collect is not None:
            sig_path = layout.signatures(task.stage, task.shard)
            tmp = sig_path.with_name(sig_path.name + ".tmp")
            stage.collect.save_signatures(signatures, tmp)
            os.replace(tmp, sig_path)
        for w in writers:
            if w is rejects and w.rows == 0:
                w.abort()
            else:
                w.commit()
        if tokens_part is not None:  # after the documents file: its size goes in the entry
            tokens_entry = tokens_part.commit()
    except BaseException:
        for w in writers:
            w.abort()
        if tokens_part is not None:
            tokens_part.abort()
        raise
    stats = {"stage": task.stage, "shard": task.shard, "read": read, "rejected": rejected,
             "file_problems": file_problems, "written": out.rows,
             "seconds": time.perf_counter() - started, "steps": counts.to_json()}  # fmt: skip
    if tokens_entry is not None:
        stats["tokens"] = tokens_entry
    layout.marker(task.stage, task.shard).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(layout.marker(task.stage, task.shard), json.dumps(stats))
    return stats


def _documents(task: Task, splitter: SpacyWords, rejects: io.ShardWriter | None, strict: bool = False,
               file_problems: list[str] | None = None):  # fmt: skip
    """Stage 0: the input shard's documents; each bad line or unreadable file becomes a rejects
    row (`strict`: raises BadInput, one line `file:line: reason`), and an unreadable file's
    one-line problem is appended to `file_problems`. Later stages: the previous stage's output."""
    if task.stage == 0:
        for line_no, doc, problem, raw in io.read_input(task.input):
            if problem is not None:
                if strict:
                    raise problem
                assert rejects is not None
                row: dict[str, Any] = {"file": problem.file, "line": line_no, "reason": problem.reason,
                                       "error": str(problem)}  # fmt: skip
                if raw:
                    row["raw"] = raw.rstrip("\n")
                rejects.write(row)
                if line_no is None and file_problems is not None:
                    file_problems.append(str(problem))
                continue
            assert doc is not None
            yield CurateDocument(doc.id, doc.text, doc.source, doc.metadata, splitter)
    else:
        layout = Layout(Path(json.loads(task.config_json)["output"]))
        for row in io.read_rows(layout.intermediate(task.stage - 1, task.shard)):
            d = CurateDocument(row["id"], row["text"], row["source"], row.get("metadata", {}), splitter)
            d.attributes = row.get("attributes", {})
            yield d


def _count(counts: _Counts, label: str, doc: CurateDocument, text_before: str, tokens_in: int,
           verdict: Verdict | None, count_tokens: Callable[[str], int], count_in: bool = True) -> int:  # fmt: skip
    """Count a document through a step; returns its tokens after the step (0 if removed)."""
    kept = verdict is None or verdict.kept
    tokens_out = 0 if not kept else tokens_in if doc.text is text_before else count_tokens(doc.text)
    counts.add(label, doc.source, docs_in=int(count_in), docs_out=int(kept), tokens_in=tokens_in if count_in else 0,
               tokens_out=tokens_out, reason=None if kept else verdict.reason)  # type: ignore[union-attr]  # fmt: skip
    return tokens_out


def _record(doc: CurateDocument, label: str, verdict: Verdict) -> None:
    for key, value in verdict.values.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None  # NaN/inf are not JSON (e.g. the mean word length of a wordless text)
        doc.attributes[f"{label}__{key}"] = value


def _row(doc: CurateDocument) -> dict[str, Any]:
    row: dict[str, Any] = {"id": doc.id, "text": doc.text, "source": doc.source}
    if doc.metadata:
        row["metadata"] = doc.metadata
    return row


def _dolma_attributes(doc: CurateDocument) -> dict[str, Any]:
    """dolma's attribute layout: each value as a span over the whole document."""
    end = len(doc.text)
    return {k: [[0, end, v]] for k, v in doc.attributes.items()}


# -- the whole run ---------------------------------------------------------------------------------


def curate(config: CurateConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a pipeline; returns the statistics also written to output/stats.json."""
    from lmforge.curate.executors import make_executor
    from lmforge.curate.report import merge_stats, write_report

    # Absolute paths: Ray workers on other nodes do not share this process's working directory.
    config = config.replace(input=[str(Path(p).absolute()) for p in config.input], output=config.output.absolute())
    if config.tokenize is not None:
        config = config.replace(tokenize=check_tokenize(config))
    steps = config.build_steps()
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

    config_json = json.dumps(config.to_dict())
    started = time.perf_counter()
    resumed = any(layout.marker(0, i).exists() for i in range(len(files)))
    with make_executor(config) as executor:
        for stage in stages:
            todo = [Task(config_json, stage.index, i, f) for i, f in enumerate(files)
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
    side_files = {f: file_sha256(Path(f)) for step in config.build_steps() for f in step.input_files()}
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
