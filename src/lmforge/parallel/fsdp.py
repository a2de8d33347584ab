"""FSDP2 (`torch.distributed.fsdp.fully_shard`): each block is one unit of all-gather /
reduce-scatter, the root (embedding, final norm, head) another. On a 2-D mesh this is HSDP:
sharded within a replica group, gradients all-reduced across groups."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, *, param_dtype: torch.dtype, reduce_dtype: torch.dtype) -> None:
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    blocks = list(model.blocks)
    for i, block in enumerate(blocks):
        # The last block's parameters are needed again first in backward: keep them gathered.
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(blocks) - 1)
    # The root holds embedding and head, used at both ends of forward and again in backward.
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Reduce gradients only on the last micro-batch of a step (accumulate locally before)."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)


@torch.no_grad()
def copy_full_into(param: torch.Tensor, full: torch.Tensor) -> None:
    """Write the full (unsharded) value `full` into `param`, which may be a DTensor shard:
    every rank holds the same `full` and keeps its own slice, so the weights are the same for
    any world size."""
    if isinstance(param, DTensor):
        local = distribute_tensor(full, param.device_mesh, param.placements).to_local()
        param.to_local().copy_(local)
    else:
        param.copy_(full)


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm (over all shards and ranks) to `max_norm`; return the norm
    before clipping, as a tensor on the device (no host sync). max_norm ≤ 0: measure only."""
    params = [p for p in parameters if p.grad is not None]
    grads = [p.grad for p in params]
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if isinstance(norm, DTensor):  # a partial norm over this rank's shards: sum across ranks
        norm = norm.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm
