"""fastText models as curation uses them: loading one, the one-line text it is given, its scores.

Three places feed text to fastText and must agree on it byte for byte: the `language` step, the
`classifier` step and `lmforge data train-classifier`. fastText reads one line (a newline ends
the example), splits words on ASCII whitespace (space, \\n, \\r, \\t, \\v, \\f, \\0), and reads a
word that starts with `__label__` as a label, not a word: at training such a word in a document
would create a label of its own, at prediction it is dropped. So training text loses those words
(`drop_label_words`), and the model sees at training exactly what it sees when scoring.

Scores come from the binding's own `predict` call with k = -1 (every label, best first), as
datatrove's filters make it. fastText adds 1e-5 to every probability, so a two-label model's
scores sum to 1.00002; that is kept as it is, for equality with datatrove's and DCLM's numbers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError

LABEL_PREFIX = "__label__"

# A word that starts with the label prefix; words end at fastText's whitespace, not Python's \s.
_LABEL_WORD = re.compile(r"(?:^|(?<=[ \n\r\t\v\f\0]))__label__[^ \n\r\t\v\f\0]*")


def load_fasttext(path: str | Path, *, field: str = "model_file") -> Any:
    """A fastText model object (the `fasttext` module's `_FastText`, as datatrove loads it);
    LmforgeError naming `field` for a missing file or one that is not a fastText model."""
    try:
        from fasttext.FastText import _FastText
    except ImportError:
        raise LmforgeError(
            f"{field}: fastText models need the fastText binding: pip install 'lmforge[langid]' (fasttext-numpy2-wheel)"
        ) from None
    path = Path(path).expanduser()
    if not path.is_file():
        raise LmforgeError(f"{field}: {path} does not exist")
    try:
        return _FastText(str(path))
    except ValueError as e:  # fastText's own message for a file that is not a model
        raise LmforgeError(f"{field}: {path} is not a fastText model ({e})") from None


def model_labels(model: Any) -> list[str]:
    """The model's labels without the `__label__` prefix, in the model's order."""
    return [label.removeprefix(LABEL_PREFIX) for label in model.get_labels()]


def one_line(text: str, newline: str) -> str:
    """The text as datatrove's fastText filters give it to the model: stripped, each "\\n"
    replaced by `newline`."""
    return text.strip().replace("\n", newline)


def dclm_line(text: str) -> str:
    """The text as DCLM's `classify_fasttext_hq_prob` gives it: its lines joined by spaces."""
    return " ".join(text.strip().splitlines())


def drop_label_words(line: str) -> str:
    """`line` without the words fastText would read as labels (see the module doc)."""
    return _LABEL_WORD.sub("", line) if LABEL_PREFIX in line else line


def predict_all(model: Any, line: str) -> list[tuple[float, str]]:
    """Every (score, label) fastText gives one line of text (k = -1), best first, labels with
    their `__label__` prefix. The binding's own call, as its `predict` wrapper makes it (the
    text ends in "\\n", fastText's end-of-sentence token, which changes the scores), without the
    wrapper's numpy arrays. `line` must not contain "\\n"."""
    return model.f.predict(line + "\n", -1, 0.0, "strict")


def predict_top(model: Any, line: str) -> tuple[float, str]:
    """fastText's top (score, label) for one line (k = 1, as DCLM predicts). With a hierarchical
    softmax the top score differs from the first of `predict_all`'s, so it is its own call."""
    found = model.f.predict(line + "\n", 1, 0.0, "strict")
    return found[0] if found else (0.0, LABEL_PREFIX)



_M_PERTURB = -6  # glibc's mallopt parameter: fill each new allocation with ~value, each freed one with value


@contextmanager
def _zeroed_allocations() -> Iterator[None]:
    """Within it, memory the process allocates starts zeroed (on glibc; elsewhere a no-op).

    fastText initialises only the first tenth of its input matrix when trained with fewer than
    ten threads (`DenseMatrix::uniformThread` covers (rows · dim) / 10 values per thread) and
    relies on the rest being zero. Upstream's matrix is a zero-filled std::vector; the
    fasttext-numpy2-wheel build leaves that memory uninitialised, so a model trained in a process
    that had freed memory before starts from garbage: it trains to a different model each time,
    or fails with "Encountered NaN". glibc's M_PERTURB = 0xFF makes every allocation start as
    0x00 bytes, which restores upstream fastText 0.9.2's start (and so its models) exactly."""
    libc = None
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.mallopt(_M_PERTURB, 0xFF)
        except (OSError, AttributeError):
            libc = None
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_PERTURB, 0)


def train_supervised(input: str | Path, **kwargs: Any) -> Any:
    """`fasttext.train_supervised(input=…, **kwargs)` as upstream fastText 0.9.2 trains: with one
    thread the same input and arguments give byte-identical models (see `_zeroed_allocations`).
    With several threads fastText is not reproducible (its threads update one model unlocked).
    fastText's `seed` does not change a softmax model here: it seeds negative sampling and the
    choice among several labels of one line, neither of which a one-label softmax model uses."""
    import fasttext

    with _zeroed_allocations():
        try:
            return fasttext.train_supervised(input=str(input), **kwargs)
        except RuntimeError as e:  # "Encountered NaN." (a learning rate too high for the data)
            raise LmforgeError(f"fastText training on {input} failed: {e}; try a lower lr") from None
