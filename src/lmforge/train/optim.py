"""AdamW with OLMo 2's parameter groups, and the learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from lmforge.train.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices only: OLMo 2 found decaying the embedding hurts, and norms are
    scales, not weights to shrink."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = name.endswith("embed.weight")
        (no_decay if p.ndim < 2 or is_embedding else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, *, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW; `fused` (one kernel for all parameters) on GPU, the foreach version on CPU."""
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=fused or None,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's LR for every group, times the group's `lr_multiplier` if it has one
    (so per-group multipliers survive the schedule)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_multiplier", 1.0)


def lr_at(step: int, max_steps: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step `step` (1-based): a pure function, so resuming needs no state."""
    warmup = min(cfg.warmup_steps, max_steps)
    if step <= warmup:
        return cfg.lr * step / max(warmup, 1)
    progress = (step - warmup) / max(max_steps - warmup, 1)  # 0 → 1 over the post-warmup steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "linear":
        return cfg.lr * (1.0 - progress)
    if cfg.schedule == "cosine":
        floor = cfg.lr * cfg.min_lr_ratio
        return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # wsd: flat at the peak, then a linear decay to 0 over the last decay_fraction of all steps.
    decay_start = max_steps - max(1, round(cfg.decay_fraction * max_steps))
    if step <= decay_start:
        return cfg.lr
    return cfg.lr * (max_steps - step) / (max_steps - decay_start)
