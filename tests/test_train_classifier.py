"""`train_classifier` (`lmforge data train-classifier`) on Python's reference documentation
(positives, `tests/quality_corpus.py`) against the generated web pages of `tests/web_corpus.py`
(negatives), with preset `small`: a byte-identical model for the same seed, held-out metrics
equal to fastText's own `test_label`/`test`, a ROC-AUC equal to a pairwise count, a threshold
table that keeps the share of negatives it says, a held-out set that is a function of the ids
alone, no label made from a `__label__` word in a document, and one-line errors naming the flag.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fasttext")

from quality_corpus import expository_documents, web_negatives, write_jsonl

from lmforge.curate import classifier_train
from lmforge.curate.classifier import sidecar_newline
from lmforge.curate.classifier_report import NEGATIVE_FRACTIONS
from lmforge.curate.classifier_train import PRESETS, train_classifier
from lmforge.curate.fasttext_model import (
    LABEL_PREFIX,
    drop_label_words,
    load_fasttext,
    model_labels,
    one_line,
    predict_all,
)
from lmforge.data.split import split_key
from lmforge.errors import ConfigError, LmforgeError

HOLDOUT, SEED = 0.25, 3

# Planted in the corpus: label-like words (which must not become labels), a document that is
# nothing but one (skipped as empty), and characters Python counts as line breaks but fastText
# does not (which must not split a document's line in train.txt/holdout.txt).
SPAM = [{"id": "spam-only", "text": "__label__spam", "source": "web-spam"},
        {"id": "spam-words", "text": "__label__spam Buy cheap __label__spam shoes now\n__label__cc!", "source": "web-spam"},
        {"id": "breaks", "text": "Shop now\r\nbest\x0bprices\x1cin\u2028town\u0085today", "source": "web-spam"}]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """Positives in a folder of three files (.jsonl, .jsonl.gz and a .txt, one document named
    after its file), negatives in one .jsonl."""
    root = tmp_path_factory.mktemp("quality")
    pos = expository_documents(docstrings=True)
    pos[5] = {**pos[5], "text": pos[5]["text"] + " __label__spam"}
    pos[-1] = {**pos[-1], "id": "extra.txt"}
    neg = web_negatives() + SPAM
    write_jsonl(root / "pos" / "a.jsonl", pos[: len(pos) // 2])
    with gzip.open(root / "pos" / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(d) + "\n" for d in pos[len(pos) // 2 : -1])
    (root / "pos" / "extra.txt").write_text(pos[-1]["text"], encoding="utf-8")
    write_jsonl(root / "neg.jsonl", neg)
    return {"root": root, "pos": pos, "neg": neg, "pos_paths": [root / "pos"], "neg_paths": [root / "neg.jsonl"]}


@pytest.fixture(scope="module")
def trained(corpus) -> dict:
    out = corpus["root"] / "clf"
    report = train_classifier(corpus["pos_paths"], corpus["neg_paths"], out, preset="small", holdout=HOLDOUT,
                              seed=SEED, progress=True)  # fmt: skip
    return {"out": out, "report": report, "model": load_fasttext(out / "model.bin")}


def _lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="\n") as f:
        return [line.removesuffix("\n") for line in f]


def _holdout_scores(trained) -> tuple[np.ndarray, np.ndarray]:
    """The positive label's probability of each held-out line, split by its label (restated
    here from the curate step's rule, not taken from the report module)."""
    pos, neg = [], []
    for line in _lines(trained["out"] / "holdout.txt"):
        label, _, text = line.partition(" ")
        score = {lab: p for p, lab in predict_all(trained["model"], text)}[LABEL_PREFIX + "hq"]
        (pos if label == LABEL_PREFIX + "hq" else neg).append(score)
    return np.array(pos), np.array(neg)


