"""What a curation step is, and the decorator that registers one under the name pipeline YAML
uses (`lmforge.curate.registry` builds steps from that YAML).

Two kinds of step:

* `DocumentStep` looks at one document at a time (filters, taggers, decontamination). It
  returns a `Verdict`: keep or remove, why, and the values it measured. It may change
  `doc.text` (C4 drops lines, paragraph dedup drops paragraphs).
* `GlobalStep` needs to see the whole corpus before it can decide (exact and near-duplicate
  removal). It runs in three phases so the expensive part stays parallel: `signature()` per
  document inside the shard workers, `resolve()` once over every shard's signatures, then
  `apply()` per document with what `resolve` decided for it (deduplication, `select`).

A new filter is a config class and a `__call__`:

    @dataclass(kw_only=True)
    class NoLoremConfig(Config):
        phrase: str = "lorem ipsum"

    @register_step("no_lorem")
    class NoLorem(DocumentStep[NoLoremConfig]):
        Config = NoLoremConfig

        def __call__(self, doc):
            found = self.config.phrase in doc.text.lower()
            return Verdict.remove("lorem") if found else Verdict.keep()
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from lmforge.config import Config
from lmforge.curate.text import SpacyWords

Value = float | int | bool | str


@dataclass
class Verdict:
    """A step's decision on one document, with the measurements that led to it."""

    kept: bool = True
    reason: str = ""
    values: dict[str, Value] = field(default_factory=dict)

    @classmethod
    def keep(cls, **values: Value) -> Verdict:
        return cls(True, "", values)

    @classmethod
    def remove(cls, reason: str, **values: Value) -> Verdict:
        return cls(False, reason, values)


class CurateDocument:
    """A document moving through the pipeline. `words` is computed once per text version and
    shared by all steps; assigning `text` invalidates it."""

    __slots__ = ("id", "source", "metadata", "attributes", "_text", "_words", "_splitter")

    def __init__(self, id: str, text: str, source: str, metadata: dict[str, Any], splitter: SpacyWords):
        self.id = id
        self.source = source
        self.metadata = metadata
        self.attributes: dict[str, Value] = {}  # "<step>__<value>" → measured value
        self._text = text
        self._words: list[str] | None = None
        self._splitter = splitter

    @property
    def text(self) -> str:
        return self._text

    @text.setter
    def text(self, value: str) -> None:
        if value != self._text:
            self._text = value
            self._words = None

    @property
    def words(self) -> list[str]:
        """spaCy English words of the current text (see `lmforge.curate.text`)."""
        if self._words is None:
            self._words = self._splitter.words(self._text)
        return self._words

    def split_words(self, text: str) -> list[str]:
        """spaCy English words of any text (e.g. a normalised copy of this one)."""
        return self._splitter.words(text)

    def count_sentences(self, line: str) -> int:
        return self._splitter.count_sentences(line)

    def sentence_ends(self, text: str) -> list[int]:
        return self._splitter.sentence_ends(text)


ConfigT = TypeVar("ConfigT", bound=Config)


class Step(Generic[ConfigT]):
    """Common part of both kinds: a registered name, a typed config, a lazily built state.
    Generic over its config type, so `self.config` is typed in each step
    (``class Length(DocumentStep[LengthConfig])``)."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[Config]] = Config  # the class `build_step` parses the YAML options into
    counted_values: ClassVar[tuple[str, ...]] = ()
    """Verdict values that are counts (e.g. e-mails masked): the pipeline's stats.json gives
    their totals per step under "counted"."""

    def __init__(self, config: ConfigT, *, label: str | None = None):
        self.config: ConfigT = config
        self.label = label or self.name  # unique within a pipeline; prefixes attributes

    def setup(self) -> None:
        """Load heavy state (indexes, tokenizers) once per worker process, before the first
        document. The parent builds each step once and pickles it to workers with every task
        (`lmforge.curate.task`), so do not build such state in __init__, and leave it out of
        the pickle (`__getstate__`) if setup may already have run in the pickling process."""

    def input_files(self) -> list[str]:
        """Files besides the documents that decide what this step does (blocklists, eval sets,
        tokenizers). A resumed run checks they have not changed since it started."""
        return []

    def written_values(self) -> tuple[str, ...]:
        """Names of the values this step records on every document it sees (attributes
        `<label>__<name>`) that later steps may read (`select` reads a score)."""
        return ()

    def check_pipeline(self, earlier: list[Step]) -> None:
        """Called once the pipeline is built, with the steps before this one: a step that reads
        what an earlier step writes checks here that one does (ConfigError naming the field)."""


class DocumentStep(Step[ConfigT]):
    def __call__(self, doc: CurateDocument) -> Verdict:
        raise NotImplementedError


class GlobalStep(Step[ConfigT]):
    def signature(self, doc: CurateDocument, tokens: int) -> Any:
        """What `resolve` needs to know about one document (must pickle); `tokens` is the
        document's size as the pipeline counts it (its `tokenizer`, else words)."""
        raise NotImplementedError

    def save_signatures(self, signatures: list[Any], path: Path) -> None:
        with open(path, "wb") as f:
            pickle.dump(signatures, f, protocol=pickle.HIGHEST_PROTOCOL)

    def load_signatures(self, path: Path) -> list[Any]:
        with open(path, "rb") as f:
            return pickle.load(f)

    def resolve(self, shards: Iterable[Any]) -> list[dict[int, Any]]:
        """Given every shard's signatures (in shard order, documents in order; loaded lazily, one
        shard at a time), say for each shard what to do with which document: {position in shard:
        action}. Must not depend on how shards were spread over workers."""
        raise NotImplementedError

    def apply(self, doc: CurateDocument, action: Any) -> Verdict:
        """Carry out `resolve`'s action on a document (only called for documents that have one)."""
        raise NotImplementedError


STEP_CLASSES: dict[str, type[Step]] = {}
"""Every registered step class by name, filled by `register_step` (`lmforge.curate.registry` reads it)."""


def register_step(name: str):
    """Class decorator: make a step available to pipeline YAML under `name`."""

    def wrap(cls: type[Step]) -> type[Step]:
        if name in STEP_CLASSES and STEP_CLASSES[name] is not cls:
            raise ValueError(f"step name {name!r} is already registered by {STEP_CLASSES[name].__qualname__}")
        cls.name = name
        STEP_CLASSES[name] = cls
        return cls

    return wrap
