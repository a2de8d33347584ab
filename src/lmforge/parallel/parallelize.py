"""`parallelize(model, cfg, world)`: the one place the order of wrappers is decided.

AC → compile → EP → FSDP, as torchtitan does: the compiled region contains the recomputation,
FSDP's hooks sit outside the compiled blocks, and expert parallelism cuts the expert weights
to this rank's experts before FSDP shards them. Called on the model while it is still on the
'meta' device, before any memory is allocated.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from lmforge.parallel.ac import apply_ac
from lmforge.parallel.compile import apply_compile
from lmforge.parallel.config import ParallelConfig
from lmforge.parallel.ep import ExpertPlacement, apply_ep, expert_modules
from lmforge.parallel.fsdp import apply_fsdp
from lmforge.parallel.mesh import World

log = logging.getLogger(__name__)


def param_dtype(cfg: ParallelConfig, world: World) -> torch.dtype:
    if cfg.param_dtype == "auto":
        return torch.bfloat16 if world.device.type == "cuda" else torch.float32
    return getattr(torch, cfg.param_dtype)


def parallelize(model: nn.Module, cfg: ParallelConfig, world: World) -> ExpertPlacement | None:
    """Wrap `model` in place; returns where its experts live under expert parallelism (else None)."""
    done = []
    if n := apply_ac(model, cfg.activation_checkpointing, cfg.ac_every):
        done.append(f"activation checkpointing on {n} blocks")
    if cfg.compile:
        apply_compile(model)
        done.append("per-block torch.compile")
    placement = None
    if world.ep_mesh is not None:
        n_experts = next(next(m.parameters()) for _, m in expert_modules(model)).shape[0]  # (E, …) stacks
        placement = ExpertPlacement(world.ep_mesh, n_experts)
        n = apply_ep(model, placement)
        done.append(f"expert parallel over {placement.size} ranks ({placement.n_local} of {n_experts} experts "
                    f"per rank in {n} layers)")
    if world.mesh is not None:
        dtype = param_dtype(cfg, world)
        apply_fsdp(model, world.mesh, param_dtype=dtype, reduce_dtype=getattr(torch, cfg.reduce_dtype),
                   experts_mesh=placement.shard_mesh if placement else None)
        shape = "×".join(str(s) for s in world.mesh.shape)
        done.append(f"FSDP2 over mesh {shape} {world.mesh.mesh_dim_names} ({dtype} compute)")
    if done and world.is_main:
        log.info("parallelize: " + "; ".join(done))
    return placement
