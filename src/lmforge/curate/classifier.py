"""Quality (or toxicity, or topic) classification with any fastText model (`classifier`).

The model is any supervised fastText `.bin`/`.ftz`: one `lmforge data train-classifier` made,
DCLM's `openhermes_reddit_eli5_vs_rw_v2_bigram_200k_train.bin`, dolma's Jigsaw toxicity and NSFW
models. The step scores the text in units (`unit`: the whole document, its paragraphs or its
sentences) with one of two rules (`score`):

* `probability` is datatrove's `FastTextClassifierFilter`: each unit, stripped, its newlines
  replaced by `newline_replacement`, gets every label's probability (k = -1); the score is the
  probability of `label`.
* `dclm` is DCLM's `classify_fasttext_hq_prob`: the unit's lines joined by spaces, fastText's top
  label only (k = 1), its probability, or 1 - it when the top label is the other label of the
  two-label model. fastText returns p + 1e-5, so when the other label is on top the two rules
  differ by 2e-5.

A unit passes when its score is `>= keep_above`, or is not `>= remove_above`, or always when
neither is given (annotate only; datatrove crashes on that case, see `ClassifierConfig`). The
document keeps the units that pass, joined as they were (dolma removes toxic sentences this way
and keeps the rest), and is removed when no text is left. In `document` mode that is the whole
document or nothing. The attribute `<step label>__<attribute>` (`classifier__hq_score` by
default) is the mean of the units' scores, removed units included, as datatrove stores it in
its metadata; later steps (`select`) and `lmforge data mix` select on it.

Needs the fastText binding: `pip install 'lmforge[langid]'` (`fasttext-numpy2-wheel`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from lmforge.config import Config, require
from lmforge.curate.fasttext_model import (
    LABEL_PREFIX,
    dclm_line,
    load_fasttext,
    model_labels,
    one_line,
    predict_all,
    predict_top,
)
from lmforge.curate.steps import CurateDocument, DocumentStep, Verdict, register_step
from lmforge.errors import ConfigError, LmforgeError

SIDECAR = "classifier.json"
"""What `lmforge data train-classifier` writes beside its model.bin: its labels and how it
normalised text (the step takes `newline_replacement` from it)."""
DATATROVE_NEWLINE = ""
"""datatrove's default `newline_replacement` for its fastText classifier (lines glued together)."""
_ATTRIBUTE = re.compile(r"[A-Za-z0-9_.-]+")


@lru_cache(maxsize=8)
def _labels_of(path: str, size: int, mtime_ns: int) -> tuple[str, ...]:
    """The labels of the model at `path` (cached by file identity: configs are validated more
    than once per run, and a DCLM model takes seconds to load)."""
    return tuple(model_labels(load_fasttext(path)))


def labels_of(path: Path) -> tuple[str, ...]:
    """The labels (without `__label__`) of a fastText model file; LmforgeError if it is missing
    or not a fastText model."""
    if not path.is_file():
        load_fasttext(path)  # raises its one-line error
    st = path.stat()
    return _labels_of(str(path), st.st_size, st.st_mtime_ns)


def sidecar_newline(model_file: Path) -> str | None:
    """The newline replacement a `train-classifier` model was trained with, from the
    classifier.json beside it; None without one."""
    sidecar = model_file.with_name(SIDECAR)
    if not sidecar.is_file():
        return None
    try:
        value = json.loads(sidecar.read_text())["normalisation"]["newline_replacement"]
    except (ValueError, KeyError, TypeError):
        raise LmforgeError(f"{sidecar}: not a classifier.json of lmforge data train-classifier "
                           "(no normalisation.newline_replacement); move it away from the model file") from None  # fmt: skip
    if not isinstance(value, str):
        raise LmforgeError(f"{sidecar}: normalisation.newline_replacement must be a string, got {value!r}")
    return value


@dataclass(kw_only=True)
class ClassifierConfig(Config):
    """Score documents (or their paragraphs or sentences) with a fastText classifier; keep,
    remove or only annotate by the score."""

    model_file: str
    """A supervised fastText model (.bin or .ftz)."""
    label: str
    """The label whose score is taken, without `__label__` (e.g. `hq`, `toxic`)."""
    keep_above: float | None = None
    """Keep a unit whose score is >= this (datatrove: `keep_labels=(label, t)`)."""
    remove_above: float | None = None
    """Remove a unit whose score is >= this (datatrove: `remove_labels=(label, t)`; dolma removes
    toxic sentences at 0.4). Neither threshold: annotate only."""
    unit: Literal["document", "paragraph", "sentence"] = "document"
    """What is scored and kept or removed: the whole text, each paragraph (a line with the blank
    lines after it, as datatrove cuts them), or each sentence (spaCy's Sentencizer)."""
    score: Literal["probability", "dclm"] = "probability"
    """`probability`: the label's probability over all labels (datatrove). `dclm`: DCLM's rule
    (top label only; 1 - p when the other label is on top; needs a two-label model)."""
    newline_replacement: str | None = None
    """With `score: probability`, what each newline becomes before scoring. None: what the model
    was trained with when a train-classifier classifier.json sits beside it, else datatrove's
    default "" (lines glued together)."""
    attribute: str | None = None
    """Name of the score's attribute; None: `<label>_score` (recorded as `<step label>__<name>`)."""

    def validate(self) -> None:
        require(bool(str(self.model_file).strip()), "model_file", "give the path of a fastText model (.bin or .ftz)")
        require(bool(self.label) and not self.label.startswith(LABEL_PREFIX), "label",
                f"write the bare label, without '{LABEL_PREFIX}' (e.g. hq), got {self.label!r}")  # fmt: skip
        require(self.keep_above is None or self.remove_above is None, "keep_above",
                "give keep_above or remove_above, not both (use two classifier steps for two rules)")  # fmt: skip
        for name in ("keep_above", "remove_above"):
            value = getattr(self, name)
            require(value is None or 0.0 <= value <= 1.0, name, f"must be in [0, 1] (a score), got {value}")
        require(self.attribute is None or bool(_ATTRIBUTE.fullmatch(self.attribute)) and "__" not in self.attribute,
                "attribute", f"use letters, digits, '_', '.' or '-' (no '__'), got {self.attribute!r}")  # fmt: skip
        try:
            labels = labels_of(self.model_path)
        except LmforgeError as e:
            raise ConfigError(str(e)) from None  # already "model_file: …"
        require(self.label in labels, "label",
                f"{self.model_path.name} has no label {self.label!r}; its labels are {', '.join(labels)}")  # fmt: skip
        require(self.score != "dclm" or len(labels) == 2, "score",
                f"dclm needs a two-label model (its 1 - p is the other label's score); "
                f"{self.model_path.name} has {len(labels)}: {', '.join(labels)}; use score: probability")  # fmt: skip

    @property
    def model_path(self) -> Path:
        return Path(self.model_file).expanduser()

    @property
    def attribute_name(self) -> str:
        return self.attribute or f"{self.label}_score"