def test_outputs(trained, corpus):
    out, report = trained["out"], trained["report"]
    assert sorted(p.name for p in out.iterdir()) == ["classifier.json", "holdout.txt", "model.bin", "report.json",
                                                     "report.md", "scores.png", "train.txt"]  # fmt: skip
    assert json.loads((out / "report.json").read_text()) == report
    meta = json.loads((out / "classifier.json").read_text())
    assert meta["labels"] == ["hq", "cc"] and meta["positive_label"] == "hq"
    assert meta["normalisation"] == {"newline_replacement": " ", "strip": True, "label_words": "dropped"}
    assert sidecar_newline(out / "model.bin") == " "  # what the classifier step reads back
    assert meta["hyperparameters"] == {**PRESETS["small"], "seed": SEED, "thread": 1, "verbose": 0}
    assert set(meta["inputs"]["positive"]) == {
        str(corpus["root"] / "pos" / n) for n in ("a.jsonl", "b.jsonl.gz", "extra.txt")
    }
    docs = meta["documents"]
    assert docs["skipped_empty"]["cc"] >= 1  # "__label__spam" alone, and the generated empty pages
    n_train, n_hold = sum(docs["train"].values()), sum(docs["holdout"].values())
    assert n_train + n_hold + sum(docs["skipped_empty"].values()) == len(corpus["pos"]) + len(corpus["neg"])
    train, hold = _lines(out / "train.txt"), _lines(out / "holdout.txt")
    assert (len(train), len(hold)) == (n_train, n_hold)  # \r, \x0b, \u2028 … did not split a line
    labels = [line.split(" ", 1)[0] for line in train]
    assert 0.05 < labels[: len(labels) // 2].count("__label__hq") / (len(labels) // 2) < 0.45  # shuffled
    assert "| ROC-AUC |" in (out / "report.md").read_text()


def test_same_seed_same_model(trained, corpus, tmp_path):
    # Leave NaN-filled memory behind in the allocator: fastText trains from uninitialised memory
    # (see fasttext_model.train_supervised), which must not reach the model.
    for size in (6_000_000, 5_000_000, 1_000_000):
        garbage = np.full(size, np.nan, np.float32)
        del garbage
    again = train_classifier(corpus["pos_paths"], corpus["neg_paths"], tmp_path / "again", preset="small",
                             holdout=HOLDOUT, seed=SEED, progress=False)  # fmt: skip
    first = trained["out"]
    assert (tmp_path / "again" / "model.bin").read_bytes() == (first / "model.bin").read_bytes()
    assert again["model_sha256"] == trained["report"]["model_sha256"]
    assert (tmp_path / "again" / "train.txt").read_bytes() == (first / "train.txt").read_bytes()


def test_metrics_equal_fasttext(trained):
    report, model, holdout = trained["report"], trained["model"], str(trained["out"] / "holdout.txt")
    ours = model.test_label(holdout)["__label__hq"]
    assert (report["precision"], report["recall"], report["f1"]) == (ours["precision"], ours["recall"], ours["f1score"])
    n, p, r = model.test(holdout)
    assert report["fasttext_test"] == {"n": n, "precision_at_1": p, "recall_at_1": r}
    assert n == sum(report["documents"]["holdout"].values())
    print(f"held-out: ROC-AUC {report['roc_auc']:.4f}, precision {report['precision']:.3f}, recall "
          f"{report['recall']:.3f}, f1 {report['f1']:.3f}; model {report['model_bytes'] / 2**20:.1f} MiB")  # fmt: skip


def test_roc_auc(trained):
    pos, neg = _holdout_scores(trained)
    pairs = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)  # O(n²): every (positive, negative) pair
    assert trained["report"]["roc_auc"] == pytest.approx(pairs / (len(pos) * len(neg)), abs=1e-12)
    assert trained["report"]["roc_auc"] >= 0.9


def test_threshold_table(trained):
    pos, neg = _holdout_scores(trained)
    rows = trained["report"]["thresholds"]
    assert [r["negative_fraction"] for r in rows] == list(NEGATIVE_FRACTIONS)
    for r in rows:
        t = r["threshold"]
        assert r["negatives_kept"] == np.mean(neg >= t) >= r["negative_fraction"]
        assert np.mean(neg > t) < r["negative_fraction"]  # any higher threshold keeps too few
        assert r["positive_recall"] == np.mean(pos >= t)
    assert [r["threshold"] for r in rows] == sorted((r["threshold"] for r in rows), reverse=True)


def test_label_words_make_no_label(trained):
    assert sorted(model_labels(trained["model"])) == ["cc", "hq"]
    lines = _lines(trained["out"] / "train.txt") + _lines(trained["out"] / "holdout.txt")
    assert all(line.count(LABEL_PREFIX) == 1 and line.startswith(("__label__hq ", "__label__cc ")) for line in lines)


def test_holdout_is_a_function_of_ids(trained, corpus, tmp_path):
    """Other files, other order of files and of documents inside them: the same held-out lines,
    exactly those of the documents whose id hashes below the cut."""
    rng = random.Random(0)
    docs = [("hq", d) for d in corpus["pos"]] + [("cc", d) for d in corpus["neg"]]
    pos, neg = [d for lab, d in docs if lab == "hq"], [d for lab, d in docs if lab == "cc"]
    rng.shuffle(pos)
    rng.shuffle(neg)
    files = [write_jsonl(tmp_path / f"z{i}.jsonl", pos[i::3]) for i in range(3)]
    negs = [write_jsonl(tmp_path / "neg" / f"{i}.jsonl", neg[i::2]) for i in range(2)]
    train_classifier(files[::-1], negs[::-1], tmp_path / "out", preset="small", holdout=HOLDOUT, seed=SEED,
                     progress=False)  # fmt: skip
    got = sorted(_lines(tmp_path / "out" / "holdout.txt"))
    assert got == sorted(_lines(trained["out"] / "holdout.txt"))
    expected = []
    for label, d in docs:
        line = drop_label_words(one_line(d["text"], " "))
        if split_key(d["id"], SEED) < HOLDOUT * 2**64 and line.strip():
            expected.append(f"{LABEL_PREFIX}{label} {line}")
    assert got == sorted(expected)


