"""Parameter counts and training FLOPs per token, used for model cards and MFU.

Counts come from the real module built on the 'meta' device (no memory is allocated), so
they can never drift from the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer


@dataclass(frozen=True)
class ModelSize:
    total: int
    """Every parameter, counting a tied embedding/head matrix once."""
    non_embedding: int
    """All but the input embedding table. The output head counts (it is a real matmul);
    with tied embeddings the shared matrix is counted here as the head."""
    inactive: int = 0
    """MoE: the expert parameters a token does not use (E - k of each layer's E experts)."""

    @property
    def active(self) -> int:
        """The parameters one token's forward uses (OLMoE-1B-7B: 1.28B of 6.92B); = total if dense."""
        return self.total - self.inactive

    @property
    def active_non_embedding(self) -> int:
        return self.non_embedding - self.inactive


def model_size(cfg: ModelConfig) -> ModelSize:
    model = Transformer(cfg, device="meta")
    total = sum(p.numel() for p in model.parameters())
    embedding = model.embed.weight.numel()
    non_embedding = total - embedding + (embedding if cfg.tie_embeddings else 0)
    inactive = 0
    if cfg.is_moe:
        per_layer = sum(p.numel() for p in model.blocks[0].mlp.experts.parameters())
        inactive = cfg.n_layers * per_layer * (cfg.moe_num_experts - cfg.moe_top_k) // cfg.moe_num_experts
    return ModelSize(total=total, non_embedding=non_embedding, inactive=inactive)


def flops_per_token(cfg: ModelConfig, seq_len: int, size: ModelSize | None = None) -> int:
    """Training (forward + backward) FLOPs per token: 6·N_non-embedding + 12·L·D·T, with N the
    *active* parameters of an MoE model (a token runs k of the E experts; the router counts).

    6N covers every weight matmul (2 forward, 4 backward); 12·L·D·T covers the two attention
    matmuls (QKᵀ and AV) over a T-token context, counted without causal sparsity, which is
    the convention of PaLM, OLMo-core and torchtitan so MFU figures are comparable.
    """
    size = size or model_size(cfg)
    return 6 * size.active_non_embedding + 12 * cfg.n_layers * cfg.d_model * seq_len


def describe(cfg: ModelConfig, seq_len: int | None = None) -> dict[str, int | float]:
    """A JSON-friendly summary: sizes and FLOPs/token at `seq_len` (default max_seq_len)."""
    seq_len = seq_len or cfg.max_seq_len
    size = model_size(cfg)
    return {
        "params_total": size.total,
        "params_non_embedding": size.non_embedding,
        **({"params_active": size.active, "experts": cfg.moe_num_experts, "experts_per_token": cfg.moe_top_k}
           if cfg.is_moe else {}),
        "padded_vocab_size": cfg.padded_vocab_size,
        "seq_len": seq_len,
        "train_flops_per_token": flops_per_token(cfg, seq_len, size),
    }