def paragraph_units(text: str) -> list[str]:
    """The text cut into paragraphs as datatrove cuts them: each non-blank line starts a unit,
    blank lines stay with the unit before them, lines are re-joined by "\\n" (so "\\r\\n" becomes
    "\\n" and a final newline is lost, as in datatrove)."""
    lines = text.splitlines()
    units: list[str] = []
    current: list[str] = []
    for i, line in enumerate(lines):
        if line.strip() and current:
            units.append("".join(current))
            current = []
        current.append(line)
        if i != len(lines) - 1:
            current.append("\n")
    if current:
        units.append("".join(current))
    return units


def sentence_units(doc: CurateDocument) -> list[str]:
    """The text cut at the end of each sentence; the whitespace after a sentence starts the
    next unit and the last unit runs to the end, so the units join back into the text."""
    text = doc.text
    ends = doc.sentence_ends(text)[:-1]
    return [text[a:b] for a, b in zip([0, *ends], [*ends, len(text)])]


@register_step("classifier")
class Classifier(DocumentStep[ClassifierConfig]):
    """Scores units with a fastText model; keeps, removes or annotates by the score."""

    Config = ClassifierConfig
    counted_values = ("units_removed",)

    def __init__(self, config: ClassifierConfig, *, label: str | None = None):
        super().__init__(config, label=label)
        self._model: Any = None
        c = config
        self._label = LABEL_PREFIX + c.label
        sidecar = sidecar_newline(c.model_path) if c.newline_replacement is None else None
        self._newline = c.newline_replacement if c.newline_replacement is not None else sidecar
        if self._newline is None:
            self._newline = DATATROVE_NEWLINE
        self._sidecar = c.newline_replacement is None and sidecar is not None
        if c.keep_above is not None:
            self._reason = f"{self.label}:{c.label}<{c.keep_above:g}"
        elif c.remove_above is not None:
            self._reason = f"{self.label}:{c.label}>={c.remove_above:g}"
        else:
            self._reason = f"{self.label}:empty"  # annotate only: only a blank text is removed

    def written_values(self) -> tuple[str, ...]:
        return (self.config.attribute_name,)

    def input_files(self) -> list[str]:
        path = self.config.model_path
        return [str(path)] + ([str(path.with_name(SIDECAR))] if self._sidecar else [])

    def setup(self) -> None:
        if self._model is None:
            self._model = load_fasttext(self.config.model_path)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = None  # loaded again by setup() in the process it travels to
        return state

    def unit_score(self, unit: str) -> float | None:
        """The unit's score under the configured rule (None: the model gave the label none)."""
        if self._model is None:
            self.setup()
        if self.config.score == "dclm":
            p, top = predict_top(self._model, dclm_line(unit))
            return p if top == self._label else 1.0 - p
        for p, label in predict_all(self._model, one_line(unit, self._newline)):
            if label == self._label:
                return p
        return None

    def passes(self, score: float | None) -> bool:
        c = self.config
        if c.keep_above is not None:
            return score is not None and score >= c.keep_above
        if c.remove_above is not None:
            return score is None or score < c.remove_above
        return True  # annotate only. datatrove raises a TypeError here (`[] + None` checking labels)

    def units(self, doc: CurateDocument) -> list[str]:
        unit = self.config.unit
        if unit == "paragraph":
            return paragraph_units(doc.text)
        if unit == "sentence":
            return sentence_units(doc)
        return [doc.text]

    def __call__(self, doc: CurateDocument) -> Verdict:
        units = self.units(doc)
        scores = [self.unit_score(u) for u in units]
        kept = [u for u, s in zip(units, scores) if self.passes(s)]
        known = [s for s in scores if s is not None]
        values: dict[str, Any] = {self.config.attribute_name: sum(known) / len(known) if known else None}
        if self.config.unit != "document":
            values.update(units=len(units), units_removed=len(units) - len(kept))
        text = "".join(kept)
        if not text.strip():
            return Verdict.remove(self._reason, **values)
        if self.config.unit != "document":
            doc.text = text
        return Verdict.keep(**values)
