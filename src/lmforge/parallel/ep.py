"""Expert parallelism: each MoE layer's E experts spread over the `parallel.ep` ranks of an EP
group, every rank still training on its own rows of the batch (EP borrows from data parallelism,
as in torchtitan and OLMo-core).

The world of W ranks is a 2-D mesh ('ep_dp', 'ep') of W/ep × ep, EP groups of consecutive ranks
(a node's GPUs when ep divides the GPUs per node). EP rank i holds experts i·E/ep … (i+1)·E/ep − 1
of every layer; the dense parameters (attention, norms, router, embedding) are FSDP-sharded over
all W ranks as without EP, the experts FSDP-sharded over the W/ep ranks of 'ep_dp' that hold the
same experts (along dim 1, so any E works with any W).

A layer's forward on a rank: route its own tokens; one `all_to_all_single` of the (E,) counts
tells every rank how many rows it receives for each of its experts; a second carries the rows
(uneven splits); the local experts run on rows regrouped by expert; a third brings the results
back to the tokens' ranks. All three are collectives of the EP group, differentiable, so backward
runs the same exchanges in reverse.

The gradient trap (pytorch#160285): each rank's loss is scaled by W / global tokens and FSDP
averages gradients over the ranks it reduces over. For a dense weight that is W ranks: the
mean of the W scaled losses' gradients is the global batch's. An expert's gradient already sums
the tokens of all ep ranks of its group (they arrived by all_to_all) and FSDP then averages over
only the W/ep ranks of 'ep_dp': ep times too large. `Experts.grad_scale = 1/ep` divides it back
before the reduction (exact for a power of two), on every backend, without custom reduce ops.

Checkpoints hold every expert tensor at its full (E, …) shape: `global_state` views each rank's
slice as a DTensor over the 2-D mesh, so `torch.distributed.checkpoint` writes each slice at its
offset, and a checkpoint of an EP run loads on any other world size or EP degree (one plain
process included), as a checkpoint without EP does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard

EXPERT_SHARD_DIM = 1
"""FSDP shards expert weights along dim 1 (2H or D), not 0 (E/ep may be fewer than W/ep)."""


class ExpertExchange:
    """Carries rows sorted by (global) expert to the EP ranks holding those experts, runs them
    there, and returns the results in the original row order (`Experts.exchange`)."""

    def __init__(self, group: dist.ProcessGroup, n_local: int):
        self.group, self.size, self.n_local = group, group.size(), n_local

    def __call__(self, rows: torch.Tensor, counts: torch.Tensor,
                 run_local: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        P, L = self.size, self.n_local
        # counts (P·L,): rows for each expert, experts of EP rank j at j·L … j·L+L−1. After the
        # exchange, received[s, e] = rows EP rank s sends for this rank's local expert e.
        received = torch.empty_like(counts)
        dist.all_to_all_single(received, counts, group=self.group)
        received = received.view(P, L)
        send_sizes = counts.view(P, L).sum(dim=1).tolist()
        recv_sizes = received.sum(dim=1).tolist()
        got = dist_fn.all_to_all_single(rows.new_empty(sum(recv_sizes), rows.shape[-1]), rows,
                                        recv_sizes, send_sizes, group=self.group)
        # `got` is grouped by source rank, then by expert: regroup by expert (stable, so each
        # expert's rows stay in source order), run, and undo the regrouping.
        local_expert = torch.arange(L, device=rows.device).repeat(P).repeat_interleave(received.flatten())
        order = local_expert.argsort(stable=True)
        out = run_local(got[order], received.sum(dim=0))
        out = out[order.argsort()]
        return dist_fn.all_to_all_single(rows.new_empty(rows.shape[0], out.shape[-1]), out,
                                         send_sizes, recv_sizes, group=self.group)


@dataclass
class ExpertPlacement:
    """Which experts this rank holds, and the meshes they live on."""

    mesh: DeviceMesh
    """('ep_dp', 'ep'): W/ep × ep ranks."""
    n_experts: int

    @property
    def size(self) -> int:
        return self.mesh["ep"].size()

    @property
    def index(self) -> int:
        """This rank's position in its EP group."""
        return self.mesh["ep"].get_local_rank()

    @property
    def n_local(self) -> int:
        return self.n_experts // self.size

    @property
    def first(self) -> int:
        return self.index * self.n_local

    @property
    def shard_mesh(self) -> DeviceMesh:
        """The ranks holding the same experts, over which FSDP shards them."""
        return self.mesh["ep_dp"]

    @property
    def ep_group(self) -> dist.ProcessGroup:
        return self.mesh["ep"].get_group()


