"""Our OLMo 2 against transformers' Olmo2ForCausalLM on the same weights (fp32, CPU)."""

import pytest
import torch
import transformers

from lmforge.model import ModelConfig, from_hf, generate, lm_loss, to_hf
from lmforge.model.transformer import Transformer

# MHA and GQA/MQA, tied and untied, vocabularies that need padding and one that does not.
CONFIGS = {
    "mha-untied": dict(vocab_size=300, d_model=64, n_layers=2, n_heads=4, mlp_hidden=96),
    "gqa-tied": dict(vocab_size=1000, d_model=96, n_layers=3, n_heads=6, n_kv_heads=2, mlp_hidden=160, tie_embeddings=True),
    "mqa-untied": dict(vocab_size=512, d_model=64, n_layers=2, n_heads=8, n_kv_heads=1, mlp_hidden=128, rope_theta=10_000.0),
    "gqa-untied": dict(vocab_size=777, d_model=128, n_layers=2, n_heads=8, n_kv_heads=4, mlp_hidden=192),
}
SEQ_LENS = [1, 17, 300]
ATOL = 1e-5


def make_model(spec: dict, seed: int):
    """A model whose weights are far from init, so mismatched math cannot hide in tiny logits."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(max_seq_len=512, init_std=0.08, **spec))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model.eval()


def load_hf(folder) -> transformers.PreTrainedModel:
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert type(hf).__name__ == "Olmo2ForCausalLM"
    return hf.eval()


@pytest.fixture(scope="module", params=list(CONFIGS))
def exported(request, tmp_path_factory):
    model = make_model(CONFIGS[request.param], seed=len(request.param))
    folder = to_hf(model, tmp_path_factory.mktemp(request.param) / "hf", eos_token_id=0, pad_token_id=1)
    return model, load_hf(folder)


@pytest.mark.parametrize("seq_len", SEQ_LENS)
def test_logits_ours_to_transformers(exported, seq_len):
    ours, hf = exported
    torch.manual_seed(seq_len)
    ids = torch.randint(0, ours.cfg.vocab_size, (2, seq_len))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape == (2, seq_len, ours.cfg.padded_vocab_size)
    assert expected.abs().max() > 1.0  # the comparison is not between near-zero numbers
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_greedy_generation_matches(exported):
    ours, hf = exported
    prompt = torch.tensor([[3, 14, 15, 92, 65]])
    with torch.no_grad():
        theirs = hf.generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=1)
    mine = generate(ours, prompt, 20)
    assert mine.shape == (1, 25)
    assert mine.tolist() == theirs.tolist()


def test_loss_matches_transformers_labels(exported):
    ours, hf = exported
    torch.manual_seed(0)
    ids = torch.randint(0, ours.cfg.vocab_size, (3, 40))
    labels = ids.clone()
    labels[0, 10:20] = -100  # ignored positions must be excluded the same way
    with torch.no_grad():
        expected = hf(ids, labels=labels).loss
        parts = lm_loss(ours(ids)[:, :-1], labels[:, 1:])
    ce, z, n = parts.ce, parts.z, parts.n_tokens
    assert n == (labels[:, 1:] != -100).sum()
    assert torch.allclose(ce, expected, rtol=1e-6, atol=0), (ce.item(), expected.item())
    assert z == 0


@pytest.mark.parametrize("name", ["mha-untied", "gqa-tied"])
def test_transformers_save_pretrained_to_ours(name, tmp_path):
    """The other direction: a model made and saved by transformers itself loads into ours."""
    spec = CONFIGS[name]
    cfg = ModelConfig(max_seq_len=512, vocab_multiple=1, **spec)
    torch.manual_seed(1)
    hf_cfg = transformers.Olmo2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
        eos_token_id=0,
        pad_token_id=1,
    )
    hf = transformers.Olmo2ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for pname, p in hf.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if "norm" in pname else 0.08) + (1.0 if "norm" in pname else 0.0))
    hf.save_pretrained(tmp_path / "saved")
    ours = from_hf(tmp_path / "saved").eval()
    assert ours.cfg.tie_embeddings == spec.get("tie_embeddings", False)
    for seq_len in SEQ_LENS:
        ids = torch.randint(0, cfg.vocab_size, (2, seq_len))
        with torch.no_grad():
            torch.testing.assert_close(ours(ids), hf(ids).logits, atol=ATOL, rtol=0)
    prompt = torch.tensor([[7, 8, 9]])
    with torch.no_grad():
        theirs = hf.generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=1)
    assert generate(ours, prompt, 20).tolist() == theirs.tolist()


def test_round_trip_is_exact(tmp_path):
    """ours → HF folder → ours reproduces every parameter bit for bit."""
    model = make_model(CONFIGS["gqa-untied"], seed=3)
    back = from_hf(to_hf(model, tmp_path / "hf"))
    # Without a tokenizer in the folder only the padded vocabulary is known.
    assert back.cfg == model.cfg.replace(vocab_size=model.cfg.padded_vocab_size)
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
