"""The GPU path (skipped without CUDA): bf16 through FSDP's mixed-precision policy on a one-rank
group, per-block compile, fused AdamW, the fused loss in bf16. Compared with the fp32 CPU run of
the same config, which the other tests tie to transformers and to multi-rank runs."""

import json

import pytest
import torch

from lmforge.data.dataset import IGNORE_INDEX
from lmforge.model.loss import linear_cross_entropy, lm_loss
from lmforge.train.config import RunConfig
from lmforge.train.trainer import Trainer

pytestmark = pytest.mark.gpu


def config(token_data, run_dir, device, **parallel):
    return RunConfig.from_dict({
        "model": {"vocab_size": 512, "d_model": 128, "n_layers": 2, "n_heads": 4, "mlp_hidden": 256},
        "data": {"train": [str(token_data / "train")], "validation": [str(token_data / "val")], "seq_len": 64},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "trainer": {"run_dir": str(run_dir), "batch_tokens": 1024, "micro_batch_size": 8, "max_steps": 6,
                    "eval_every": 3, "checkpoint_every": 3},
        "parallel": {"device": device, **parallel},
    })


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r], rows


@pytest.mark.parametrize("compile_blocks", [False, True], ids=["eager", "compiled"])
def test_bf16_fsdp_training_follows_the_fp32_cpu_run(token_data, tmp_path, compile_blocks):
    cpu = Trainer(config(token_data, tmp_path / "cpu", "cpu"))
    cpu.fit()
    gpu = Trainer(config(token_data, tmp_path / "gpu", "cuda", compile=compile_blocks))
    try:
        gpu.fit()
        assert next(gpu.module.model.parameters()).dtype == torch.float32  # fp32 master weights
    finally:
        gpu.close()
    cpu_losses, _ = losses(tmp_path / "cpu")
    gpu_losses, rows = losses(tmp_path / "gpu")
    assert gpu_losses == pytest.approx(cpu_losses, rel=2e-2)  # bf16 compute
    assert all(r["peak_mem_gib"] > 0 and r["tokens_per_s"] > 0 for r in rows if "loss" in r)


def test_fused_loss_in_bf16_matches_materialised_logits():
    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(4096, 256, device="cuda", generator=g).bfloat16().requires_grad_()
    weight = (torch.randn(50_000, 256, device="cuda", generator=g) * 0.05).bfloat16().requires_grad_()
    targets = torch.randint(0, 50_000, (4096,), device="cuda", generator=g)
    targets[::7] = IGNORE_INDEX
    fused = linear_cross_entropy(hidden, weight, targets, z_loss_weight=1e-4, chunk_tokens=1000)
    (fused.ce + fused.z).backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    plain = lm_loss(hidden @ weight.T, targets, z_loss_weight=1e-4, reduction="sum")
    (plain.ce + plain.z).backward()
    torch.testing.assert_close(fused.ce, plain.ce, rtol=1e-3, atol=0)
    torch.testing.assert_close(fused.z, plain.z, rtol=1e-3, atol=0)
    torch.testing.assert_close(grads[0].float(), hidden.grad.float(), rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(grads[1].float(), weight.grad.float(), rtol=2e-2, atol=1e-3)


def test_the_straggler_clock_times_the_blocks_gpu_work():
    """On GPU the blocks' forward is timed with CUDA events (the call only queues the work)."""
    from lmforge.train.stragglers import BlockClock

    blocks = torch.nn.ModuleList([torch.nn.Linear(4096, 4096) for _ in range(2)]).cuda()
    clock = BlockClock(blocks, torch.device("cuda"))
    x = torch.randn(4096, 4096, device="cuda")
    for block in blocks:
        x = block(x)
    seconds = clock.take()
    assert 0 < seconds < 10 and clock.take() == 0.0
