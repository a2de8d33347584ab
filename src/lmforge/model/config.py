"""The model's typed config and the named size presets.

A preset is a row in `PRESETS`, not a method: `ModelConfig.preset("olmo2-1b")`, or in
YAML ``model: {preset: olmo2-1b, n_layers: 8}`` (the other keys override the preset). The model
itself is `Transformer(cfg)`: this module knows nothing of it, so config and model import one way.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

from lmforge.config import Config, require
from lmforge.errors import ConfigError

OLMO2_TOKENIZER_VOCAB = 100_278
"""Ids produced by the OLMo 2 tokenizer (dolma2, cl100k-based); padded to 100,352."""

# Published OLMo 2 shapes (OLMo 2 paper, table 1; the HF configs of allenai/OLMo-2-*).
# The 190M row is OLMo-core's `olmo2_190M` ladder model (llama-like MLP: 8/3·d·1.5).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=128, n_layers=4, n_heads=4, mlp_hidden=384, max_seq_len=512, vocab_size=4096),
    "small": dict(d_model=256, n_layers=6, n_heads=8, mlp_hidden=768, max_seq_len=1024, vocab_size=8192),
    "olmo2-190m": dict(d_model=768, n_layers=12, n_heads=12, mlp_hidden=3072, max_seq_len=4096),
    "olmo2-1b": dict(d_model=2048, n_layers=16, n_heads=16, mlp_hidden=8192, max_seq_len=4096),
    "olmo2-7b": dict(d_model=4096, n_layers=32, n_heads=32, mlp_hidden=11008, max_seq_len=4096),
    "olmo2-13b": dict(d_model=5120, n_layers=40, n_heads=40, mlp_hidden=13824, max_seq_len=4096),
    # OLMoE-1B-7B (allenai/OLMoE-1B-7B-0924's config): pre-norm with QK-norm, 64 experts of
    # hidden 1024, 8 per token, GPT-NeoX-derived vocabulary of 50,280 ids padded to 50,304.
    "olmoe-1b-7b": dict(d_model=2048, n_layers=16, n_heads=16, mlp_hidden=1024, moe_num_experts=64, moe_top_k=8,
                        max_seq_len=4096, vocab_size=50304, rope_theta=10_000.0, norm_eps=1e-5,
                        norm_placement="pre"),
    "tiny-moe": dict(d_model=128, n_layers=4, n_heads=4, mlp_hidden=192, moe_num_experts=8, moe_top_k=2,
                     max_seq_len=512, vocab_size=4096),
}


@dataclasses.dataclass(kw_only=True)
class ModelConfig(Config):
    """Shape and numerics of an OLMo 2 decoder. Field names follow OLMo-core; `lmforge.model.hf`
    maps them to transformers' `Olmo2Config`."""

    vocab_size: int = OLMO2_TOKENIZER_VOCAB
    """Number of ids the tokenizer produces. The embedding has `padded_vocab_size` rows."""
    vocab_multiple: int = 128
    """Pad the embedding/head to a multiple of this (128 keeps matmuls tensor-core friendly)."""
    d_model: int
    """Width of the residual stream."""
    n_layers: int
    """Number of transformer blocks."""
    n_heads: int
    """Attention (query) heads; head_dim = d_model / n_heads."""
    n_kv_heads: int | None = None
    """Key/value heads for grouped-query attention; None means n_heads (plain multi-head)."""
    mlp_hidden: int
    """Hidden width of the SwiGLU MLP (each of gate and up projections)."""
    max_seq_len: int = 4096
    """Longest sequence the model is meant for (written to the HF config; RoPE itself has no limit)."""
    rope_theta: float = 500_000.0
    """RoPE base frequency."""
    norm_eps: float = 1e-6
    """Epsilon of every RMSNorm."""
    tie_embeddings: bool = False
    """Share the input embedding with the output head (OLMo 2 does not)."""
    init_std: float = 0.02
    """Std of the truncated-normal (±3σ) init of every weight matrix (at the base width, under µP)."""

    # -- architecture switches, for ablations (the defaults are OLMo 2) ------------------------
    norm_placement: Literal["reordered", "pre"] = "reordered"
    """reordered (OLMo 2): x + norm(sublayer(x)); pre (Llama, OLMo 0424): x + sublayer(norm(x))."""
    qk_norm: bool = True
    """RMSNorm over the full query and key projections before RoPE (OLMo 2); false = Llama/0424."""

    # -- mixture of experts (OLMoE; `lmforge.model.moe`) ---------------------------------------
    moe_num_experts: int = 0
    """Experts per MLP layer; 0 = a dense SwiGLU MLP (OLMo 2)."""
    moe_top_k: int = 2
    """Experts each token is routed to (OLMoE: 8 of 64)."""
    moe_hidden: int | None = None
    """Hidden width of each expert's SwiGLU; None: mlp_hidden."""
    moe_norm_topk_prob: bool = False
    """Renormalise the k chosen router probabilities to sum to 1 (OLMoE: false)."""

    # -- parametrization ------------------------------------------------------------------------
    parametrization: Literal["standard", "mup"] = "standard"
    """standard, or mup (µP, Tensor Programs V): hyperparameters tuned at mup_base_d_model carry
    over to wider models. See `lmforge.model.parametrization` for the rules."""
    mup_base_d_model: int | None = None
    """µP: the width the hyperparameters (LR, init_std) were tuned at; at this width µP equals
    standard. Assumes n_heads stays fixed as width grows (head_dim grows with it)."""
    mup_output_multiplier: float = 1.0
    """µP: logits are multiplied by this / width_mult (a tunable, like the LR, at the base width)."""

    def validate(self) -> None:
        for name in ("vocab_size", "vocab_multiple", "d_model", "n_layers", "n_heads", "mlp_hidden", "max_seq_len"):
            value = getattr(self, name)
            require(value > 0, name, f"must be a positive integer, got {value}")
        require(self.rope_theta > 0, "rope_theta", f"must be positive, got {self.rope_theta}")
        require(self.norm_eps > 0, "norm_eps", f"must be positive, got {self.norm_eps}")
        require(self.init_std > 0, "init_std", f"must be positive, got {self.init_std}")
        require(
            self.d_model % self.n_heads == 0,
            "n_heads",
            f"n_heads={self.n_heads} must divide d_model={self.d_model}; pick a divisor of {self.d_model}",
        )
        require(self.head_dim % 2 == 0, "n_heads", f"head_dim=d_model/n_heads={self.head_dim} must be even for RoPE")
        if self.n_kv_heads is not None:
            require(self.n_kv_heads > 0, "n_kv_heads", f"must be a positive integer, got {self.n_kv_heads}")
            require(
                self.n_heads % self.n_kv_heads == 0,
                "n_kv_heads",
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}",
            )
        self._validate_moe()
        self._validate_mup()

    def _validate_moe(self) -> None:
        require(self.moe_num_experts >= 0, "moe_num_experts", f"must be >= 0 (0: dense), got {self.moe_num_experts}")
        if not self.moe_num_experts:
            return
        require(1 <= self.moe_top_k <= self.moe_num_experts, "moe_top_k",
                f"must be between 1 and moe_num_experts={self.moe_num_experts}, got {self.moe_top_k}")
        require(self.moe_hidden is None or self.moe_hidden > 0, "moe_hidden",
                f"must be a positive integer (or null: mlp_hidden), got {self.moe_hidden}")

    def _validate_mup(self) -> None:
        if self.parametrization != "mup":
            return
        base = self.mup_base_d_model
        require(base is not None, "mup_base_d_model",
                "parametrization: mup needs the width its hyperparameters were tuned at; set mup_base_d_model "
                f"(e.g. the d_model of the small proxy model; {self.d_model} makes µP equal standard here)")
        assert base is not None
        require(base > 0 and base % self.n_heads == 0, "mup_base_d_model",
                f"must be a positive multiple of n_heads={self.n_heads} (heads stay fixed across widths), got {base}")
        require(self.mup_output_multiplier > 0, "mup_output_multiplier",
                f"must be positive, got {self.mup_output_multiplier}")
        require(not self.tie_embeddings, "tie_embeddings",
                "µP treats the input embedding and the output head differently (init, LR, multiplier); "
                "use tie_embeddings: false with parametrization: mup")

    # -- derived quantities --------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def width_mult(self) -> float:
        """d_model / mup_base_d_model under µP (what init, LR and logits are scaled by); 1 otherwise."""
        if self.parametrization == "mup" and self.mup_base_d_model:
            return self.d_model / self.mup_base_d_model
        return 1.0

    @property
    def attn_scale(self) -> float:
        """Multiplier of q·k in attention. Standard: 1/sqrt(head_dim). µP: 1/head_dim, written as
        sqrt(base_head_dim)/head_dim so that it equals standard at the base width."""
        if self.parametrization == "mup" and self.mup_base_d_model:
            return math.sqrt(self.mup_base_d_model // self.n_heads) / self.head_dim
        return 1.0 / math.sqrt(self.head_dim)

    @property
    def logit_multiplier(self) -> float:
        """Multiplier of the output logits: µP's output_multiplier / width_mult; 1 otherwise."""
        if self.parametrization == "mup":
            return self.mup_output_multiplier / self.width_mult
        return 1.0

    @property
    def expert_hidden(self) -> int:
        """Hidden width of one expert (an MoE model's moe_hidden, defaulting to mlp_hidden)."""
        return self.moe_hidden or self.mlp_hidden

    @property
    def is_moe(self) -> bool:
        return self.moe_num_experts > 0

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset (see `PRESETS`), with fields overridden by keyword."""
        return cls.from_dict({"preset": name, **overrides})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "") -> ModelConfig:
        """Like `Config.from_dict`, plus an optional ``preset`` key whose shape the others override."""
        data = dict(data)
        name = data.pop("preset", None)
        if name is not None:
            if name not in PRESETS:
                raise ConfigError(
                    f"{where}preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}"
                )
            data = {**PRESETS[name], **data}
        return super().from_dict(data, where=where)

    def resolved(self) -> dict[str, Any]:
        """`to_dict()` with defaults that stand for another field spelled out (n_kv_heads: None
        is n_heads), so two spellings of one model compare equal."""
        return {**self.to_dict(), "n_kv_heads": self.kv_heads, "moe_hidden": self.expert_hidden if self.is_moe else None}

    def weight_differences(self, other: ModelConfig) -> list[str]:
        """Fields of `WEIGHT_FIELDS` on which `other` holds tensors of other names or shapes
        (the vocabulary compared padded: the embedding's rows)."""
        mine, theirs = self.resolved(), other.resolved()
        differ = [k for k in WEIGHT_FIELDS if k != "vocab_size" and mine[k] != theirs[k]]
        return (["vocab_size"] if self.padded_vocab_size != other.padded_vocab_size else []) + differ

    def function_differences(self, other: ModelConfig) -> list[str]:
        """Fields that change what the same weights compute (`FUNCTION_FIELDS`)."""
        mine, theirs = self.resolved(), other.resolved()
        return [k for k in FUNCTION_FIELDS if mine[k] != theirs[k]]


WEIGHT_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden", "tie_embeddings",
                 "norm_placement", "qk_norm", "moe_num_experts", "moe_hidden")
"""What decides a model's tensors: two configs equal on these (resolved) hold interchangeable weights."""
FUNCTION_FIELDS = ("rope_theta", "norm_eps", "parametrization", "mup_base_d_model", "mup_output_multiplier",
                   "moe_top_k", "moe_norm_topk_prob")
"""What else changes the function the weights compute (max_seq_len, init_std do not)."""
