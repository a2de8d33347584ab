"""Mixture of experts against transformers: our MoE model gives `OlmoeForCausalLM`'s logits
(pre-norm) and `FlexOlmoForCausalLM`'s (reordered norm) on the same random weights, its router
logits equal theirs, k × our load-balancing loss equals their `load_balancing_loss_func`, and
the published OLMoE-1B-7B shape has their parameter counts; bad MoE options fail in one line."""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.model import ModelConfig, Transformer
from lmforge.model.moe import MoE
from lmforge.model.size import model_size

transformers = pytest.importorskip("transformers")

VOCAB = 256


def small(**overrides) -> ModelConfig:
    base = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, mlp_hidden=48, moe_num_experts=6, moe_top_k=2,
                max_seq_len=64, rope_theta=10_000.0, norm_eps=1e-5)  # fmt: skip
    return ModelConfig(**{**base, **overrides})


def hf_model(cfg: ModelConfig):
    """transformers' model of the same shape: OLMoE for pre-norm, FlexOlmo for reordered."""
    common = dict(vocab_size=cfg.padded_vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.expert_hidden,
                  num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
                  max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, num_experts=cfg.moe_num_experts,
                  num_experts_per_tok=cfg.moe_top_k, norm_topk_prob=cfg.moe_norm_topk_prob,
                  tie_word_embeddings=cfg.tie_embeddings, rope_parameters={"rope_type": "default",
                                                                           "rope_theta": cfg.rope_theta},
                  pad_token_id=0, eos_token_id=1, attn_implementation="eager")  # fmt: skip
    if cfg.norm_placement == "pre":
        return transformers.OlmoeForCausalLM(transformers.OlmoeConfig(**common)).eval()
    return transformers.FlexOlmoForCausalLM(transformers.FlexOlmoConfig(**common)).eval()


def copy_weights(ours: Transformer, theirs) -> None:
    """Our weights into transformers' live modules (5.x keeps experts as stacked gate_up/down)."""
    reordered = ours.cfg.norm_placement == "reordered"
    with torch.no_grad():
        theirs.model.embed_tokens.weight.copy_(ours.embed.weight)
        theirs.model.norm.weight.copy_(ours.norm.weight)
        if not ours.cfg.tie_embeddings:
            theirs.lm_head.weight.copy_(ours.head.weight)
        for block, layer in zip(ours.blocks, theirs.model.layers):
            a, sa = block.attn, layer.self_attn
            for mine, hf in ((a.wq, sa.q_proj), (a.wk, sa.k_proj), (a.wv, sa.v_proj), (a.wo, sa.o_proj),
                             (a.q_norm, sa.q_norm), (a.k_norm, sa.k_norm)):  # fmt: skip
                hf.weight.copy_(mine.weight)
            if reordered:  # FlexOlmo: norms on the sublayer outputs, as OLMo 2
                layer.post_attention_layernorm.weight.copy_(block.attn_norm.weight)
                layer.post_feedforward_layernorm.weight.copy_(block.mlp_norm.weight)
            else:  # OLMoE: post_attention_layernorm is the norm *before* the MoE
                layer.input_layernorm.weight.copy_(block.attn_norm.weight)
                layer.post_attention_layernorm.weight.copy_(block.mlp_norm.weight)
            moe = block.mlp
            layer.mlp.gate.weight.copy_(moe.router.weight)
            layer.mlp.experts.gate_up_proj.copy_(moe.experts.w_gate_up)
            layer.mlp.experts.down_proj.copy_(moe.experts.w_down)


def same_weights(cfg: ModelConfig, seed: int):
    """Our model of `cfg` from `seed` and transformers' of the same shape holding its weights."""
    torch.manual_seed(seed)
    ours = Transformer(cfg).eval()
    theirs = hf_model(cfg)
    copy_weights(ours, theirs)
    return ours, theirs


