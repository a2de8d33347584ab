"""Architecture switches (norm placement, QK-norm) and µP, against transformers where a peer
model exists: pre-norm without QK-norm is Llama; µP folded into the weights is OLMo 2."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.errors import ConfigError, LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.hf import from_hf, to_hf
from lmforge.model.transformer import Transformer

transformers = pytest.importorskip("transformers")

SHAPE = dict(vocab_size=256, vocab_multiple=1, d_model=64, n_layers=2, n_heads=4, mlp_hidden=96, max_seq_len=64)


def _perturb_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Norm weights start at 1; make them differ so a misplaced norm cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))


def test_pre_norm_without_qk_norm_is_llama():
    """norm_placement: pre + qk_norm: false (OLMo 0424 / Llama) gives LlamaForCausalLM's logits."""
    cfg = ModelConfig(**SHAPE, norm_placement="pre", qk_norm=False, norm_eps=1e-5)
    torch.manual_seed(0)
    ours = Transformer(cfg)
    _perturb_norms(ours)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.padded_vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
        rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, max_position_embeddings=cfg.max_seq_len,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, eos_token_id=0, pad_token_id=0,
        bos_token_id=None,
    )
    hf_cfg.rope_parameters = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    llama = transformers.LlamaForCausalLM(hf_cfg).eval()
    names = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "head.weight": "lm_head.weight"}
    for i in range(cfg.n_layers):
        for ours_name, theirs in [("attn.wq", "self_attn.q_proj"), ("attn.wk", "self_attn.k_proj"),
                                  ("attn.wv", "self_attn.v_proj"), ("attn.wo", "self_attn.o_proj"),
                                  ("mlp.w_gate", "mlp.gate_proj"), ("mlp.w_up", "mlp.up_proj"),
                                  ("mlp.w_down", "mlp.down_proj"), ("attn_norm", "input_layernorm"),
                                  ("mlp_norm", "post_attention_layernorm")]:
            names[f"blocks.{i}.{ours_name}.weight"] = f"model.layers.{i}.{theirs}.weight"
    state = ours.state_dict()
    assert sorted(state) == sorted(names)  # no q_norm/k_norm parameters without QK-norm
    llama.load_state_dict({names[k]: v for k, v in state.items()}, strict=True)
    tokens = torch.randint(0, cfg.vocab_size, (2, 33), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), llama(tokens).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("switch", [dict(norm_placement="pre"), dict(qk_norm=False)])
def test_switches_change_the_model_and_export_refuses_them(switch, tmp_path):
    torch.manual_seed(0)
    base = Transformer(ModelConfig(**SHAPE))
    torch.manual_seed(0)
    other = Transformer(ModelConfig(**SHAPE, **switch))
    _perturb_norms(base), _perturb_norms(other)
    tokens = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        assert not torch.allclose(base(tokens), other(tokens), atol=1e-3)
    with pytest.raises(LmforgeError, match=f"model.{next(iter(switch))}") as err:
        to_hf(other, tmp_path / "hf")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "hf").exists()


def test_mup_at_base_width_is_standard():
    """Same seed, same logits: µP changes nothing at width_mult 1."""
    std = ModelConfig(**SHAPE)
    mup = ModelConfig(**SHAPE, parametrization="mup", mup_base_d_model=SHAPE["d_model"])
    assert mup.width_mult == 1.0 and mup.logit_multiplier == 1.0
    assert mup.attn_scale == pytest.approx(1 / math.sqrt(std.head_dim))
    a, b = Transformer(std, device="meta"), Transformer(mup, device="meta")
    for model in (a, b):
        model.to_empty(device="cpu")
        model.init_weights(seed=7)
    tokens = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        assert torch.equal(a(tokens), b(tokens))


def test_mup_init_and_multipliers_scale_with_width():
    cfg = ModelConfig(**{**SHAPE, "d_model": 256, "mlp_hidden": 384}, parametrization="mup", mup_base_d_model=64,
                      mup_output_multiplier=2.0)
    assert cfg.width_mult == 4.0
    assert cfg.logit_multiplier == pytest.approx(0.5)
    assert cfg.attn_scale == pytest.approx(math.sqrt(16) / 64)  # 1/head_dim × sqrt(base head_dim)
    model = Transformer(cfg)
    stds = {name: p.std().item() for name, p in model.named_parameters() if p.ndim == 2}
    # trunc_normal at ±3σ has std ≈ 0.986σ
    assert stds["blocks.0.mlp.w_up.weight"] == pytest.approx(0.02 / 2 * 0.986, rel=0.05)
    assert stds["embed.weight"] == pytest.approx(0.02 * 0.986, rel=0.05)
    assert stds["head.weight"] == pytest.approx(0.02 * 0.986, rel=0.05)