def apply_ep(model: nn.Module, placement: ExpertPlacement) -> int:
    """Keep only this rank's experts in every MoE layer (on 'meta', before FSDP); returns the
    number of MoE layers."""
    n = 0
    for _, experts in expert_modules(model):
        lo, hi = placement.first, placement.first + placement.n_local
        for name, param in list(experts.named_parameters(recurse=False)):
            setattr(experts, name, nn.Parameter(torch.empty_like(param[lo:hi], device=param.device)))
        experts.first = lo
        experts.exchange = ExpertExchange(placement.ep_group, placement.n_local)
        experts.grad_scale = 1.0 / placement.size
        n += 1
    return n


def expert_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every expert bank: a module declaring `expert_parallel = True`
    (`lmforge.model.moe.Experts`; the model is not imported here, it is wrapped from outside),
    whose direct parameters are stacked (E, …) expert weights."""
    return ((name, m) for name, m in model.named_modules() if getattr(m, "expert_parallel", False))


def expert_slices(model: nn.Module) -> dict[str, slice]:
    """{parameter name: the experts it holds} for every expert weight of an EP model (empty
    without EP): the rows of the full (E, …) tensor that this rank's parameter is."""
    out = {}
    for prefix, module in expert_modules(model):
        if module.exchange is not None:
            for name, param in module.named_parameters(recurse=False):
                out[f"{prefix}.{name}"] = slice(module.first, module.first + param.shape[0])
    return out


def global_state(state: dict[str, Any], names: set[str], placement: ExpertPlacement) -> None:
    """In place: every expert tensor (parameter `names`) of a model or optimizer state dict,
    an FSDP shard of this rank's experts, as a view of the full (E, …) tensor over the 2-D
    mesh, for DCP."""
    for key, holder, value in _expert_tensors(state, names):
        shape = (placement.n_experts, *value.shape[1:])
        holder[key] = DTensor.from_local(value.to_local(), placement.mesh, _global_placements(),
                                         run_check=False, shape=shape, stride=_contiguous_stride(shape))


def local_state(state: dict[str, Any], names: set[str], placement: ExpertPlacement) -> None:
    """Undo `global_state` in place (after DCP has filled the views): FSDP shards of this
    rank's experts again, as `set_model_state_dict` / `set_optimizer_state_dict` expect."""
    for key, holder, value in _expert_tensors(state, names):
        local = value.to_local()
        shape = (placement.n_local, *value.shape[1:])
        holder[key] = DTensor.from_local(local, placement.shard_mesh, (Shard(EXPERT_SHARD_DIM),),
                                         run_check=False, shape=shape, stride=_contiguous_stride(shape))


def _global_placements() -> tuple[Shard, Shard]:
    # mesh dims ('ep_dp', 'ep'): FSDP's shard along dim 1 within the experts EP splits along 0
    return (Shard(EXPERT_SHARD_DIM), Shard(0))


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    return torch.empty(shape, device="meta").stride()


def _expert_tensors(state: dict[str, Any], names: set[str]) -> list[tuple[str, dict, DTensor]]:
    """(key, the dict holding it, tensor) of every expert DTensor in {'model': …, 'optim': …}
    (model entries and optimizer state are keyed by parameter name)."""
    found = []
    for key, value in state.get("model", {}).items():
        if key in names and isinstance(value, DTensor):
            found.append((key, state["model"], value))
    optim_state = state.get("optim", {}).get("state", {})
    for fqn, entry in optim_state.items():
        if fqn in names:
            # get_optimizer_state_dict may hand out the optimizer's own per-parameter dicts:
            # replace entries in a copy, never in the state the optimizer steps with
            optim_state[fqn] = entry = dict(entry)
            found += [(k, entry, v) for k, v in entry.items() if isinstance(v, DTensor) and v.dim() > 0]
    return found


def expert_grad_norm_sq(grads: list[torch.Tensor], placement: ExpertPlacement) -> torch.Tensor:
    """Σ of squared expert gradient entries over the whole model: each rank holds a distinct
    slice of the experts (E/ep experts, 1/(W/ep) of each), so local sums add up over all ranks."""
    local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
    total = torch.nn.utils.get_total_norm(local, norm_type=2.0).square()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total
