"""The mixture-of-experts MLP (OLMoE): a router picks k of E SwiGLU experts for each token.

    logits = x · routerᵀ                      (N, E), in fp32 whatever the model's dtype
    p      = softmax(logits)                  over all E experts
    w, e   = top-k(p)                         (N, k); w / Σw only with `moe_norm_topk_prob`
    y      = Σ_j w_j · expert_{e_j}(x)        expert(x) = down(silu(gate(x)) * up(x))

This is transformers' `OlmoeSparseMoeBlock` (and FlexOlmo's, the same MLP in an OLMo 2 block).
Dispatch is dropless: every token reaches all its k experts, whatever the imbalance. The N·k
(token, expert) assignments are sorted by expert, so each expert runs once on one contiguous
slice of rows, and the weighted results are added back to their tokens in one `index_add_`.
Experts are stacked (E, …) parameters of one `Experts` module, the layout expert parallelism
shards along E; each expert's gate and up projections are one (2H, D) matrix, gate rows first,
as in transformers.

Two auxiliary losses come with each forward (`RouterStats`), as OLMo-core and megablocks define
them, per layer:
* load balancing  (E/k) · Σ_e f_e · P_e, with f_e the share of tokens routed to expert e
  (Σ_e f_e = k) and P_e the mean router probability of e: 1 at perfect balance. transformers'
  `load_balancing_loss_func` on one layer's raw router logits is k times this.
* router z-loss   mean over tokens of logsumexp(logits)².
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.config import ModelConfig


class RouterStats(NamedTuple):
    """What one MoE layer's router did on a forward (means over its N tokens)."""

    lb: torch.Tensor
    """Load-balancing loss of this layer, (E/k)·Σ f_e·P_e: 1 at perfect balance."""
    z: torch.Tensor
    """Router z-loss of this layer: mean logsumexp(logits)²."""
    counts: torch.Tensor
    """(E,) tokens routed to each expert (Σ = N·k), for the per-expert share in the metrics."""


def route(logits: torch.Tensor, top_k: int, norm_topk_prob: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probabilities (N, E), top-k weights (N, k), top-k experts (N, k)) of fp32 router logits."""
    probs = logits.softmax(dim=-1)
    weights, experts = probs.topk(top_k, dim=-1)
    if norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return probs, weights, experts


def router_stats(logits: torch.Tensor, probs: torch.Tensor, experts: torch.Tensor) -> RouterStats:
    """The auxiliary losses of one layer from its router's logits, probabilities and choices."""
    n, n_experts = probs.shape
    top_k = experts.shape[-1]
    counts = torch.bincount(experts.reshape(-1), minlength=n_experts)
    share = counts.to(probs.dtype) / max(n, 1)  # f_e, sums to k; not differentiable (a count)
    lb = n_experts / top_k * (share * probs.mean(dim=0)).sum()
    z = torch.logsumexp(logits, dim=-1).pow(2).mean()
    return RouterStats(lb, z, counts)


class Experts(nn.Module):
    """E SwiGLU experts as stacked (E, …) weights, run on rows already grouped by expert.

    Under expert parallelism (`lmforge.parallel.ep`) a rank holds experts `first` …
    `first + len − 1` only, and `exchange` carries each expert's rows to the rank holding it
    and the results back; `grad_scale` then corrects the expert gradients' scale (see there)."""

    expert_parallel = True  # what `lmforge.parallel.ep` looks for: its parameters are (E, …) stacks

    def __init__(self, n_experts: int, d_model: int, hidden: int, device=None):
        super().__init__()
        # Gate and up projections of each expert stacked in one (2H, D) matrix: one matmul per
        # expert instead of two (transformers' OLMoE stores them the same way, gate first).
        self.w_gate_up = nn.Parameter(torch.empty(n_experts, 2 * hidden, d_model, device=device))
        self.w_down = nn.Parameter(torch.empty(n_experts, d_model, hidden, device=device))
        self.first = 0
        self.exchange: Callable | None = None
        self.grad_scale = 1.0

    def forward(self, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """`rows` (N·k, D) sorted by expert, `counts` (E,) rows per expert (all E experts)."""
        if self.exchange is not None:
            return self.exchange(rows, counts, self.run_local)
        return self.run_local(rows, counts)

    def run_local(self, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Each of this module's experts on its contiguous slice of `rows`. Empty slices run
        too: every expert weight then has a gradient on every rank, as FSDP's reduction needs."""
        w_gate_up, w_down = self.w_gate_up, self.w_down
        if self.grad_scale != 1.0:
            w_gate_up, w_down = ScaleGrad.apply(w_gate_up, self.grad_scale), ScaleGrad.apply(w_down, self.grad_scale)
        out = []
        for e, rows_e in enumerate(rows.split(counts.tolist())):
            gate, up = F.linear(rows_e, w_gate_up[e]).chunk(2, dim=-1)
            out.append(F.linear(F.silu(gate) * up, w_down[e]))
        return torch.cat(out)


class ScaleGrad(torch.autograd.Function):
    """The identity forward; gradients times `scale` backward."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class MoE(nn.Module):
    """Top-k routed SwiGLU experts. `stats` holds the `RouterStats` of the last forward: the
    model reads it right after the blocks to add the auxiliary losses (and a recomputation under
    activation checkpointing writes the same values again)."""

    def __init__(self, cfg: ModelConfig, device=None):
        super().__init__()
        E, D, H = cfg.moe_num_experts, cfg.d_model, cfg.expert_hidden
        self.top_k, self.norm_topk_prob = cfg.moe_top_k, cfg.moe_norm_topk_prob
        self.router = nn.Linear(D, E, bias=False, device=device)
        self.experts = Experts(E, D, H, device=device)
        self.stats: RouterStats | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        h = x.reshape(-1, shape[-1])  # (N, D)
        logits = F.linear(h.float(), self.router.weight.float())  # (N, E)
        probs, weights, experts = route(logits, self.top_k, self.norm_topk_prob)
        self.stats = router_stats(logits, probs, experts)
        flat = experts.reshape(-1)  # (N·k,): assignment j is token j // k
        order = flat.argsort(stable=True)  # assignments grouped by expert, tokens in order within one
        token = order // self.top_k
        # index_select, not h[token]: its backward is an index_add_, several times faster on
        # CPU than the accumulating index_put that advanced indexing's backward runs
        rows = self.run_experts(h.index_select(0, token), self.stats.counts)  # (N·k, D)
        rows = rows * weights.reshape(-1).index_select(0, order)[:, None].to(rows.dtype)
        return torch.zeros_like(h).index_add_(0, token, rows).view(shape)

    # Data-dependent slice sizes (and, with expert parallelism, collectives): compiled blocks
    # break cleanly around the whole call, the experts' FSDP hooks included.
    @torch.compiler.disable
    def run_experts(self, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return self.experts(rows, counts)
