"""`lmforge data train-classifier`: a fastText quality classifier from positive and negative documents.

DCLM's recipe: documents of the kind to keep (`positive`, label `hq`) against ordinary web text
(`negative`, label `cc`), one fastText supervised model with bigrams. What the model is given is
what the `classifier` curate step will give it when scoring (`lmforge.curate.fasttext_model`):

* each document's text, stripped, newlines replaced by spaces (one line per document), words
  that fastText would read as labels (`__label__…`) dropped; a document left without a word is
  skipped and counted;
* a document is held out iff `split_key(id, seed) < holdout · 2⁶⁴` (`lmforge.data.split`, the
  rule of `data tokenize --validation`): a pure function of its id, so the held-out set does not
  depend on file order or sharding, and documents sharing an id share a side;
* the training lines are in a seeded pseudo-random order (BLAKE2b of label, id and position,
  keyed by the seed): fastText reads its input in order with a decaying learning rate, and all
  positives then all negatives would leave the model biased towards the label it saw last.

Input files are taken in sorted order (by absolute path), so the outputs do not depend on the
order the paths are given in either. The output folder (`out`):

    train.txt, holdout.txt   fastText's format, `__label__hq <line>` (holdout.txt empty at holdout 0)
    model.bin                the fastText model
    classifier.json          labels, normalisation, hyperparameters, input and model sha256s, counts
    report.json, report.md   held-out metrics (`lmforge.curate.classifier_report`), scores.png

It is written into a staged folder and renamed into place at the end, so an interrupted run
leaves no `out` at all, never a complete-looking model.bin without its report.

Needs the fastText binding: `pip install 'lmforge[langid]'` (`fasttext-numpy2-wheel`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from tqdm import tqdm

from lmforge.curate.classifier import SIDECAR
from lmforge.curate.classifier_report import evaluate, no_metrics, write_report
from lmforge.curate.fasttext_model import (
    LABEL_PREFIX,
    drop_label_words,
    load_fasttext,
    model_labels,
    one_line,
    train_supervised,
)
from lmforge.data.documents import expand_paths, read_documents
from lmforge.data.split import ValidationSplit, split_key
from lmforge.errors import ConfigError, LmforgeError
from lmforge.fsutil import atomic_write, file_sha256, staged_folder

log = logging.getLogger(__name__)

NEWLINE = " "
"""What a newline inside a document becomes (DCLM joins lines with spaces; datatrove's language ID
does the same). The `classifier` step reads it back from classifier.json."""

PRESETS: dict[str, dict[str, Any]] = {
    # DCLM's fastText (openhermes_reddit_eli5_vs_rw_v2_bigram_200k_train): bigrams over 2M hash
    # buckets; the rest is fastText's supervised default. The input matrix is
    # (words + 2M buckets) × 100 floats: ~800 MB whatever the data.
    "dclm": {"lr": 0.1, "dim": 100, "ws": 5, "epoch": 5, "minCount": 1, "wordNgrams": 2, "bucket": 2_000_000},
    # For tests, demos and small corpora: 20x fewer buckets (a few thousand documents fill a
    # small share of 100k buckets anyway) and dim 50, which make a ~22 MB model instead of ~800 MB;
    # and 25 epochs, because 5 passes over a few hundred thousand words leave the model far from
    # converged. Measured on tests/quality_corpus.py (~950 documents): 5 epochs score nearly every
    # held-out document 0.49-0.50 (ROC-AUC 0.69); 20-25 epochs reach 0.99, at dim 50 as at dim 100.
    "small": {"lr": 0.1, "dim": 50, "ws": 5, "epoch": 25, "minCount": 1, "wordNgrams": 2, "bucket": 100_000},
}
"""Named `fasttext.train_supervised` settings (`--preset`); seed and thread are added per run."""

TRAIN_FILE, HOLDOUT_FILE, MODEL_FILE = "train.txt", "holdout.txt", "model.bin"
_SCRATCH = ".lines"  # normalised lines of every document, read back in the training order
_FT_WHITESPACE = " \n\r\t\v\f\0"  # what fastText splits words on


def train_classifier(
    positive: Sequence[str | Path],
    negative: Sequence[str | Path],
    out: str | Path,
    *,
    preset: str = "dclm",
    holdout: float = 0.1,
    seed: int = 0,
    labels: tuple[str, str] = ("hq", "cc"),
    threads: int = 1,
    progress: bool = True,
) -> dict:
    """Train a fastText classifier of `positive` (label `labels[0]`) against `negative`
    (`labels[1]`) documents into the new folder `out`; returns the report (report.json).

    positive, negative: files or folders of dolma JSONL (.jsonl, .jsonl.gz, .jsonl.zst) or .txt
        files (one document each).
    out: the folder to write (see the module doc); it must not exist or be empty.
    preset: a name in `PRESETS`: `dclm` (DCLM's recipe, ~800 MB model) or `small` (~22 MB, for
        tests, demos and corpora of a few thousand documents).
    holdout: the share of documents held out for the report, by a seeded hash of their id, in
        [0, 1); 0 holds none out and the report has no metrics.
    seed: seeds the held-out split, the order of the training lines and fastText.
    labels: the (positive, negative) label names, without `__label__`.
    threads: fastText's training threads. With 1 thread the same inputs and seed give a
        byte-identical model; with several, fastText's threads update the model without locks
        and the model differs from run to run (faster, not reproducible).
    progress: show a progress bar (documents read, docs/s) on stderr."""
    params = _check_options(preset, holdout, labels, threads)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LmforgeError(
            f"{out} already exists and is not an empty folder; delete it or choose another output folder"
        )
    pos_label, neg_label = labels
    pos_files = _input_files(positive, "--positive")
    neg_files = _input_files(negative, "--negative")
    both = set(map(os.path.abspath, pos_files)) & set(map(os.path.abspath, neg_files))
    if both:
        raise LmforgeError(f"--positive and --negative both name {min(both)}; a file can hold one label only")

    start = time.perf_counter()
    with staged_folder(out) as staging:
        scratch = staging / _SCRATCH
        with open(scratch, "wb") as lines:
            pos = _read_label(pos_label, pos_files, "--positive", lines, holdout, seed, progress)
            neg = _read_label(neg_label, neg_files, "--negative", lines, holdout, seed, progress)
        for found, flag, files in ((pos, "--positive", pos_files), (neg, "--negative", neg_files)):
            if not found["train"]:
                raise LmforgeError(f"{flag}: no documents left to train on in {_names(files)} ({_counts(found)}); "
                                   "give more documents or a smaller --holdout")  # fmt: skip
        _write_lines(scratch, staging / TRAIN_FILE, pos["train"] + neg["train"])
        _write_lines(scratch, staging / HOLDOUT_FILE, pos["holdout"] + neg["holdout"])
        scratch.unlink()
        counts = {
            "train": {pos_label: len(pos["train"]), neg_label: len(neg["train"])},
            "holdout": {pos_label: len(pos["holdout"]), neg_label: len(neg["holdout"])},
            "skipped_empty": {pos_label: pos["skipped_empty"], neg_label: neg["skipped_empty"]},
        }
        log.info(f"training fastText (preset {preset}) on {sum(counts['train'].values())} documents")
        hyperparameters = {**params, "seed": seed, "thread": threads, "verbose": 0}
        read_seconds = time.perf_counter() - start
        _train(staging / TRAIN_FILE, hyperparameters, staging / MODEL_FILE)
        train_seconds = time.perf_counter() - start - read_seconds
        model = load_fasttext(staging / MODEL_FILE)
        found_labels = sorted(model_labels(model))
        if found_labels != sorted(labels):  # cannot happen: label words are dropped from the text
            raise LmforgeError(f"fastText found the labels {found_labels}, not {list(labels)}")
        classifier = {
            "format": 1,
            "labels": [pos_label, neg_label],
            "positive_label": pos_label,
            "normalisation": {"newline_replacement": NEWLINE, "strip": True, "label_words": "dropped"},
            "preset": preset,
            "hyperparameters": hyperparameters,
            "seed": seed,
            "holdout": holdout,
            "split_rule": "held out iff blake2b-64(id, key=seed) < holdout * 2^64 (lmforge.data.split.split_key)",
            "inputs": {"positive": _hashes(pos_files), "negative": _hashes(neg_files)},
            "model_sha256": file_sha256(staging / MODEL_FILE),
            "model_bytes": (staging / MODEL_FILE).stat().st_size,
            "documents": counts,
        }
        atomic_write(staging / SIDECAR, json.dumps(classifier, indent=2) + "\n")
        evaluation = evaluate(model, staging / HOLDOUT_FILE, pos_label, neg_label) if holdout > 0 else None
        report = {
            "format": 1,
            "labels": [pos_label, neg_label],
            "positive_label": pos_label,
            "preset": preset,
            "seed": seed,
            "holdout": holdout,
            "documents": counts,
            "model_sha256": classifier["model_sha256"],
            "model_bytes": classifier["model_bytes"],
            "seconds": {"read": round(read_seconds, 3), "train": round(train_seconds, 3)},
            **(evaluation.metrics if evaluation is not None else no_metrics()),
        }
        write_report(staging, report, evaluation)
    log.info(f"wrote {out}/{MODEL_FILE} ({classifier['model_bytes'] / 2**20:.1f} MiB) and {out}/report.md")
    return report


def _check_options(preset: str, holdout: float, labels: tuple[str, str], threads: int) -> dict[str, Any]:
    """The preset's fastText settings; ConfigError naming the option that is wrong."""
    if preset not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
        raise ConfigError(f"--holdout: {holdout!r} is not a fraction in [0, 1); e.g. 0.1 holds out 10 % of "
                          "documents, 0 none (no metrics)")  # fmt: skip
    if not (isinstance(labels, (tuple, list)) and len(labels) == 2 and all(isinstance(x, str) for x in labels)):
        raise ConfigError(f"--labels: {labels!r} must be two label names (positive, negative), e.g. hq cc")
    for name in labels:
        if not name or any(c.isspace() or c in _FT_WHITESPACE for c in name):
            raise ConfigError(f"--labels: {name!r} must be a non-empty name without whitespace, e.g. hq")
        if name.startswith(LABEL_PREFIX):
            raise ConfigError(f"--labels: {name!r}: give the name without the {LABEL_PREFIX} prefix "
                              f"({name.removeprefix(LABEL_PREFIX) or 'hq'})")  # fmt: skip
    if labels[0] == labels[1]:
        raise ConfigError(f"--labels: the positive and negative labels are both {labels[0]!r}; give two names")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"--threads: {threads!r} must be an integer >= 1")
    return dict(PRESETS[preset])


