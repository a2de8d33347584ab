"""The process world a run lives in, read from the torchrun environment.

`torchrun` (or SLURM's `srun` running torchrun) sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address; we only read them. Without them, a CPU run is one plain process with no
process group at all (fast to start, nothing to tear down), and a GPU run gets a one-rank
group so that it trains through the same FSDP mixed-precision path as a multi-GPU run.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from lmforge.errors import ConfigError
from lmforge.parallel import cuda
from lmforge.parallel.config import ParallelConfig

# Dense bf16 peak FLOP/s, for MFU. Matched against cuda.device_name().
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


@dataclass
class World:
    """Rank, size, device and data-parallel mesh of this process."""

    rank: int
    size: int
    device: torch.device
    mesh: DeviceMesh | None
    """1-D ('dp_shard',) for FSDP, 2-D ('dp_replicate', 'dp_shard') for HSDP; None when the
    run is one process without a process group."""
    ep_mesh: DeviceMesh | None = None
    """With expert parallelism (`parallel.ep` > 1): the same ranks as 2-D ('ep_dp', 'ep'),
    EP groups of consecutive ranks (`lmforge.parallel.ep`)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place; a no-op for one process. No host sync on GPU."""
        if self.distributed and self.size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather_object(self, obj) -> list:
        """Every rank's `obj`, in rank order (small host values only)."""
        if not (self.distributed and self.size > 1):
            return [obj]
        out: list = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank (for small host values, e.g. a decision to stop)."""
        if not (self.distributed and self.size > 1):
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # -- device facts the loop's callbacks need, without touching torch.cuda themselves --------
    def synchronize(self) -> None:
        if self.device.type == "cuda":
            cuda.synchronize(self.device)

    def peak_flops(self) -> float | None:
        """Dense bf16 peak of this device, if known (None on CPU)."""
        if self.device.type != "cuda":
            return None
        name = cuda.device_name(self.device)
        return next((v for k, v in PEAK_FLOPS.items() if k in name), None)

    def max_memory_gib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return cuda.max_memory_gib(self.device)

    def close(self) -> None:
        if self.distributed:
            dist.destroy_process_group()


def resolve_device(cfg: ParallelConfig) -> torch.device:
    if cfg.device == "cuda" and not cuda.is_available():
        raise ConfigError("parallel.device: 'cuda' was asked for but no GPU is visible; use auto or cpu")
    if cfg.device == "cpu" or (cfg.device == "auto" and not cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def mesh_shape(cfg: ParallelConfig, world_size: int) -> tuple[int, int]:
    """(dp_replicate, dp_shard) for `world_size` ranks, or a ConfigError naming the fix."""
    replicate = cfg.dp_replicate
    if world_size % replicate:
        raise ConfigError(
            f"parallel.dp_replicate={replicate} does not divide the world size {world_size} "
            f"(processes started by torchrun); pick a divisor of {world_size}"
        )
    shard = world_size // replicate if cfg.dp_shard == -1 else cfg.dp_shard
    if replicate * shard != world_size:
        raise ConfigError(
            f"parallel.dp_replicate={replicate} × parallel.dp_shard={shard} = {replicate * shard}, but torchrun "
            f"started {world_size} processes; make the product {world_size} (or set dp_shard: -1)"
        )
    return replicate, shard


def check_ep(cfg: ParallelConfig, world_size: int) -> None:
    """`parallel.ep` must split the world into whole EP groups."""
    if cfg.ep > 1 and world_size % cfg.ep:
        raise ConfigError(
            f"parallel.ep={cfg.ep} does not divide the world size {world_size} (processes started by torchrun); "
            f"pick a divisor of {world_size}"
        )


def init_world(cfg: ParallelConfig, fault_dir: Path | None = None) -> World:
    """Join the torchrun world (or start a one-rank one on a GPU) and build the mesh. On GPU,
    NCCL's flight recorder and error handling are switched on first (`cuda.nccl_fault_env`,
    never overriding a user's setting), dumping into `fault_dir`."""
    device = resolve_device(cfg)
    if device.type == "cuda" and fault_dir is not None and not dist.is_initialized():
        fault_dir.mkdir(parents=True, exist_ok=True)
        cuda.apply_env_defaults(cuda.nccl_fault_env(fault_dir))
    under_torchrun = "WORLD_SIZE" in os.environ and "RANK" in os.environ
    if not under_torchrun and device.type == "cpu":
        check_ep(cfg, 1)
        return World(rank=0, size=1, device=device, mesh=None)
    if device.type == "cuda":
        cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(minutes=int(os.environ.get("LMFORGE_DIST_TIMEOUT_MIN", 30)))
        if under_torchrun:
            dist.init_process_group(backend, timeout=timeout)
        else:  # one GPU, no launcher: an in-memory store, no ports
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    rank, size = dist.get_rank(), dist.get_world_size()
    try:
        replicate, shard = mesh_shape(cfg, size)
        check_ep(cfg, size)
    except ConfigError:
        dist.destroy_process_group()
        raise
    if replicate == 1:
        mesh = init_device_mesh(device.type, (shard,), mesh_dim_names=("dp_shard",))
    else:
        mesh = init_device_mesh(device.type, (replicate, shard), mesh_dim_names=("dp_replicate", "dp_shard"))
    ep_mesh = None
    if cfg.ep > 1:
        ep_mesh = init_device_mesh(device.type, (size // cfg.ep, cfg.ep), mesh_dim_names=("ep_dp", "ep"))
    return World(rank=rank, size=size, device=device, mesh=mesh, ep_mesh=ep_mesh)
