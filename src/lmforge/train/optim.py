"""AdamW with one parameter group per kind of parameter, and the learning-rate schedules.

The groups (embedding, hidden, head, norm) carry their weight decay and LR multiplier from
`lmforge.model.parametrization`: OLMo 2 decays weight matrices only, and µP scales hidden
matrices' LR by 1/width_mult.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmforge.model.config import ModelConfig
from lmforge.model.parametrization import optimizer_groups
from lmforge.train.config import OptimConfig


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, model_cfg: ModelConfig, *, fused: bool = False
) -> torch.optim.Optimizer:
    """AdamW over `model` (built from `model_cfg`); `fused` (one kernel for all parameters) on
    GPU, the foreach version on CPU."""
    groups = optimizer_groups(model, model_cfg, weight_decay_base=cfg.weight_decay,
                              decay_embeddings=cfg.embedding_weight_decay)
    return torch.optim.AdamW(
        groups,
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
