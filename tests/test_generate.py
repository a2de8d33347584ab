"""Sampling with and without the KV cache (fp32, CPU): same logits, same tokens, same as
transformers; top-p, eos and stop sequences."""

import pytest
import torch
import transformers

from lmforge.model import ModelConfig, generate, to_hf
from lmforge.model.transformer import Transformer

CONFIGS = {
    "mha": dict(vocab_size=300, d_model=64, n_layers=2, n_heads=4, mlp_hidden=128),
    "gqa": dict(vocab_size=300, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=128),
    "mqa-tied": dict(vocab_size=300, d_model=64, n_layers=2, n_heads=4, n_kv_heads=1, mlp_hidden=128,
                     tie_embeddings=True),
}
ATOL = 1e-5


def make_model(spec: dict, seed: int, max_seq_len: int = 128):
    """Weights far from init (as in test_hf_parity), so the logits are spread and greedy is not
    decided by near-ties."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(max_seq_len=max_seq_len, init_std=0.1, **spec))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model.eval()


def prompts(seed: int, batch: int = 3, length: int = 7) -> torch.Tensor:
    return torch.randint(0, 300, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_greedy_equals_uncached(name, seed):
    model = make_model(CONFIGS[name], seed)
    ids = prompts(seed)
    cached = generate(model, ids, 40)
    assert cached.shape == (3, 47)
    assert torch.equal(cached[:, :7], ids)
    assert cached.tolist() == generate(model, ids, 40, use_cache=False).tolist()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_logits_equal_full_recomputation(name):
    """Every decode step's logits, and those of a prefill in two chunks (the second attends to
    the cached first causally), equal the full forward's at the same positions."""
    model = make_model(CONFIGS[name], seed=5)
    seq = prompts(5, length=47)  # a 7-token prompt and 40 tokens fed one at a time
    with torch.no_grad():
        full = model(seq)  # (B, 47, V)
        assert full.abs().max() > 1.0
        cache = model.new_cache(3, 47)
        first = model(seq[:, :4], cache=cache)  # prefill from empty: is_causal
        second = model(seq[:, 4:7], cache=cache)  # prefill on top of a cache: explicit mask
        torch.testing.assert_close(torch.cat([first, second], dim=1), full[:, :7], atol=ATOL, rtol=0)
        for t in range(7, 47):
            step = model(seq[:, t : t + 1], cache=cache)  # (B, 1, V)
            torch.testing.assert_close(step[:, 0], full[:, t], atol=ATOL, rtol=0)
        assert cache.length == 47
        with pytest.raises(ValueError, match="KV cache overflow"):
            model(seq[:, :1], cache=cache)


def test_training_forward_ignores_cache_machinery():
    """No cache: the same logits and loss path as before (positions from 0)."""
    model = make_model(CONFIGS["gqa"], seed=6)
    ids = prompts(6, length=20)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model(ids, torch.arange(20)), atol=0, rtol=0)
        cache = model.new_cache(3)
        assert cache.max_len == model.cfg.max_seq_len and cache.k[0].shape == (3, 2, 128, 16)
        torch.testing.assert_close(model(ids, cache=cache), model(ids), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["mha", "gqa"])
@pytest.mark.parametrize("kwargs", [dict(temperature=0.8), dict(temperature=0.8, top_k=40),
                                    dict(temperature=1.0, top_p=0.9), dict(temperature=0.7, top_k=50, top_p=0.8)])
def test_sampling_cached_equals_uncached(name, kwargs):
    model = make_model(CONFIGS[name], seed=7)
    ids = prompts(7)
    cached = generate(model, ids, 40, vocab_size=300, generator=torch.Generator().manual_seed(3), **kwargs)
    uncached = generate(model, ids, 40, vocab_size=300, generator=torch.Generator().manual_seed(3), use_cache=False,
                        **kwargs)
    assert cached.tolist() == uncached.tolist()
    assert cached.max() < 300
    # and it is sampling: another seed draws something else
    other = generate(model, ids, 40, vocab_size=300, generator=torch.Generator().manual_seed(4), **kwargs)
    assert other.tolist() != cached.tolist()


def test_tiny_top_p_is_greedy():
    model = make_model(CONFIGS["gqa"], seed=8)
    ids = prompts(8)
    sampled = generate(model, ids, 30, temperature=1.5, top_p=1e-6, generator=torch.Generator().manual_seed(0))
    assert sampled.tolist() == generate(model, ids, 30).tolist()


def test_invalid_sampling_arguments():
    model = make_model(CONFIGS["mha"], seed=0)
    ids = prompts(0)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="top_p"):
            generate(model, ids, 2, temperature=1.0, top_p=bad)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, ids, 2, temperature=1.0, top_k=0)
    with pytest.raises(ValueError, match="stop"):
        generate(model, ids, 2, stop=[[]])


