"""Offline data for training and checking a quality classifier: well-edited expository English
(positives) against generated web pages (negatives).

* `expository_documents()`: Python's own reference documentation as the running Python ships
  it, `pydoc_data.topics` (79 topics, ~65k words of edited prose with some grammar rules and
  code), cut at paragraph boundaries into documents of about 150-300 words. Topics share whole
  sections, so each paragraph is used once. Optionally (`docstrings=True`) the longer docstrings
  of a fixed list of stdlib modules are added as documents of their own.
* `web_negatives()`: the generated pages of `tests/web_corpus.py` (`build_web_corpus`): articles,
  keyword spam, lists, navigation, lorem ipsum, tables, chat, pages in other languages, PII.
  Only its `web-*` sources are taken: its real-text sources (the Bible, Shakespeare, Milton and
  pydoc itself) are not web pages, and pydoc would be both labels at once.

Both are pure functions of their arguments (and of the Python version, for pydoc): ids are
stable (`pydoc/<topic>/<n>`, `doc/<module>`, the web corpus's own ids). Rows are dicts with
`id`, `text` and `source`, dolma's fields, ready for `write_jsonl`.

Test and demo data, not part of the package: tests/test_train_classifier.py uses it.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from web_corpus import build_web_corpus

DOCSTRING_MODULES = ("argparse", "copy", "csv", "doctest", "heapq", "inspect", "io", "itertools", "json", "os",
                     "re", "sched", "shelve", "socket", "statistics", "struct", "subprocess", "timeit", "unittest",
                     "uuid")  # fmt: skip
"""Stdlib modules whose docstrings run to a couple of hundred words or more."""


def _chunks(paragraphs: list[str], min_words: int, max_words: int) -> list[str]:
    """Consecutive paragraphs joined into pieces of `min_words`..`max_words` words where the
    paragraphs allow it (one long paragraph is a piece of its own); a short tail joins the piece
    before it."""
    pieces: list[list[str]] = []
    current: list[str] = []
    words = 0
    for para in paragraphs:
        n = len(para.split())
        if current and words >= min_words and words + n > max_words:
            pieces.append(current)
            current, words = [], 0
        current.append(para)
        words += n
    if current:
        if pieces and words < min_words:
            pieces[-1].extend(current)
        else:
            pieces.append(current)
    return ["\n\n".join(p) for p in pieces]


def expository_documents(min_words: int = 150, max_words: int = 300, *, docstrings: bool = False) -> list[dict]:
    """Python's reference documentation (`pydoc_data.topics`) in pieces of about `min_words` to
    `max_words` words, cut at paragraph boundaries, each paragraph used once; with `docstrings`,
    also the module docstrings of `DOCSTRING_MODULES` (those of at least `min_words // 2` words)."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    docs = []
    for topic in sorted(topics):
        paragraphs = []
        for para in topics[topic].split("\n\n"):
            para = para.strip("\n")
            if para.strip() and para.strip() not in seen:
                seen.add(para.strip())
                paragraphs.append(para)
        for i, text in enumerate(_chunks(paragraphs, min_words, max_words)):
            docs.append({"id": f"pydoc/{topic}/{i}", "text": text, "source": "pydoc"})
    if docstrings:
        for name in DOCSTRING_MODULES:
            text = (importlib.import_module(name).__doc__ or "").strip()
            if len(text.split()) >= min_words // 2:
                docs.append({"id": f"doc/{name}", "text": text, "source": "docstring"})
    return docs


def web_negatives(n_docs: int = 1200, seed: int = 0) -> list[dict]:
    """The generated web pages (`web-*` sources) among the first `n_docs` documents of
    `build_web_corpus(n_docs, seed)`: about two thirds of them, empty pages included."""
    corpus = build_web_corpus(n_docs=n_docs, seed=seed)
    return [{"id": d["id"], "text": d["text"], "source": d["source"]} for d in corpus.documents
            if d["source"].startswith("web-")]  # fmt: skip


def write_jsonl(path: Path, docs: list[dict]) -> Path:
    """`docs` as dolma JSONL (one object a line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    return path


def stdlib_docstrings(modules: tuple[str, ...], min_words: int = 40) -> list[dict]:
    """The docstrings of `modules` and of their public classes and functions that run to
    `min_words` words or more, one document each (id `docstring/<module>.<name>`): edited
    expository English that is not pydoc's reference text."""
    import inspect

    docs = []
    for name in modules:
        module = importlib.import_module(name)
        members = [("", module)] + sorted((n, m) for n, m in vars(module).items()
                                          if not n.startswith("_") and (inspect.isclass(m) or inspect.isfunction(m))
                                          and getattr(m, "__module__", None) == name)  # fmt: skip
        for member, obj in members:
            text = inspect.cleandoc(obj.__doc__ or "")
            if len(text.split()) >= min_words:
                docs.append({"id": f"docstring/{name}{'.' + member if member else ''}", "text": text,
                             "source": "docstring"})  # fmt: skip
    return docs
