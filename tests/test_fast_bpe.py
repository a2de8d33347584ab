"""The tiktoken fast path gives exactly HF tokenizers' ids for the OLMo 2 tokenizer, and is
refused for any tokenizer where it might not."""

import json
import random
from pathlib import Path

import pytest
import tokenizers

from lmforge.data.documents import read_documents
from lmforge.data.fast_bpe import cl100k_encoder
from lmforge.data.tokenizer import Tokenizer, fetch_pretrained

pytest.importorskip("tiktoken")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def olmo2():
    return Tokenizer.load(fetch_pretrained("olmo2"))


def hf_ids(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tok.hf.encode_batch(texts, add_special_tokens=False)]


@pytest.mark.slow
@pytest.mark.network
def test_same_ids_as_hf_on_the_demo_corpus(olmo2):
    assert olmo2.fast_encoder is not None
    texts = [d.text for split in ("train", "val") for d in read_documents(REPO / "data" / "demo" / f"{split}.jsonl.gz")]
    assert olmo2.encode_batch(texts, threads=2) == hf_ids(olmo2, texts)


@pytest.mark.network
def test_same_ids_on_fuzzed_and_special_strings(olmo2):
    rng = random.Random(0)
    alphabet = list("ab Z9 \n\t'.,!?é東🙂\r\u00a0\u2028") + ["'S", "'ll", "<|endoftext|>", "<|pad|>", "|||EMAIL_ADDRESS|||"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(5000)]
    texts += ["trailing  ", "\n\n\n", "DON'T", "1234567", "x <|endoftext|> y", ""]
    assert olmo2.encode_batch(texts, threads=2) == hf_ids(olmo2, texts)
    assert olmo2.encode_batch(["x <|endoftext|> y"])[0] == [87, 220, 100257, 379]  # the special id, as HF does


@pytest.mark.network
def test_refused_when_one_id_differs(olmo2, tmp_path):
    spec = json.loads(olmo2.hf.to_str())
    vocab = spec["model"]["vocab"]
    vocab["Hello"], vocab["hello"] = vocab["hello"], vocab["Hello"]  # a tokenizer that is almost cl100k
    assert cl100k_encoder(tokenizers.Tokenizer.from_str(json.dumps(spec))) is None


def test_refused_for_other_tokenizers(tmp_path):
    (tmp_path / "t.txt").write_text("some text to train on " * 100)
    from lmforge.data.tokenizer import train_bpe

    assert train_bpe([tmp_path / "t.txt"], vocab_size=300, show_progress=False).fast_encoder is None
