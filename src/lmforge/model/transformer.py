"""The OLMo 2 decoder, top to bottom.

OLMo 2 is a Llama-style decoder with three changes (OLMo 2 paper, section 3):
  1. "reordered norm": the RMSNorm is applied to each sublayer's *output* before the residual
     add, `h = x + norm(attn(x))`, instead of to its input;
  2. QK-norm: RMSNorm over the full query and key projections, before RoPE;
  3. no biases anywhere, RoPE θ = 500,000.

Two switches (`norm_placement`, `qk_norm`) turn it back into the pre-norm, no-QK-norm layout
of Llama and OLMo 0424 for ablations, and `parametrization: mup` changes init, attention
scale and an output multiplier (`lmforge.model.parametrization`); the defaults are OLMo 2.

Everything here is plain math on one device: parallelism (FSDP, compile, activation
checkpointing) wraps this module from `lmforge.parallel` and never reaches inside.
Shapes in comments: B batch, T sequence, D d_model, H heads, K kv heads, d head_dim, V vocab,
S keys attended to (cached plus new tokens) when sampling with a `KVCache`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.config import ModelConfig
from lmforge.model.loss import LossParts, linear_cross_entropy, lm_loss
from lmforge.model.moe import MoE, RouterStats
from lmforge.model.parametrization import init_std, param_kind


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 whatever the input dtype (as transformers does)."""

    def __init__(self, dim: int, eps: float, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * x).to(dtype)


# -- rotary position embedding --------------------------------------------------------------


