"""`parallelize(model, cfg, world)`: the one place the order of wrappers is decided.

AC → compile → FSDP, as torchtitan does: the compiled region contains the recomputation,
and FSDP's hooks sit outside the compiled blocks. Called on the model while it is still on
the 'meta' device, before any memory is allocated.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from lmforge.parallel.ac import apply_ac
from lmforge.parallel.compile import apply_compile
from lmforge.parallel.config import ParallelConfig
from lmforge.parallel.fsdp import apply_fsdp
from lmforge.parallel.mesh import World

log = logging.getLogger(__name__)


def param_dtype(cfg: ParallelConfig, world: World) -> torch.dtype:
    if cfg.param_dtype == "auto":
        return torch.bfloat16 if world.device.type == "cuda" else torch.float32
    return getattr(torch, cfg.param_dtype)


def parallelize(model: nn.Module, cfg: ParallelConfig, world: World) -> None:
    done = []
    if n := apply_ac(model, cfg.activation_checkpointing, cfg.ac_every):
        done.append(f"activation checkpointing on {n} blocks")
    if cfg.compile:
        apply_compile(model)
        done.append("per-block torch.compile")
    if world.mesh is not None:
        dtype = param_dtype(cfg, world)
        apply_fsdp(model, world.mesh, param_dtype=dtype, reduce_dtype=getattr(torch, cfg.reduce_dtype))
        shape = "×".join(str(s) for s in world.mesh.shape)
        done.append(f"FSDP2 over mesh {shape} {world.mesh.mesh_dim_names} ({dtype} compute)")
    if done and world.is_main:
        log.info("parallelize: " + "; ".join(done))
