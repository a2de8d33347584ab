"""Tokenizers: training, loading, HF-folder compatibility, and the real OLMo 2 tokenizer."""

import gzip
import json

import pytest
import transformers

from lmforge.data.tokenizer import Tokenizer, fetch_pretrained, train_bpe
from lmforge.errors import LmforgeError

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer",
    "In the beginning God created the heaven and the earth. And the earth was without form.",
    "Numbers 12345 and symbols #@! plus unicode: naïve café, 東京, emoji 🙂.",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i in range(200):
            f.write(json.dumps({"id": str(i), "text": TEXTS[i % len(TEXTS)] + f" line {i}", "source": "test"}) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(corpus):
    return train_bpe([corpus], vocab_size=400, show_progress=False)


def test_trained_bpe_has_the_requested_size_and_round_trips(trained):
    assert trained.vocab_size == 400
    assert (trained.eos_token, trained.eos_token_id, trained.pad_token_id) == ("<|endoftext|>", 0, 1)
    for text in TEXTS:
        ids = trained.encode(text)
        assert trained.decode(ids) == text  # byte-level: nothing is ever unknown
    assert len(trained.encode(TEXTS[0])) < len(TEXTS[0].encode()) / 2  # merges were learned


def test_saved_folder_loads_in_transformers_with_the_same_ids(trained, tmp_path):
    trained.save_hf(tmp_path, model_max_length=512)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert theirs.eos_token_id == trained.eos_token_id and theirs.pad_token_id == trained.pad_token_id
    for text in TEXTS:
        assert theirs(text)["input_ids"] == trained.encode(text)
    reloaded = Tokenizer.load(tmp_path)
    assert reloaded.fingerprint == trained.fingerprint
    assert reloaded.eos_token_id == trained.eos_token_id


def test_corrupt_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": "broken\n')
    with pytest.raises(LmforgeError, match=r"bad.jsonl:2: invalid JSON"):
        train_bpe([path], vocab_size=300, show_progress=False)
    path.write_text('{"id": "a", "body": "no text here"}\n')
    with pytest.raises(LmforgeError, match=r"bad.jsonl:1: document has no 'text' field"):
        train_bpe([path], vocab_size=300, show_progress=False)


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(LmforgeError, match=r"no documents found"):
        train_bpe([tmp_path / "empty.jsonl"], vocab_size=300, show_progress=False)


def test_tokenizer_without_eos_asks_for_one(tmp_path):
    import tokenizers

    hf = tokenizers.Tokenizer(tokenizers.models.BPE())
    hf.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(LmforgeError, match=r"no end-of-document token found"):
        Tokenizer.load(tmp_path / "tokenizer.json")


@pytest.mark.slow
@pytest.mark.network
def test_real_olmo2_tokenizer_from_its_pypi_wheel(tmp_path):
    path = fetch_pretrained("olmo2", cache=tmp_path)  # downloads the wheel (~145 MB) once
    tok = Tokenizer.load(path)
    assert tok.vocab_size == 100_278
    assert tok.eos_token_id == 100_257 and tok.pad_token_id == 100_277
    assert tok.padded_vocab_size() == 100_352
    # cl100k ids: "Hello world" is [9906, 1917] in GPT-4's tokenizer, which dolma2 reuses.
    assert tok.encode("Hello world") == [9906, 1917]
    assert fetch_pretrained("olmo2", cache=tmp_path) == path  # cached: no second download
