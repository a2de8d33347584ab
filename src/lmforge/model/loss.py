"""Language-model loss: token cross-entropy plus the z-loss OLMo 2 uses for stability."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from lmforge.data.dataset import IGNORE_INDEX  # targets are made in the data layer, which owns the constant


class LossParts(NamedTuple):
    ce: torch.Tensor
    """Cross-entropy, summed or averaged over counted tokens (see `reduction`)."""
    z: torch.Tensor
    """z-loss weight · logsumexp(logits)², reduced the same way (0 when the weight is 0)."""
    n_tokens: torch.Tensor
    """Number of counted (non-ignored) target tokens."""
    lb: torch.Tensor | None = None
    """MoE: load-balancing loss (mean over layers) × n_tokens, so it sums like `ce`; None if dense."""
    router_z: torch.Tensor | None = None
    """MoE: router z-loss (mean over layers) × n_tokens; None if dense."""
    expert_counts: torch.Tensor | None = None
    """MoE: (layers, experts) tokens routed to each expert; None if dense."""


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


class _LinearCrossEntropy(torch.autograd.Function):
    """Σ CE + Σ z-loss of `hidden @ weight.T`, a chunk of tokens at a time, gradients included.

    The full fp32 logits (N, V) are the largest tensor of a small-model step (N=16k tokens ×
    V=100k ids × 4 bytes = 6.4 GB, plus as much again for their gradient). Here only one
    chunk's (C, V) exists at a time, and since the loss is a sum of per-token terms, each
    chunk's gradient is final as soon as its logits are: forward computes it in the same
    pass and backward is only a scale by the incoming gradient.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, z_loss_weight, chunk_tokens, grad_enabled):
        # hidden (N, D), weight (V, D), targets (N,)
        # needs_input_grad says True even under no_grad, hence the grad_enabled flag from outside.
        need_h = grad_enabled and ctx.needs_input_grad[0]
        need_w = grad_enabled and ctx.needs_input_grad[1]
        w = weight.to(hidden.dtype)  # matmuls in the input dtype (a no-op when they agree)
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32 (fp64 only for gradcheck)
        ce = torch.zeros((), dtype=acc, device=hidden.device)
        z = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None  # (N, D), hidden's dtype
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None  # (V, D)
        for start in range(0, hidden.shape[0], chunk_tokens):
            h = hidden[start : start + chunk_tokens]  # (C, D)
            t = targets[start : start + chunk_tokens]  # (C,)
            counted = t != IGNORE_INDEX
            safe_t = torch.where(counted, t, 0)  # ignored rows gather id 0, then are masked out
            logits = (h @ w.T).to(acc)  # (C, V) fp32: the peak extra memory
            target_logit = logits.gather(1, safe_t[:, None]).squeeze(1)  # (C,)
            # logsumexp by hand, so exp runs once and its result becomes the softmax below:
            # every pass over the (C, V) buffer is in place (amax, sub, exp, sum, scale).
            peak = logits.amax(dim=-1, keepdim=True)  # (C, 1)
            probs = logits.sub_(peak).exp_()  # (C, V) exp(logits - max)
            total = probs.sum(dim=-1)  # (C,)
            lse = peak.squeeze(1) + total.log()  # (C,), the only reduction over V
            ce += torch.where(counted, lse - target_logit, 0.0).sum()
            if z_loss_weight:
                z += z_loss_weight * torch.where(counted, lse.square(), 0.0).sum()
            if not (need_h or need_w):
                continue
            # d(ce + z)/dlogits = softmax·(1 + 2·w·lse) − onehot(target), zero on ignored rows.
            scale = torch.where(counted, (1.0 + 2.0 * z_loss_weight * lse) / total, 0.0)  # (C,)
            dlogits = probs.mul_(scale[:, None])  # (C, V), still the same buffer
            rows = torch.arange(len(t), device=t.device)
            dlogits[rows, safe_t] -= counted.to(acc)  # ignored rows subtract 0 at id 0
            dlogits = dlogits.to(hidden.dtype)  # the backward matmuls run in the input dtype too
            if need_h:
                torch.mm(dlogits, w, out=grad_h[start : start + chunk_tokens])  # (C, D)
            if need_w:
                if dlogits.dtype == acc:
                    grad_w.addmm_(dlogits.T, h)  # (V, D), summed over chunks in place
                else:
                    grad_w += dlogits.T @ h  # bf16 matmul, summed over chunks in fp32
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(ce, z)
        return ce + z, ce, z

    @staticmethod
    def backward(ctx, grad_total, _grad_ce, _grad_z):
        grad_h, grad_w = ctx.saved_tensors
        if grad_h is not None:
            grad_h = (grad_h.to(grad_total.dtype) * grad_total).to(grad_h.dtype)  # scale in fp32, round once
        if grad_w is not None:
            grad_w = (grad_w * grad_total).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    z_loss_weight: float = 0.0,
    chunk_tokens: int = 4096,
) -> LossParts:
    """`lm_loss(hidden @ weight.T, targets, z_loss_weight=…, reduction="sum")` without the logits.

    `hidden` (..., D) are the final hidden states (after the final norm), `weight` (V, D) the
    output head, `targets` (...) already shifted. Never holds more than `chunk_tokens` × V fp32
    logits; gradients are computed during the forward pass (see `_LinearCrossEntropy`), so a
    forward under grad mode costs about as much as forward + backward of the plain version.

    Returns sums over counted tokens, as `lm_loss(reduction="sum")`. Autograd: `ce + z` has the
    gradient of the whole loss, and that is the only sum to backpropagate. To get it, `z` is
    detached and `ce` carries the gradient of ce + z (its value is exactly the cross-entropy:
    `total - total.detach()` adds 0). So `ce.backward()` alone would include the z-loss gradient.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
    hidden_2d = hidden.reshape(-1, hidden.shape[-1])  # (N, D); autograd reshapes grad_hidden back
    targets = targets.reshape(-1)  # (N,)
    total, ce, z = _LinearCrossEntropy.apply(
        hidden_2d, weight, targets, float(z_loss_weight), int(chunk_tokens), torch.is_grad_enabled()
    )
    ce = ce + (total - total.detach())  # value: ce; gradient: that of ce + z
    return LossParts(ce, z, (targets != IGNORE_INDEX).sum())
