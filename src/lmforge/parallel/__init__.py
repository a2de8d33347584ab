"""How the model is distributed and made fast: the device mesh from torchrun, FSDP2 / HSDP,
activation checkpointing and per-block compile. The model's math (`lmforge.model`) never
imports `torch.distributed`; everything here wraps it from outside."""

from lmforge.parallel.config import ParallelConfig
from lmforge.parallel.mesh import World, init_world
from lmforge.parallel.parallelize import parallelize

__all__ = ["ParallelConfig", "World", "init_world", "parallelize"]
