"""Perplexity and bits per byte on token files (`lmforge.eval.perplexity`): the loss equals
transformers' `Olmo2ForCausalLM(labels=...)` on the exported model over the same windows, and
bits per byte is nats / ln 2 / bytes of the scored text decoded in one piece."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.model.transformer import Transformer

SEQ_LEN = 24




@pytest.fixture(scope="module")
def ppl_data(tmp_path_factory):
    """A BPE and two token folders of text with multi-byte characters, and a small model."""
    from lmforge.data.tokenize import tokenize
    from lmforge.data.tokenizer import train_bpe
    from lmforge.model.config import ModelConfig

    root = tmp_path_factory.mktemp("ppl")
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat café naïve über 日本語 テキスト 🙂 emoji Ωμέγα and so on".split()
    paths = []
    for name, n_docs in (("a", 40), ("b", 25)):
        path = root / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for i in range(n_docs):
                text = " ".join(rng.choice(words, size=int(rng.integers(5, 60))))
                f.write(json.dumps({"id": f"{name}{i}", "text": text, "source": "s"}) + "\n")
        paths.append(path)
    tok = train_bpe(paths, vocab_size=300, show_progress=False)
    folders = []
    for path in paths:
        tokenize([path], tok, root / path.stem, workers=1, progress=False)
        folders.append(root / path.stem)
    torch.manual_seed(3)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, mlp_hidden=64, max_seq_len=64)
    return folders, tok, Transformer(cfg)


def _all_tokens(folders) -> np.ndarray:
    """Every folder's tokens, concatenated, read independently of TokenStream."""
    from lmforge.data.token_files import TokenFiles

    return np.concatenate([np.concatenate([np.asarray(p) for p in TokenFiles(f).parts]) for f in folders]).astype(
        np.int64
    )


def test_loss_matches_transformers(ppl_data, tmp_path, one_thread):
    transformers = pytest.importorskip("transformers")
    from lmforge.eval.perplexity import perplexity
    from lmforge.model.hf import to_hf

    folders, tok, model = ppl_data
    to_hf(model, tmp_path / "hf", tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(hf).__name__ == "Olmo2ForCausalLM"

    tokens = _all_tokens(folders)
    full = None
    for max_tokens in (None, 5 * SEQ_LEN + 3):
        got = perplexity(model, folders, seq_len=SEQ_LEN, batch_size=3, max_tokens=max_tokens, progress=False)
        n = (len(tokens) - 1) // SEQ_LEN if max_tokens is None else 5
        windows = torch.from_numpy(np.stack([tokens[i * SEQ_LEN : i * SEQ_LEN + SEQ_LEN + 1] for i in range(n)]))
        with torch.no_grad():  # labels are shifted inside: each window scores its last SEQ_LEN tokens
            want = hf(input_ids=windows, labels=windows).loss.item()
        assert got["windows"] == n and got["tokens"] == n * SEQ_LEN
        assert got["loss"] == pytest.approx(want, abs=1e-5)
        assert got["perplexity"] == pytest.approx(math.exp(want), rel=1e-5)
        assert got["bits_per_token"] == pytest.approx(got["loss"] / math.log(2))
        assert got["nats"] == pytest.approx(got["loss"] * got["tokens"])
        assert "bits_per_byte" not in got
        full = full or got

    # Any module mapping tokens to logits takes the plain path: the same numbers.
    class Plain(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    plain = perplexity(Plain(model), folders, seq_len=SEQ_LEN, batch_size=2, progress=False)
    assert plain["tokens"] == full["tokens"] and plain["loss"] == pytest.approx(full["loss"], abs=1e-6)


def test_bits_per_byte(ppl_data, monkeypatch, one_thread):
    from lmforge.eval import perplexity as ppl_module

    folders, tok, model = ppl_data
    tokens = _all_tokens(folders)
    for piece in (ppl_module.DECODE_PIECE_TOKENS, 7, 1):  # small pieces: decoded across many boundaries
        monkeypatch.setattr(ppl_module, "DECODE_PIECE_TOKENS", piece)
        got = ppl_module.perplexity(model, folders, seq_len=SEQ_LEN, batch_size=4, max_tokens=400, tokenizer=tok,
                                    progress=False)  # fmt: skip
        scored = tokens[1 : got["tokens"] + 1].tolist()
        text = tok.hf.decode(scored, skip_special_tokens=True)
        # Only the span's end may cut a character (decoded alike either way).
        assert "日本語" in text and "\ufffd" not in text.rstrip("\ufffd")
        n_bytes = len(text.encode("utf-8"))
        assert got["bytes"] == n_bytes
        assert got["bits_per_byte"] == pytest.approx(got["nats"] / math.log(2) / n_bytes, rel=1e-12)
        assert got["bits_per_byte"] == pytest.approx(got["loss"] * got["tokens"] / math.log(2) / n_bytes, rel=1e-9)


def test_errors(ppl_data):
    from lmforge.data.tokenizer import train_bpe
    from lmforge.eval.perplexity import perplexity

    folders, tok, model = ppl_data
    with pytest.raises(LmforgeError, match="longer than the model's context"):
        perplexity(model, folders, seq_len=65, batch_size=1, progress=False)
    with pytest.raises(LmforgeError, match="another tokenizer"):
        other = train_bpe([folders[0].parent / "a.jsonl"], vocab_size=280, show_progress=False)
        perplexity(model, folders, seq_len=8, batch_size=1, tokenizer=other, progress=False)
    with pytest.raises(LmforgeError, match="max_tokens"):
        perplexity(model, folders, seq_len=8, batch_size=1, max_tokens=0, progress=False)


def test_evaluate_adds_perplexity(ppl_data):
    from lmforge.eval.harness import evaluate, format_table
    from lmforge.eval.perplexity import perplexity

    folders, tok, model = ppl_data
    results = evaluate(model, None, tokenizer=tok, token_folders=folders, ppl_seq_len=SEQ_LEN, ppl_max_tokens=200,
                       progress=False)  # fmt: skip
    assert results["tasks"] == {}
    want = perplexity(model, folders, seq_len=SEQ_LEN, batch_size=8, max_tokens=200, tokenizer=tok, progress=False)
    got = results["perplexity"]
    assert got["tokens"] == want["tokens"] == 8 * SEQ_LEN
    assert got["loss"] == pytest.approx(want["loss"], abs=1e-6)
    assert got["bits_per_byte"] == pytest.approx(want["bits_per_byte"], abs=1e-6)
    assert "perplexity" in format_table(results) and "bits/byte" in format_table(results)
