"""How each kind of parameter is initialised and how fast it learns: standard or µP.

Under µP (Yang et al. 2022, "Tensor Programs V", table 3 for Adam), with width_mult
m = d_model / mup_base_d_model, every kind of parameter keeps its per-coordinate update size
as the model widens, so a learning rate tuned at the base width stays right at any width:

    kind        examples                      init std          Adam LR   output
    embedding   embed.weight                  init_std          lr        -
    hidden      wq wk wv wo w_gate w_up w_down init_std/sqrt(m)  lr/m      -
    head        head.weight                   init_std          lr        logits × mult/m
    norm        *norm.weight                  1                 lr        -

plus attention scaled by 1/head_dim instead of 1/sqrt(head_dim) (`ModelConfig.attn_scale`).
Hidden matrices also get weight decay × m, so that AdamW's per-step shrink lr·wd stays the
same at every width (the `mup` package's MuAdamW does the same). At m = 1 every rule reduces
to standard parametrization, so µP at the base width is the standard model, weight for weight.

The model layer owns these rules (not the optimizer) because they are properties of the
parametrization a checkpoint was trained with: its model.yaml records them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from lmforge.model.config import ModelConfig

ParamKind = Literal["embedding", "hidden", "head", "norm"]
KINDS: tuple[ParamKind, ...] = ("embedding", "hidden", "head", "norm")


def param_kind(name: str) -> ParamKind:
    """The kind of parameter `name` (a `Transformer` parameter name, unchanged under FSDP,
    compile and activation checkpointing, which never rename parameters)."""
    if name == "embed.weight":
        return "embedding"
    if name == "head.weight":
        return "head"
    if name.endswith("norm.weight"):
        return "norm"
    return "hidden"


def init_std(cfg: ModelConfig, kind: ParamKind) -> float:
    """Std of the truncated-normal init of a matrix of this kind (norm weights start at 1)."""
    if kind == "hidden":
        return cfg.init_std / math.sqrt(cfg.width_mult)
    return cfg.init_std


def lr_multiplier(cfg: ModelConfig, kind: ParamKind) -> float:
    """The factor applied to the schedule's LR for parameters of this kind."""
    return 1.0 / cfg.width_mult if kind == "hidden" else 1.0


def weight_decay(cfg: ModelConfig, kind: ParamKind, base: float, *, decay_embeddings: bool) -> float:
    """AdamW weight decay of this kind: weight matrices only, embeddings only if asked (OLMo 2
    does not decay them; OLMo 0424 did), norms never (they are scales, not weights to shrink)."""
    if kind == "norm" or (kind == "embedding" and not decay_embeddings):
        return 0.0
    return base * cfg.width_mult if kind == "hidden" else base


def optimizer_groups(
    model: nn.Module, cfg: ModelConfig, *, weight_decay_base: float, decay_embeddings: bool
) -> list[dict]:
    """AdamW parameter groups of `model` (built from `cfg`), one per kind present, each with its
    `weight_decay` and an `lr_multiplier` that `lmforge.train.optim.set_lr` applies every step."""
    by_kind: dict[ParamKind, list[nn.Parameter]] = {kind: [] for kind in KINDS}
    for name, p in model.named_parameters():
        if p.requires_grad:
            by_kind[param_kind(name)].append(p)
    return [
        {
            "name": kind,
            "params": params,
            "weight_decay": weight_decay(cfg, kind, weight_decay_base, decay_embeddings=decay_embeddings),
            "lr_multiplier": lr_multiplier(cfg, kind),
        }
        for kind, params in by_kind.items()
        if params
    ]


@torch.no_grad()
def fold_multipliers(cfg: ModelConfig, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights of a standard-parametrized model with the same outputs as `state` under
    `cfg`'s parametrization, for formats that know no multipliers (transformers' Olmo2):

    * the logit multiplier goes into the head: (x·mult)Wᵀ = x(mult·W)ᵀ;
    * the attention scale goes into the query norm's weight: RoPE is linear, so scaling q by
      c = attn_scale·sqrt(head_dim) scales q·k by c, turning 1/sqrt(head_dim) into attn_scale.
    """
    out = dict(state)
    if cfg.parametrization == "standard":
        return out
    if cfg.logit_multiplier != 1.0:
        out["head.weight"] = state["head.weight"] * cfg.logit_multiplier
    c = cfg.attn_scale * math.sqrt(cfg.head_dim)
    if c != 1.0:
        if not cfg.qk_norm:
            raise ValueError("folding the µP attention scale needs qk_norm (it goes into q_norm's weight)")
        for i in range(cfg.n_layers):
            key = f"blocks.{i}.attn.q_norm.weight"
            out[key] = state[key] * c
    return out
