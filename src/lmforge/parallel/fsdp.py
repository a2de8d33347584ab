"""FSDP2 (`torch.distributed.fsdp.fully_shard`): each block is one unit of all-gather /
reduce-scatter, the root (embedding, final norm, head) another. On a 2-D mesh this is HSDP:
sharded within a replica group, gradients all-reduced across groups."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from lmforge.parallel.ep import EXPERT_SHARD_DIM, expert_modules


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, *, param_dtype: torch.dtype, reduce_dtype: torch.dtype,
               experts_mesh: DeviceMesh | None = None) -> None:
    """`experts_mesh`: with expert parallelism, the ranks holding the same experts; each block's
    expert bank is then its own FSDP unit over them, sharded along dim 1 (dim 0 is experts,
    which EP already split), and the block's other parameters shard over `mesh`."""
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    blocks = list(model.blocks)
    for i, block in enumerate(blocks):
        # The last block's parameters are needed again first in backward: keep them gathered.
        reshard = i < len(blocks) - 1
        if experts_mesh is not None:
            for _, experts in expert_modules(block):
                fully_shard(experts, mesh=experts_mesh, mp_policy=mp, reshard_after_forward=reshard,
                            shard_placement_fn=lambda _: Shard(EXPERT_SHARD_DIM))
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
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
def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float,
                   expert_norm_sq: Callable[[list[torch.Tensor]], torch.Tensor] | None = None,
                   expert_names: Collection[str] = ()) -> torch.Tensor:
    """Clip the global gradient norm (over all shards and ranks) to `max_norm`; return the norm
    before clipping, as a tensor on the device (no host sync). max_norm ≤ 0: measure only.

    `parameters` are (name, parameter) pairs. With expert parallelism the expert weights
    (`expert_names`) live on another mesh than the rest, so their squared norm comes from
    `expert_norm_sq` (`lmforge.parallel.ep.expert_grad_norm_sq`) and is added to the others'."""
    groups: list[list[nn.Parameter]] = [[], []]  # [the rest, experts under EP]
    for name, p in parameters:
        if p.grad is not None:
            groups[name in expert_names].append(p)
    norm = torch.nn.utils.get_total_norm([p.grad for p in groups[0]], norm_type=2.0)
    if isinstance(norm, DTensor):  # a partial norm over this rank's shards: sum across ranks
        norm = norm.full_tensor()
    if groups[1] and expert_norm_sq is not None:
        norm = (norm.square() + expert_norm_sq([p.grad for p in groups[1]])).sqrt()
    if max_norm > 0:
        for group in groups:  # one call per mesh: foreach kernels take one mesh at a time
            if group:
                torch.nn.utils.clip_grads_with_norm_(group, max_norm, norm)
    return norm