def rope_inv_freq(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """Inverse frequencies θ^(-2i/d) for i < d/2, shape (d/2,), fp32."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    return 1.0 / (theta**exponents)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for `positions` (T,), each (T, d) in fp32.

    The half-split layout (first half of the head pairs with the second half) matches
    transformers' `rotate_half`, so HF checkpoints need no q/k permutation.
    """
    freqs = positions.float()[:, None] * inv_freq[None, :]  # (T, d/2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (T, d)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, d) by position; computed in fp32 (cos/sin are fp32), cast back."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


# -- the KV cache ---------------------------------------------------------------------------


@dataclasses.dataclass
class KVCache:
    """Keys and values of the tokens seen so far, for sampling one token at a time.

    Preallocated per layer, (B, K, max_len, d) each: keys are stored after QK-norm and RoPE,
    and before the GQA repeat, so a cache is K/H the size of the attention it feeds. `length`
    counts the tokens already written; the next forward's tokens sit at positions length,
    length + 1, … Only sampling uses it: the training path never passes a cache.
    """

    k: list[torch.Tensor]  # n_layers × (B, K, max_len, d)
    v: list[torch.Tensor]  # n_layers × (B, K, max_len, d)
    length: int = 0

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def slot(self, layer: int) -> KVSlot:
        return KVSlot(self.k[layer], self.v[layer], self.length)


class KVSlot(NamedTuple):
    """One layer's view of a `KVCache`: its buffers and where the new tokens are written."""

    k: torch.Tensor  # (B, K, max_len, d)
    v: torch.Tensor  # (B, K, max_len, d)
    start: int  # tokens already cached; T new ones go to start … start + T - 1


# -- the block ------------------------------------------------------------------------------


class Attention(nn.Module):
    """Causal self-attention with QK-norm (optional) and optional grouped-query heads."""

    def __init__(self, cfg: ModelConfig, device=None):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, q_dim, bias=False, device=device)
        self.wk = nn.Linear(cfg.d_model, kv_dim, bias=False, device=device)
        self.wv = nn.Linear(cfg.d_model, kv_dim, bias=False, device=device)
        self.wo = nn.Linear(q_dim, cfg.d_model, bias=False, device=device)
        # OLMo 2 normalises the whole projection (all heads together), not each head.
        self.q_norm = RMSNorm(q_dim, cfg.norm_eps, device=device) if cfg.qk_norm else None
        self.k_norm = RMSNorm(kv_dim, cfg.norm_eps, device=device) if cfg.qk_norm else None
        self.scale = cfg.attn_scale  # 1/sqrt(d); µP: 1/d (at the base width: 1/sqrt(d))

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The query, key and value projections of x (..., D), after QK-norm: (..., H·d), (..., K·d) ×2."""
        q, k, v = self.wq(x), self.wk(x), self.wv(x)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, cache: KVSlot | None = None
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, d)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask, is_causal = None, True
        if cache is not None:
            start, end = cache.start, cache.start + T
            cache.k[:, :, start:end], cache.v[:, :, start:end] = k, v
            k, v = cache.k[:, :, :end].to(q.dtype), cache.v[:, :, :end].to(q.dtype)  # (B, K, S, d), S = end
            if start > 0:
                # SDPA's is_causal aligns the mask top-left, which is right only for T == S. New
                # token i sits at position start + i and sees keys 0 … start + i: bottom-right.
                # One decoding token (T = 1) sees every key, so it needs no mask at all.
                is_causal = False
                if T > 1:
                    mask = torch.ones(T, end, dtype=torch.bool, device=x.device).tril(diagonal=start)  # (T, S)
        if self.n_kv_heads != self.n_heads:
            # Each kv head serves H/K consecutive query heads (what transformers' repeat_kv does).
            repeat = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           scale=self.scale)  # (B, H, T, d)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, D)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, device=None):
        super().__init__()
        self.w_gate = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False, device=device)
        self.w_up = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False, device=device)
        self.w_down = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class OLMo2Block(nn.Module):
    """Reordered-norm block: the norm sits on each sublayer's output, inside the residual
    (or, with norm_placement: pre, on its input as in Llama)."""

    def __init__(self, cfg: ModelConfig, device=None):
        super().__init__()
        self.reordered = cfg.norm_placement == "reordered"
        self.attn = Attention(cfg, device=device)
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, device=device)
        self.mlp = MoE(cfg, device=device) if cfg.is_moe else MLP(cfg, device=device)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, device=device)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, cache: KVSlot | None = None
    ) -> torch.Tensor:
        x = self.residual(x, lambda h: self.attn(h, cos, sin, cache=cache), self.attn_norm)
        return self.residual(x, self.mlp, self.mlp_norm)

    @property
    def compiles_as_one_graph(self) -> bool:
        """Whether torch.compile can take the whole block as one graph: not with MoE experts,
        whose token counts per expert are data (`MoE.run_experts` runs outside the graph)."""
        return not isinstance(self.mlp, MoE)

    def residual(self, x: torch.Tensor, sublayer, norm: RMSNorm) -> torch.Tensor:
        """x + norm(sublayer(x)) (reordered, OLMo 2) or x + sublayer(norm(x)) (pre-norm)."""
        return x + norm(sublayer(x)) if self.reordered else x + sublayer(norm(x))


# -- the model ------------------------------------------------------------------------------


class Transformer(nn.Module):
    """Token ids (B, T) → logits (B, T, padded V)."""

    def __init__(self, cfg: ModelConfig, device=None):
        super().__init__()
        self.cfg = cfg
        V = cfg.padded_vocab_size
        # Modules are created on 'meta' and materialised once below, so the weights are a pure
        # function of the RNG state at `init_weights` (no default init consumes random numbers),
        # whether the model is built directly or on 'meta' first for FSDP.
        meta = torch.device("meta")
        self.embed = nn.Embedding(V, cfg.d_model, device=meta)
        self.blocks = nn.ModuleList(OLMo2Block(cfg, device=meta) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, device=meta)
        # With tied embeddings there is no head module: logits use embed.weight directly, so
        # state dicts, optimizers and FSDP see the shared matrix exactly once.
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, V, bias=False, device=meta)
        self.logit_scale = cfg.logit_multiplier  # 1, or µP's output multiplier / width_mult
        # Not saved in checkpoints: it is a pure function of the config.
        self.register_buffer("rope_inv_freq", rope_inv_freq(cfg.head_dim, cfg.rope_theta, meta), persistent=False)
        target = torch.device(device) if device is not None else torch.get_default_device()
        if target.type != "meta":
            self.to_empty(device=target)
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """OLMo 2 init: every matrix ~ N(0, init_std) truncated at ±3σ, every norm weight 1
        (under µP hidden matrices use init_std/sqrt(width_mult): `parametrization.init_std`).

        Each parameter draws from its own generator seeded by (seed, name), so the weights do
        not depend on the order parameters are visited in or on how they are sharded: a
        sharded run initialises each full tensor this way and keeps its slice. `seed=None`
        draws the seed from torch's global RNG (so `torch.manual_seed` decides it). Also
        refills the RoPE buffer, so a model materialised with `to_empty` is usable after this.
        """
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        for name, param in self.named_parameters():
            self.init_parameter(name, param, seed)
        self.reset_buffers()

    @torch.no_grad()
    def init_parameter(self, name: str, out: torch.Tensor, seed: int) -> None:
        """Fill `out` (a plain tensor shaped like parameter `name`) with its initial value."""
        kind = param_kind(name)
        if kind == "norm":
            out.fill_(1.0)
            return
        generator = torch.Generator(device=out.device).manual_seed(param_seed(seed, name))
        std = init_std(self.cfg, kind)
        nn.init.trunc_normal_(out, 0.0, std, -3 * std, 3 * std, generator=generator)

    def reset_buffers(self) -> None:
        """Recompute the non-persistent RoPE buffer on the device of the weights (after
        `to_empty` or a `load_state_dict(assign=True)` onto a meta-built model)."""
        self.rope_inv_freq = rope_inv_freq(self.cfg.head_dim, self.cfg.rope_theta, self.embed.weight.device)

    def new_cache(
        self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None, device=None
    ) -> KVCache:
        """An empty `KVCache` for `batch` rows of up to `max_len` tokens (default: max_seq_len),
        in the dtype and on the device of the weights unless told otherwise."""
        max_len = self.cfg.max_seq_len if max_len is None else max_len
        dtype = self.embed.weight.dtype if dtype is None else dtype
        device = self.embed.weight.device if device is None else device
        shape = (batch, self.cfg.kv_heads, max_len, self.cfg.head_dim)  # (B, K, max_len, d)
        n = self.cfg.n_layers
        return KVCache(k=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(n)],
                       v=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(n)])

    def output_features(self, x: torch.Tensor) -> torch.Tensor:
        """What the head multiplies: the final norm of the last hidden states, times µP's logit
        multiplier (scaling the features scales the logits, and works for the fused loss too)."""
        x = self.norm(x)
        return x * self.logit_scale if self.logit_scale != 1.0 else x

    @property
    def head_weight(self) -> torch.Tensor:
        return self.embed.weight if self.head is None else self.head.weight  # (V, D)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        *,
        targets: torch.Tensor | None = None,
        z_loss_weight: float = 0.0,
        loss_chunk_tokens: int = 0,
        cache: KVCache | None = None,
    ) -> torch.Tensor | LossParts:
        """Logits (B, T, V), or with `targets` (B, T) the summed loss parts (nanoGPT's
        `forward(idx, targets)`): with `loss_chunk_tokens` > 0 the head, cross-entropy and
        z-loss run fused over chunks of tokens and the logits are never materialised.
        The loss is computed inside forward so that a sharded head is gathered for it.

        With a `cache` (sampling), `tokens` are the ones after the `cache.length` already
        cached: they take positions from cache.length on, attend to the cached keys and
        causally among themselves, and are appended to the cache."""
        B, T = tokens.shape
        start = 0 if cache is None else cache.length
        if cache is not None and start + T > cache.max_len:
            raise ValueError(f"KV cache overflow: {start} cached + {T} new tokens > max_len={cache.max_len}")
        if positions is None:
            positions = torch.arange(start, start + T, device=tokens.device)
        cos, sin = rope_cos_sin(positions, self.rope_inv_freq)  # (T, d) each
        x = self.embed(tokens)  # (B, T, D)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin) if cache is None else block(x, cos, sin, cache=cache.slot(i))
        if cache is not None:
            cache.length += T
        x = self.output_features(x)
        if targets is None:
            return F.linear(x, self.head_weight)  # (B, T, V)
        if loss_chunk_tokens > 0:
            parts = linear_cross_entropy(x, self.head_weight, targets, z_loss_weight=z_loss_weight,
                                         chunk_tokens=loss_chunk_tokens)
        else:
            parts = lm_loss(F.linear(x, self.head_weight), targets, z_loss_weight=z_loss_weight, reduction="sum")
        return self.with_router_losses(parts)

    def router_stats(self) -> list[RouterStats]:
        """The `RouterStats` of each MoE layer from the last forward (empty for a dense model)."""
        return [b.mlp.stats for b in self.blocks if isinstance(b.mlp, MoE) and b.mlp.stats is not None]

    def with_router_losses(self, parts: LossParts) -> LossParts:
        """`parts` with the MoE auxiliary losses: each layer's mean over this batch's tokens,
        averaged over layers, times the batch's counted tokens, so that dividing by the global
        batch's tokens (as the cross-entropy is) weights micro-batches and ranks by their tokens."""
        stats = self.router_stats()
        if not stats:
            return parts
        lb = torch.stack([s.lb for s in stats]).mean() * parts.n_tokens
        router_z = torch.stack([s.z for s in stats]).mean() * parts.n_tokens
        counts = torch.stack([s.counts for s in stats])  # (layers, E)
        return parts._replace(lb=lb, router_z=router_z, expert_counts=counts)


def param_seed(seed: int, name: str) -> int:
    """A 63-bit seed for parameter `name`: stable across processes and Python versions."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
