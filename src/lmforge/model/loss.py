"""Language-model loss: token cross-entropy plus the z-loss OLMo 2 uses for stability."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
"""Target value whose position contributes nothing (transformers' and PyTorch's convention)."""


class LossParts(NamedTuple):
    ce: torch.Tensor
    """Cross-entropy, summed or averaged over counted tokens (see `reduction`)."""
    z: torch.Tensor
    """z-loss weight · logsumexp(logits)², reduced the same way (0 when the weight is 0)."""
    n_tokens: torch.Tensor
    """Number of counted (non-ignored) target tokens."""


def lm_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    z_loss_weight: float = 0.0,
    reduction: str = "mean",
) -> LossParts:
    """Loss of `logits` (B, T, V) against already-shifted `targets` (B, T).

    `reduction="sum"` is what gradient accumulation needs: sum every micro-batch, then divide
    by the tokens of the whole batch, so short micro-batches are not over-weighted.
    Logits are upcast to fp32, as a bf16 softmax over 100k ids loses precision.
    """
    logits = logits.float().flatten(0, -2)  # (B·T, V)
    targets = targets.flatten()  # (B·T,)
    counted = targets != IGNORE_INDEX
    n_tokens = counted.sum()
    ce = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    if z_loss_weight:
        lse = torch.logsumexp(logits, dim=-1)
        z = z_loss_weight * (lse.pow(2) * counted).sum()
    else:
        z = torch.zeros((), device=logits.device)
    if reduction == "mean":
        denom = n_tokens.clamp(min=1)
        ce, z = ce / denom, z / denom
    elif reduction != "sum":
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return LossParts(ce, z, n_tokens)