def first_new_occurrence(row: list[int], seq: list[int], start: int) -> int:
    """Index just past the first occurrence of `seq` in row[start:], or -1."""
    for i in range(start, len(row) - len(seq) + 1):
        if row[i : i + len(seq)] == seq:
            return i + len(seq)
    return -1


@pytest.mark.parametrize("use_cache", [True, False])
def test_stop_sequence_ends_its_row_only(use_cache):
    model = make_model(CONFIGS["gqa"], seed=9)
    ids = prompts(9)
    reference = generate(model, ids, 40).tolist()
    # A two-token stop sequence from row 0's output that rows 1 and 2 never produce.
    row0 = reference[0]
    for i in range(7 + 3, 7 + 30):
        stop = row0[i : i + 2]
        end = first_new_occurrence(row0, stop, 7)
        if all(first_new_occurrence(r, stop, 7) == -1 for r in reference[1:]):
            break
    else:
        pytest.fail("no stop sequence unique to row 0")
    out = generate(model, ids, 40, stop=[stop, [299, 298, 297]], use_cache=use_cache).tolist()
    assert len(out[0]) == 47  # the other rows kept going
    assert out[0][:end] == row0[:end]  # the stop sequence is kept
    assert out[0][end:] == [row0[end - 1]] * (47 - end)  # then padded with the last id (no eos)
    assert out[1:] == reference[1:]
    # With an eos the padding is eos; when every row has stopped, generation ends early.
    out = generate(model, ids, 40, stop=[stop], eos_token_id=1, use_cache=use_cache).tolist()
    assert out[0][end:] == [1] * (47 - end)
    stops = [r[7:9] for r in reference]  # each row's first two new ids
    out = generate(model, ids, 40, stop=stops, use_cache=use_cache).tolist()
    ends = [min(e for s in stops if (e := first_new_occurrence(r, s, 7)) > 0) for r in reference]
    assert len(out[0]) == max(ends) <= 9
    for ref, row, end in zip(reference, out, ends):
        assert row[:end] == ref[:end]


@pytest.mark.parametrize("use_cache", [True, False])
def test_eos_stops_and_pads(use_cache):
    model = make_model(CONFIGS["mha"], seed=10)
    ids = prompts(10)
    reference = generate(model, ids, 40).tolist()
    eos = reference[0][12]  # row 0's 6th new token
    end0 = reference[0].index(eos, 7) + 1
    out = generate(model, ids, 40, eos_token_id=eos, use_cache=use_cache).tolist()
    for ref, row in zip(reference, out):
        end = ref.index(eos, 7) + 1 if eos in ref[7:] else len(ref)
        assert row[:end] == ref[:end]
        assert all(t == eos for t in row[end:])
    assert out[0][end0:] == [eos] * (len(out[0]) - end0)
    # Every row ends on its first new token when that is the eos: one step, then stop.
    first = generate(model, ids[:1], 40, eos_token_id=reference[0][7], use_cache=use_cache)
    assert first.tolist() == [reference[0][:8]]


@pytest.mark.parametrize("prompt_len,new", [(10, 40), (40, 20), (60, 5)])
def test_past_max_seq_len_falls_back_to_recomputation(prompt_len, new):
    """With max_seq_len 48 the context window slides; the cached run must match."""
    model = make_model(CONFIGS["gqa"], seed=11, max_seq_len=48)
    ids = prompts(11, length=prompt_len)
    cached = generate(model, ids, new)
    assert cached.shape == (3, prompt_len + new)
    assert cached.tolist() == generate(model, ids, new, use_cache=False).tolist()


def test_model_without_cache_support_still_generates():
    """Any callable model (B, T) → (B, T, V) works: use_cache needs `new_cache`, else recomputes."""
    inner = make_model(CONFIGS["mha"], seed=12)

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, tokens):
            return self.inner(tokens)

    ids = prompts(12)
    assert generate(Plain(), ids, 10).tolist() == generate(inner, ids, 10).tolist()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_greedy_equals_transformers(name, tmp_path):
    model = make_model(CONFIGS[name], seed=13)
    folder = to_hf(model, tmp_path / "hf", eos_token_id=0, pad_token_id=1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert type(hf).__name__ == "Olmo2ForCausalLM"
    ids = prompts(13)
    with torch.no_grad():
        theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, min_new_tokens=40,
                             do_sample=False, pad_token_id=1)
    ours = generate(model, ids, 40)
    assert ours.shape == (3, 47)
    assert ours.tolist() == theirs.tolist()
