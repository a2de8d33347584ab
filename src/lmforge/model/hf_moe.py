"""The mixture-of-experts part of the transformers adapter (`lmforge.model.hf`): an MoE model is
`OlmoeForCausalLM` (norm_placement: pre) or `FlexOlmoForCausalLM` (reordered, the OLMo 2 block).

On disk each expert is three matrices, `model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight`,
the router `model.layers.{i}.mlp.gate.weight`: what `save_pretrained` writes and every
transformers 4.x and 5.x loads. Ours are stacked per layer, gate and up in one (2H, D) matrix
per expert (`lmforge.model.moe`), so export splits and import stacks; nothing is transposed.

The trap: in OLMoE `post_attention_layernorm` is the norm *before* the MoE (a pre-norm block's
second norm), while in OLMo 2 and FlexOlmo the same name is the norm on the attention output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig

ARCHITECTURES = {"pre": ("olmoe", "OlmoeForCausalLM"), "reordered": ("flex_olmo", "FlexOlmoForCausalLM")}
"""norm_placement → (model_type, architecture) of transformers' MoE model with that block."""
NORM_PLACEMENT = {model_type: placement for placement, (model_type, _) in ARCHITECTURES.items()}

NORM_KEYS = {
    "pre": {"blocks.{}.attn_norm.weight": "model.layers.{}.input_layernorm.weight",
            "blocks.{}.mlp_norm.weight": "model.layers.{}.post_attention_layernorm.weight"},
    "reordered": {"blocks.{}.attn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
                  "blocks.{}.mlp_norm.weight": "model.layers.{}.post_feedforward_layernorm.weight"},
}  # fmt: skip
ROUTER_KEY = ("blocks.{}.mlp.router.weight", "model.layers.{}.mlp.gate.weight")
EXPERT_KEY = "model.layers.{}.mlp.experts.{}.{}_proj.weight"


def block_keys(cfg: ModelConfig, attention_keys: Mapping[str, str]) -> dict[str, str]:
    """Our non-expert block parameter names → transformers', with "{}" the block index."""
    return {**attention_keys, **NORM_KEYS[cfg.norm_placement], ROUTER_KEY[0]: ROUTER_KEY[1]}


def expert_tensors(cfg: ModelConfig, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every expert's three matrices under transformers' per-expert names."""
    H = cfg.expert_hidden
    out = {}
    for i in range(cfg.n_layers):
        gate_up, down = state[f"blocks.{i}.mlp.experts.w_gate_up"], state[f"blocks.{i}.mlp.experts.w_down"]
        for e in range(cfg.moe_num_experts):
            out[EXPERT_KEY.format(i, e, "gate")] = gate_up[e, :H]
            out[EXPERT_KEY.format(i, e, "up")] = gate_up[e, H:]
            out[EXPERT_KEY.format(i, e, "down")] = down[e]
    return out


def stack_experts(cfg: ModelConfig, tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Our stacked expert parameters from a folder's per-expert tensors, which are removed from
    `tensors`; LmforgeError naming a missing key."""
    out = {}
    for i in range(cfg.n_layers):
        gate_up, down = [], []
        for e in range(cfg.moe_num_experts):
            try:
                gate, up, d = (tensors.pop(EXPERT_KEY.format(i, e, p)) for p in ("gate", "up", "down"))
            except KeyError as missing:
                raise LmforgeError(f"{source}: weight {missing.args[0]} is missing (expert {e} of layer {i})") from None
            gate_up.append(torch.cat([gate, up]))
            down.append(d)
        out[f"blocks.{i}.mlp.experts.w_gate_up"] = torch.stack(gate_up)
        out[f"blocks.{i}.mlp.experts.w_down"] = torch.stack(down)
    return out


def moe_config(cfg: ModelConfig, config: dict[str, Any]) -> dict[str, Any]:
    """transformers' OlmoeConfig / FlexOlmoConfig JSON from the Olmo2Config JSON of the same model."""
    model_type, architecture = ARCHITECTURES[cfg.norm_placement]
    return {**config, "architectures": [architecture], "model_type": model_type,
            "intermediate_size": cfg.expert_hidden, "num_experts": cfg.moe_num_experts,
            "num_experts_per_tok": cfg.moe_top_k, "norm_topk_prob": cfg.moe_norm_topk_prob,
            "output_router_logits": False, "router_aux_loss_coef": 0.01, "clip_qkv": None}  # fmt: skip


def moe_fields(config: Mapping[str, Any], source: str) -> dict[str, Any]:
    """ModelConfig fields of an OlmoeConfig / FlexOlmoConfig dict (the MoE part)."""
    if config.get("clip_qkv") is not None:
        raise LmforgeError(f"{source}: clip_qkv={config['clip_qkv']} is not supported (lmforge never clips q, k, v)")
    for key in ("num_experts", "num_experts_per_tok"):
        if key not in config:
            raise LmforgeError(f"{source}: config.json has no '{key}'")
    return {"norm_placement": NORM_PLACEMENT[config["model_type"]], "moe_num_experts": config["num_experts"],
            "moe_top_k": config["num_experts_per_tok"], "moe_norm_topk_prob": bool(config.get("norm_topk_prob")),
            "moe_hidden": config["intermediate_size"]}  # fmt: skip