def test_mup_export_folds_multipliers_and_transformers_agrees(tmp_path):
    """A wide µP model with an output multiplier and trained-looking weights exports to an
    Olmo2ForCausalLM folder whose logits equal ours; importing it back gives a standard model
    with the same logits."""
    cfg = ModelConfig(**{**SHAPE, "d_model": 128, "mlp_hidden": 192}, parametrization="mup", mup_base_d_model=32,
                      mup_output_multiplier=3.0)
    torch.manual_seed(0)
    model = Transformer(cfg)
    _perturb_norms(model)
    out = to_hf(model, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    back = from_hf(out)
    assert back.cfg.parametrization == "standard"
    tokens = torch.randint(0, cfg.vocab_size, (2, 40))
    with torch.no_grad():
        want = model(tokens)
        torch.testing.assert_close(hf(tokens).logits, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(back(tokens), want, rtol=1e-5, atol=1e-5)


def test_mup_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"^mup_base_d_model: parametrization: mup needs") as err:
        ModelConfig(**SHAPE, parametrization="mup")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="^model.mup_base_d_model"):
        from lmforge.train.config import RunConfig

        RunConfig.from_dict({"model": {**SHAPE, "parametrization": "mup"}, "data": {"train": ["x"]},
                             "trainer": {"run_dir": "r", "max_steps": 1}})
    with pytest.raises(ConfigError, match="^mup_base_d_model: must be a positive multiple of n_heads"):
        ModelConfig(**SHAPE, parametrization="mup", mup_base_d_model=30)
    with pytest.raises(ConfigError, match="^tie_embeddings"):
        ModelConfig(**SHAPE, parametrization="mup", mup_base_d_model=32, tie_embeddings=True)
    with pytest.raises(ConfigError, match="norm_placement"):
        ModelConfig.from_dict({**SHAPE, "norm_placement": "post"})


@pytest.mark.parametrize("switch", [dict(norm_placement="pre", qk_norm=False),
                                    dict(parametrization="mup", mup_base_d_model=16, mup_output_multiplier=2.0)])
def test_packed_eval_scoring_follows_the_switches(switch):
    """The eval's packed scoring path re-runs the blocks itself: it must honour norm placement,
    QK-norm, the µP attention scale and logit multiplier (compared with one forward each)."""
    from lmforge.eval.scoring import _tree_hidden

    cfg = ModelConfig(**SHAPE, **switch)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    _perturb_norms(model)
    tokens = torch.randint(0, 256, (1, 20))
    T = tokens.shape[1]
    positions = torch.arange(T)[None]
    mask = torch.zeros(1, 1, T, T).masked_fill_(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    reads = torch.arange(T)
    with torch.no_grad():
        hidden = _tree_hidden(model, tokens, positions, mask, torch.zeros(T, dtype=torch.long), reads)
        logits = torch.nn.functional.linear(model.output_features(hidden), model.head_weight)
        torch.testing.assert_close(logits, model(tokens)[0], rtol=1e-5, atol=1e-5)


def test_mup_run_checkpoint_records_parametrization_and_exports(token_data, tmp_path, one_thread):
    """A µP training run (hidden LR ÷ 4) trains; its checkpoint says mup, reloads with the
    same multipliers, and its transformers export gives the checkpoint's logits."""
    from lmforge.model.io import load_model
    from lmforge.train.checkpoint import find_resumable
    from lmforge.train.config import RunConfig
    from lmforge.experiments.train_run import train

    cfg = RunConfig.from_dict({
        "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_hidden": 128,
                  "parametrization": "mup", "mup_base_d_model": 16, "mup_output_multiplier": 2.0},
        "data": {"train": [str(token_data / "train")], "validation": [str(token_data / "val")], "seq_len": 32},
        "optim": {"lr": 1e-2, "warmup_steps": 2},
        "trainer": {"run_dir": str(tmp_path / "run"), "batch_tokens": 256, "micro_batch_size": 8, "max_steps": 6,
                    "checkpoint_every": 6, "eval_every": 6, "eval_batches": 2},
    })
    train(cfg)
    rows = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"val_loss"' in line]
    import json

    first, last = json.loads(rows[0])["val_loss"], json.loads(rows[-1])["val_loss"]
    assert last < first  # it learns
    ckpt = find_resumable(tmp_path / "run" / "checkpoints")
    model = load_model(ckpt).eval()
    assert model.cfg.parametrization == "mup" and model.cfg.width_mult == 4.0 and model.logit_scale == 0.5
    out = to_hf(model, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens = torch.randint(0, 512, (1, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model(tokens), rtol=1e-5, atol=1e-5)