def test_no_holdout_and_label_without_holdout(corpus, tmp_path):
    pos, neg = corpus["pos"][:40], corpus["neg"][:60]
    report = train_classifier([write_jsonl(tmp_path / "p.jsonl", pos)], [write_jsonl(tmp_path / "n.jsonl", neg)],
                              tmp_path / "none", preset="small", holdout=0, progress=False)  # fmt: skip
    assert report["roc_auc"] is None and report["thresholds"] is None and report["precision"] is None
    assert "no metrics" in report["notes"][0] and not (tmp_path / "none" / "scores.png").exists()
    assert (tmp_path / "none" / "holdout.txt").read_text() == ""
    # positives none of which is held out (ids chosen by their split key)
    kept = [d for d in corpus["pos"] if split_key(d["id"], 0) >= 0.5 * 2**64][:20]
    report = train_classifier([write_jsonl(tmp_path / "p2.jsonl", kept)], [write_jsonl(tmp_path / "n.jsonl", neg)],
                              tmp_path / "tiny", preset="small", holdout=0.5, progress=False)  # fmt: skip
    assert report["documents"]["holdout"]["hq"] == 0 and report["documents"]["holdout"]["cc"] > 0
    assert report["recall"] is None and report["roc_auc"] is None
    assert all(r["positive_recall"] is None for r in report["thresholds"])
    assert any("no held-out hq documents" in note for note in report["notes"])
    assert "no held-out hq documents" in (tmp_path / "tiny" / "report.md").read_text()


def test_interrupted_run_leaves_nothing(corpus, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(classifier_train, "evaluate", fail)  # after model.bin is saved
    p = write_jsonl(tmp_path / "in" / "p.jsonl", corpus["pos"][:30])
    n = write_jsonl(tmp_path / "in" / "n.jsonl", corpus["neg"][:30])
    with pytest.raises(KeyboardInterrupt):
        train_classifier([p], [n], tmp_path / "out", preset="small", progress=False)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["in"]


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_errors(corpus, tmp_path):
    pos, neg = corpus["pos_paths"], corpus["neg_paths"]
    (tmp_path / "empty").mkdir()
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    for bad in ([tmp_path / "empty"], [blank], [tmp_path / "missing.jsonl"], []):
        with pytest.raises(LmforgeError) as e:
            train_classifier(bad, neg, tmp_path / "out", preset="small", progress=False)
        message = _one_line_error(e)
        assert message.startswith("--positive") and (not bad or str(bad[0]) in message), message
    only_labels = write_jsonl(tmp_path / "labels.jsonl", [{"id": "x", "text": "__label__a\n__label__b"}])
    with pytest.raises(LmforgeError, match="^--negative: .*empty") as e:
        train_classifier(pos, [only_labels], tmp_path / "out", preset="small", progress=False)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": \n')
    with pytest.raises(LmforgeError, match=f"^{broken}:2: invalid JSON"):
        train_classifier([broken], neg, tmp_path / "out", preset="small", progress=False)
    with pytest.raises(ConfigError) as e:
        train_classifier(pos, neg, tmp_path / "out", preset="huge")
    assert _one_line_error(e).startswith("--preset") and "dclm" in str(e.value) and "small" in str(e.value)
    for holdout in (1.0, -0.1, 2):
        with pytest.raises(ConfigError, match="^--holdout"):
            train_classifier(pos, neg, tmp_path / "out", holdout=holdout)
    for labels in (("hq", "hq"), ("__label__hq", "cc"), ("h q", "cc"), ("", "cc"), ("hq",)):
        with pytest.raises(ConfigError, match="^--labels"):
            train_classifier(pos, neg, tmp_path / "out", labels=labels)
    with pytest.raises(ConfigError, match="^--threads"):
        train_classifier(pos, neg, tmp_path / "out", threads=0)
    with pytest.raises(LmforgeError, match="both name"):
        train_classifier(neg, neg, tmp_path / "out", preset="small", progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(LmforgeError, match="not an empty folder; delete it or choose another"):
        train_classifier(pos, neg, tmp_path / "full", preset="small")
    assert not (tmp_path / "out").exists()