def _input_files(paths: Sequence[str | Path], flag: str) -> list[Path]:
    """The document files under `paths`, each once, sorted by absolute path."""
    if isinstance(paths, (str, Path)):  # one path given bare, not in a list
        paths = [paths]
    if not paths:
        raise LmforgeError(f"{flag}: no input given; name files or folders of documents")
    try:
        files = expand_paths(list(paths))
    except LmforgeError as e:
        raise LmforgeError(f"{flag}: {e}") from None
    if not files:
        raise LmforgeError(f"{flag}: no document files (.jsonl, .jsonl.gz, .jsonl.zst, .txt) in {_names(paths)}")
    unique = {os.path.abspath(f): f for f in files}
    return [unique[k] for k in sorted(unique)]


def _read_label(label: str, files: list[Path], flag: str, lines: BinaryIO, holdout: float, seed: int,
                progress: bool) -> dict[str, Any]:  # fmt: skip
    """Normalise every document of one label into `lines` (bytes, one after another) and sort
    them to a side: {"train"|"holdout": [(order key, offset, length, label)], "skipped_empty": n}.
    A bad line raises the reader's one-line `file:line: reason`."""
    threshold = ValidationSplit(fraction=holdout, seed=seed).threshold if holdout > 0 else 0
    found: dict[str, Any] = {"train": [], "holdout": [], "skipped_empty": 0}
    position = 0
    with tqdm(desc=f"read {flag}", unit="doc", disable=not progress) as bar:
        for path in files:
            for doc in read_documents(path):
                position += 1
                bar.update()
                line = drop_label_words(one_line(doc.text, NEWLINE))
                if not line.strip(_FT_WHITESPACE):
                    found["skipped_empty"] += 1
                    continue
                try:
                    data = line.encode("utf-8")
                except UnicodeEncodeError as e:  # a lone surrogate from a JSON escape (\ud800)
                    raise LmforgeError(f"{path}: document {doc.id!r} cannot be written as UTF-8 ({e.reason} at "
                                       f"character {e.start}); fix or remove it")  # fmt: skip
                side = "holdout" if split_key(doc.id, seed) < threshold else "train"
                found[side].append((_order_key(seed, label, doc.id, position), lines.tell(), len(data), label))
                lines.write(data)
    if position == 0:
        raise LmforgeError(f"{flag}: no documents in {_names(files)}")
    if not found["train"] and not found["holdout"]:
        raise LmforgeError(f"{flag}: all {position} documents in {_names(files)} are empty once stripped "
                           f"(and {LABEL_PREFIX} words dropped)")  # fmt: skip
    return found


