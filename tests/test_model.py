"""Model structure: presets against published sizes, FLOPs against PyTorch's counter, init, loss."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lmforge.model import ModelConfig, flops_per_token, lm_loss, model_size
from lmforge.model.transformer import RMSNorm
from lmforge.model.transformer import Transformer


@pytest.mark.parametrize(
    "preset, published_billions, digits",
    [("olmo2-1b", 1.48, 2), ("olmo2-7b", 7.30, 2), ("olmo2-13b", 13.7, 1)],
)
def test_presets_match_published_olmo2_sizes(preset, published_billions, digits):
    cfg = ModelConfig.preset(preset)
    assert cfg.padded_vocab_size == 100_352
    size = model_size(cfg)  # built on the meta device: a 13B count allocates nothing
    assert round(size.total / 1e9, digits) == published_billions
    assert size.total - size.non_embedding == 100_352 * cfg.d_model


def test_meta_build_allocates_nothing():
    model = Transformer(ModelConfig.preset("olmo2-13b"), device="meta")
    assert all(p.is_meta for p in model.parameters())


def test_vocab_padding_and_gqa_shapes():
    cfg = ModelConfig(vocab_size=300, d_model=64, n_layers=1, n_heads=8, n_kv_heads=2, mlp_hidden=96)
    model = Transformer(cfg)
    assert model.embed.weight.shape == (384, 64)
    assert model.blocks[0].attn.wk.weight.shape == (2 * 8, 64)
    assert model.blocks[0].attn.k_norm.weight.shape == (16,)  # QK-norm over the whole k projection
    assert model(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, 384)


def test_flops_per_token_matches_pytorch_flop_counter():
    """6N + 12·L·D·T against torch's own count of a real forward+backward."""
    cfg = ModelConfig(vocab_size=512, d_model=64, n_layers=3, n_heads=4, mlp_hidden=160)
    model = Transformer(cfg)
    B, T = 2, 64
    ids = torch.randint(0, 512, (B, T))
    # The math backend runs attention as visible matmuls, which the counter can see.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
    measured = counter.get_total_flops() / (B * T)
    norm_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, RMSNorm))
    # The counter sees matmuls only: norms (in N, but elementwise) are the whole difference.
    assert measured == flops_per_token(cfg, T) - 6 * norm_params


def test_init_is_truncated_normal_and_norms_are_one():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=1024, d_model=128, n_layers=2, n_heads=4, mlp_hidden=256)
    model = Transformer(cfg)
    for name, p in model.named_parameters():
        if "norm" in name:
            assert torch.all(p == 1), name
        else:
            assert p.abs().max() <= 3 * cfg.init_std, name
            assert abs(p.std().item() - cfg.init_std * 0.986) < 0.002, name  # std of N truncated at ±3σ


def test_meta_then_materialise_equals_direct_build():
    """The FSDP path (build on meta, to_empty, init_weights) gives the same model."""
    cfg = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, mlp_hidden=96)
    torch.manual_seed(7)
    direct = Transformer(cfg)
    lazy = Transformer(cfg, device="meta").to_empty(device="cpu")
    torch.manual_seed(7)
    lazy.init_weights()
    ids = torch.randint(0, 256, (1, 9))
    torch.testing.assert_close(lazy(ids), direct(ids), atol=0, rtol=0)


def test_z_loss_and_sum_reduction():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11) * 3
    targets = torch.randint(0, 11, (2, 5))
    targets[1, 2] = -100
    mean = lm_loss(logits, targets, z_loss_weight=1e-4)
    total = lm_loss(logits, targets, z_loss_weight=1e-4, reduction="sum")
    keep = targets != -100
    lse = torch.logsumexp(logits, -1)[keep]
    assert mean.n_tokens == 9
    torch.testing.assert_close(mean.z, 1e-4 * lse.pow(2).mean())
    torch.testing.assert_close(total.ce / 9, mean.ce)
    torch.testing.assert_close(mean.ce, F.cross_entropy(logits[keep], targets[keep]))