CASES = {
    "olmoe": dict(norm_placement="pre"),
    "olmoe-norm-topk": dict(norm_placement="pre", moe_norm_topk_prob=True),
    "olmoe-gqa-tied": dict(norm_placement="pre", n_kv_heads=2, tie_embeddings=True),
    "flexolmo": dict(norm_placement="reordered"),
    "flexolmo-norm-topk-gqa": dict(norm_placement="reordered", moe_norm_topk_prob=True, n_kv_heads=1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_router_equal_transformers(case):
    cfg = small(**CASES[case])
    ours, theirs = same_weights(cfg, 0)
    tokens = torch.randint(0, VOCAB, (3, 37))
    with torch.no_grad():
        logits = ours(tokens)
        out = theirs(tokens, output_router_logits=True)
    assert (logits - out.logits).abs().max().item() < 1e-5
    # the router logits, layer by layer, and the load-balancing loss on them
    with torch.no_grad():
        ours(tokens)
        stats = ours.router_stats()
        from transformers.models.olmoe.modeling_olmoe import load_balancing_loss_func

        for s, layer_logits in zip(stats, out.router_logits):
            expected = load_balancing_loss_func((layer_logits,), cfg.moe_num_experts, cfg.moe_top_k)
            assert (cfg.moe_top_k * s.lb).item() == pytest.approx(expected.item(), rel=1e-5)
            z = torch.logsumexp(layer_logits.float(), dim=-1).pow(2).mean()
            assert s.z.item() == pytest.approx(z.item(), rel=1e-5)
            assert int(s.counts.sum()) == 3 * 37 * cfg.moe_top_k


def test_router_logits_equal_transformers_router_on_the_same_input():
    cfg = small(norm_placement="pre")
    ours, theirs = same_weights(cfg, 1)
    x = torch.randn(50, cfg.d_model)
    moe: MoE = ours.blocks[0].mlp
    router = theirs.model.layers[0].mlp.gate
    with torch.no_grad():
        their_logits, their_weights, their_experts = router(x)
        y_ours = moe(x[None])[0]
        y_theirs = theirs.model.layers[0].mlp(x[None])[0]
    ours_logits = torch.nn.functional.linear(x.float(), moe.router.weight.float())
    assert torch.allclose(ours_logits, their_logits, atol=1e-6)
    assert (y_ours - y_theirs).abs().max().item() < 1e-5


def test_olmoe_1b_7b_has_the_published_parameter_counts():
    cfg = ModelConfig.preset("olmoe-1b-7b")
    size = model_size(cfg)
    with torch.device("meta"):
        theirs = transformers.OlmoeForCausalLM(transformers.OlmoeConfig(
            vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16, num_attention_heads=16,
            num_experts=64, num_experts_per_tok=8))  # fmt: skip
    assert size.total == sum(p.numel() for p in theirs.parameters())
    assert round(size.total / 1e9, 3) == 6.919
    assert round(size.active / 1e9, 3) == 1.282  # every parameter a token's forward uses: k of E experts


def test_dense_configs_are_unchanged_and_moe_options_are_checked():
    dense = ModelConfig.preset("tiny")
    assert not dense.is_moe and model_size(dense).active == model_size(dense).total
    with pytest.raises(ConfigError, match=r"moe_top_k: must be between 1 and moe_num_experts=4, got 5"):
        small(moe_num_experts=4, moe_top_k=5)
    with pytest.raises(ConfigError, match="moe_num_experts"):
        small(moe_num_experts=-1)
    moe = small()
    assert moe.weight_differences(ModelConfig(**{**moe.to_dict(), "moe_num_experts": 0})) == ["moe_num_experts",
                                                                                              "moe_hidden"]  # fmt: skip


@pytest.mark.parametrize("case", ["olmoe", "flexolmo"])
def test_greedy_generation_with_the_kv_cache_equals_transformers(case):
    from lmforge.model.generate import generate

    cfg = small(**CASES[case])
    ours, theirs = same_weights(cfg, 2)
    prompt = torch.randint(2, VOCAB, (2, 7))
    with torch.no_grad():
        mine = generate(ours, prompt, 12, vocab_size=VOCAB)
        hf = theirs.generate(prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12,
                             attention_mask=torch.ones_like(prompt))  # fmt: skip
    assert torch.equal(mine[:, : hf.shape[1]], hf)


@pytest.mark.parametrize("case", ["olmoe", "flexolmo-norm-topk-gqa", "olmoe-gqa-tied"])
def test_export_loads_in_transformers_and_round_trips_bit_exactly(tmp_path, case):
    """export → from_pretrained (their class, their logits) → save_pretrained → import: every
    tensor comes back bit for bit, under per-expert keys on disk."""
    import json

    from safetensors import safe_open

    from lmforge.model.hf import from_hf, import_hf, to_hf

    torch.manual_seed(3)
    cfg = small(**CASES[case])
    ours = Transformer(cfg).eval()
    to_hf(ours, tmp_path / "hf", eos_token_id=1, pad_token_id=0)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    expected = "OlmoeForCausalLM" if cfg.norm_placement == "pre" else "FlexOlmoForCausalLM"
    assert config["architectures"] == [expected]
    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as f:
        assert "model.layers.1.mlp.experts.5.down_proj.weight" in f.keys()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == expected
    tokens = torch.randint(0, VOCAB, (2, 29))
    with torch.no_grad():
        assert (ours(tokens) - theirs(tokens).logits).abs().max().item() < 1e-5
    theirs.save_pretrained(tmp_path / "saved")
    back = from_hf(tmp_path / "saved")
    assert back.cfg.resolved() == cfg.resolved() | {"vocab_multiple": back.cfg.vocab_multiple,
                                                    "vocab_size": back.cfg.vocab_size,
                                                    "max_seq_len": back.cfg.max_seq_len}  # fmt: skip
    mine, again = ours.state_dict(), back.state_dict()
    assert mine.keys() == again.keys()
    assert all(torch.equal(mine[k], again[k]) for k in mine)
    import_hf(tmp_path / "saved", tmp_path / "imported")
    assert (tmp_path / "imported" / "model.safetensors").exists()


def test_a_dense_checkpoint_does_not_load_into_an_moe_config(tmp_path):
    from lmforge.errors import LmforgeError
    from lmforge.model.io import assign_weights

    dense = Transformer(small(moe_num_experts=0))
    with pytest.raises(LmforgeError) as e:
        assign_weights(small(), dense.state_dict(), where="ckpt")
    assert "\n" not in str(e.value) and "mlp" in str(e.value)


def test_flops_count_active_parameters():
    from lmforge.model.size import flops_per_token

    cfg = small()
    size = model_size(cfg)
    per_layer = 3 * cfg.d_model * cfg.expert_hidden * cfg.moe_num_experts
    assert size.inactive == cfg.n_layers * per_layer * (cfg.moe_num_experts - cfg.moe_top_k) // cfg.moe_num_experts
    assert flops_per_token(cfg, 64) == 6 * (size.non_embedding - size.inactive) + 12 * cfg.n_layers * cfg.d_model * 64


@pytest.mark.slow
def test_per_block_compile_takes_moe_blocks(one_thread):
    """torch.compile per block (not fullgraph for MoE: the expert loop runs outside the graph)
    gives the eager model's loss, auxiliary losses and gradients."""
    from lmforge.parallel.compile import apply_compile

    torch.manual_seed(0)
    cfg = small(n_layers=1)
    eager, compiled = Transformer(cfg), Transformer(cfg)
    compiled.load_state_dict(eager.state_dict())
    apply_compile(compiled)
    tokens = torch.randint(0, VOCAB, (2, 32))
    a, b = eager(tokens, targets=tokens), compiled(tokens, targets=tokens)
    (a.ce + a.lb + a.router_z).backward()
    (b.ce + b.lb + b.router_z).backward()
    for x, y in ((a.ce, b.ce), (a.lb, b.lb), (a.router_z, b.router_z)):
        assert torch.allclose(x, y, rtol=1e-5)
    for p, q in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-5)


def test_a_folder_missing_an_expert_names_it(tmp_path):
    from safetensors.torch import load_file, save_file

    from lmforge.errors import LmforgeError
    from lmforge.model.hf import from_hf, to_hf

    to_hf(Transformer(small()), tmp_path / "hf", eos_token_id=1, pad_token_id=0)
    tensors = load_file(tmp_path / "hf" / "model.safetensors")
    del tensors["model.layers.1.mlp.experts.3.up_proj.weight"]
    save_file(tensors, tmp_path / "hf" / "model.safetensors")
    with pytest.raises(LmforgeError, match=r"model\.layers\.1\.mlp\.experts\.3\.up_proj\.weight is missing \(expert 3 of layer 1\)"):
        from_hf(tmp_path / "hf")


def test_export_of_an_moe_layout_transformers_cannot_hold_names_the_field(tmp_path):
    from lmforge.errors import LmforgeError
    from lmforge.model.hf import check_exportable

    for placement, target in (("pre", "OlmoeForCausalLM"), ("reordered", "FlexOlmoForCausalLM")):
        with pytest.raises(LmforgeError, match=rf"^model.qk_norm=false cannot be exported to transformers' {target}"):
            check_exportable(small(qk_norm=False, norm_placement=placement))
