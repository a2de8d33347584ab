"""Optimizer groups, LR schedules and gradient accumulation."""

import math

import numpy as np
import pytest
import torch

from lmforge.model import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.train.config import OptimConfig, RunConfig
from lmforge.train.optim import build_optimizer, lr_at
from lmforge.train.trainer import Trainer


@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_weight_decay_spares_embeddings_and_norms(decay_embeddings):
    """With zero gradients AdamW only decays: what moved is exactly what is decayed."""
    model_cfg = ModelConfig(vocab_size=256, d_model=32, n_layers=1, n_heads=4, mlp_hidden=64)
    model = Transformer(model_cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=0.5, embedding_weight_decay=decay_embeddings),
                          model_cfg)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(p, before[name])
        decayed = "norm" not in name and (decay_embeddings or name != "embed.weight")
        assert moved == decayed, name
        if moved:
            torch.testing.assert_close(p, before[name] * (1 - 0.1 * 0.5))


def test_mup_groups_scale_hidden_lr_and_keep_lr_times_decay():
    """µP at width_mult 4: hidden matrices learn at lr/4 with decay ×4 (lr·wd unchanged),
    embeddings, head and norms at lr; set_lr keeps the multipliers."""
    from lmforge.train.optim import set_lr

    model_cfg = ModelConfig(vocab_size=256, d_model=64, n_layers=1, n_heads=4, mlp_hidden=128,
                            parametrization="mup", mup_base_d_model=16)
    opt = build_optimizer(Transformer(model_cfg), OptimConfig(lr=0.1, weight_decay=0.5), model_cfg)
    set_lr(opt, 0.2)
    groups = {g["name"]: g for g in opt.param_groups}
    assert sorted(groups) == ["embedding", "head", "hidden", "norm"]
    assert groups["hidden"]["lr"] == pytest.approx(0.05) and groups["hidden"]["weight_decay"] == pytest.approx(2.0)
    assert groups["head"]["lr"] == groups["embedding"]["lr"] == groups["norm"]["lr"] == pytest.approx(0.2)
    assert groups["head"]["weight_decay"] == 0.5 and groups["embedding"]["weight_decay"] == 0.0


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd", "constant"])
def test_schedules(schedule):
    cfg = OptimConfig(lr=1.0, warmup_steps=10, schedule=schedule, min_lr_ratio=0.1, decay_fraction=0.2)
    lrs = [lr_at(s, 100, cfg) for s in range(1, 101)]
    assert lrs[:10] == pytest.approx([s / 10 for s in range(1, 11)])  # linear warmup to the peak
    assert all(a >= b - 1e-12 for a, b in zip(lrs[9:], lrs[10:]))  # never rises after warmup
    end = {"cosine": 0.1, "linear": 0.0, "wsd": 0.0, "constant": 1.0}[schedule]
    assert lrs[-1] == pytest.approx(end)
    if schedule == "cosine":
        assert lr_at(55, 100, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    if schedule == "wsd":
        assert lrs[79] == 1.0 and lrs[80] < 1.0  # stable for 80 steps, then the last 20 % decays


def test_micro_batching_does_not_change_the_step(token_data, tmp_path):
    """Accumulating 4 micro-batches of 2 equals one pass over all 8 instances."""

    def one_step(micro):
        cfg = RunConfig.from_dict({
            "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_hidden": 128},
            "data": {"train": [str(token_data / "train")], "seq_len": 64},
            "trainer": {"run_dir": str(tmp_path / f"m{micro}"), "batch_tokens": 512, "micro_batch_size": micro,
                        "max_steps": 1},
        })
        module = Trainer(cfg, callbacks=[]).module
        # Keep the accumulated (clipped) gradients for comparison: Adam's first step is ~lr·sign(g),
        # which would turn rounding-level differences of tiny gradients into visible ones.
        module.optimizer.step = lambda: None
        module.optimizer.zero_grad = lambda set_to_none=True: None
        batch = Trainer(cfg, callbacks=[]).dataset.batch(np.arange(8))
        metrics = module.train_batch(batch, lr=1e-3)
        return metrics, module.model

    (m8, model8), (m2, model2) = one_step(8), one_step(2)
    torch.testing.assert_close(m2["loss"], m8["loss"], rtol=1e-6, atol=0)
    torch.testing.assert_close(m2["grad_norm"], m8["grad_norm"], rtol=1e-5, atol=0)
    for (name, a), (_, b) in zip(model8.named_parameters(), model2.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_fused_adamw_runs_on_cpu_and_equals_the_unfused_one():
    """The GPU path's fused AdamW (one kernel for all parameters) exercised on CPU."""
    cfg = ModelConfig(vocab_size=128, d_model=32, n_layers=1, n_heads=2, mlp_hidden=64)
    models = [Transformer(cfg) for _ in range(2)]
    models[0].init_weights(0)
    models[1].load_state_dict(models[0].state_dict())
    optims = [build_optimizer(m, OptimConfig(lr=1e-2), cfg, fused=fused) for m, fused in zip(models, (True, False))]
    assert optims[0].defaults["fused"] and not optims[1].defaults["fused"]
    tokens = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        for model, optim in zip(models, optims):
            model(tokens).float().logsumexp(-1).mean().backward()
            optim.step()
            optim.zero_grad()
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