def _order_key(seed: int, label: str, doc_id: str, position: int) -> bytes:
    """Where a document goes in the shuffled files: a BLAKE2b keyed by the seed of (label, id,
    position); position tells apart documents that share an id."""
    h = hashlib.blake2b(digest_size=8, key=seed.to_bytes(16, "little", signed=True))
    h.update(f"lmforge.classifier\0{label}\0{position}\0".encode() + doc_id.encode("utf-8", "surrogatepass"))
    return h.digest()


def _write_lines(scratch: Path, dest: Path, entries: list[tuple[bytes, int, int, str]]) -> None:
    """`dest` in fastText's format, `__label__<label> <line>`, the lines in order of their keys."""
    with open(scratch, "rb") as src, open(dest, "wb") as f:
        for _, offset, length, label in sorted(entries):
            src.seek(offset)
            f.write(f"{LABEL_PREFIX}{label} ".encode() + src.read(length) + b"\n")


def _train(path: Path, hyperparameters: dict[str, Any], model_file: Path) -> None:
    """Train on `path` and save the model as `model_file`. Through `fasttext_model.train_supervised`,
    which makes the binding start from zeroed memory: it trains from memory it never initialises,
    and without that the model would depend on what the process did before (a different model for
    the same seed, or "Encountered NaN")."""
    if importlib.util.find_spec("fasttext") is None:
        raise LmforgeError(
            "train-classifier needs the fastText binding: pip install 'lmforge[langid]' (fasttext-numpy2-wheel)"
        )
    try:
        model = train_supervised(path, **hyperparameters)
    except ValueError as e:  # fastText's own message for arguments it rejects
        raise LmforgeError(f"fastText could not train on {path}: {e}") from None
    model.save_model(str(model_file))


def _hashes(files: list[Path]) -> dict[str, str]:
    return {str(f): file_sha256(f) for f in files}


def _names(paths: Sequence[str | Path]) -> str:
    names = [str(p) for p in paths]
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _counts(found: dict[str, Any]) -> str:
    return f"{len(found['holdout'])} held out, {found['skipped_empty']} empty"
