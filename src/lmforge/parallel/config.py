"""The `parallel:` section of a run config: where and how the model runs.

None of these fields changes what is trained (the same global batch, the same instance order,
the same loss), only how it is computed, so a run may resume with different values: a run
started on 8 GPUs continues on 4, with activation checkpointing switched on.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from lmforge.config import Config, require


@dataclasses.dataclass(kw_only=True)
class ParallelConfig(Config):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' is cuda when a GPU is visible, else cpu."""
    dp_replicate: int = 1
    """Replica groups for HSDP: parameters are sharded within a group of `dp_shard` ranks and
    replicated across `dp_replicate` groups (e.g. one group per node). 1 = plain FSDP."""
    dp_shard: int = -1
    """Ranks each parameter is sharded over; -1 = all ranks of a replica group
    (world size / dp_replicate). dp_replicate × dp_shard must equal the world size."""
    ep: int = 1
    """Expert parallel degree (MoE models): each layer's experts are spread over EP groups of
    `ep` consecutive ranks, tokens exchanged with all_to_all; must divide the world size and
    model.moe_num_experts. Every rank still trains on its own rows (EP borrows from data
    parallelism); the rest of the model is FSDP-sharded over all ranks. 1 = no EP."""
    param_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Dtype of parameters in forward/backward (FSDP's mixed-precision policy; master weights
    and optimizer state stay fp32). 'auto' = bfloat16 on cuda, float32 on cpu."""
    reduce_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the gradient reduce-scatter/all-reduce."""
    activation_checkpointing: Literal["none", "full", "every_k"] = "none"
    """Recompute block activations in backward to save memory: none, every block ('full'),
    or every `ac_every`-th block."""
    ac_every: int = 2
    """With activation_checkpointing: every_k, checkpoint blocks 0, k, 2k, …"""
    compile: bool = False
    """torch.compile each block (costs ~20 s per distinct block shape on CPU, more on GPU)."""
    loss_chunk_tokens: int = -1
    """Tokens per chunk of the fused head + cross-entropy + z-loss, so the fp32 logits of the
    whole micro-batch are never materialised (peak extra memory chunk × vocab × 4 bytes).
    -1 = auto (1024 on CPU, where a cache-sized chunk is fastest; 4096 on GPU);
    0 = materialise the logits and use the plain loss (for comparison)."""
    prefetch_batches: int = 2
    """Batches a background thread reads ahead (memmap reads, repetition mask, pinning)."""

    def validate(self) -> None:
        require(self.dp_replicate >= 1, "parallel.dp_replicate", f"must be ≥ 1, got {self.dp_replicate}")
        require(self.dp_shard == -1 or self.dp_shard >= 1, "parallel.dp_shard",
                f"must be ≥ 1, or -1 for all ranks of a replica group; got {self.dp_shard}")
        require(self.ep >= 1, "parallel.ep", f"must be ≥ 1 (1: no expert parallelism), got {self.ep}")
        require(self.ep == 1 or self.dp_replicate == 1, "parallel.ep",
                f"expert parallelism runs on plain FSDP meshes; set parallel.dp_replicate: 1 (got {self.dp_replicate}) "
                "or parallel.ep: 1")
        require(self.ac_every >= 1, "parallel.ac_every", f"must be ≥ 1, got {self.ac_every}")
        require(self.loss_chunk_tokens >= -1, "parallel.loss_chunk_tokens",
                f"must be a token count, 0 (no chunking) or -1 (auto); got {self.loss_chunk_tokens}")
        require(self.prefetch_batches >= 0, "parallel.prefetch_batches",
                f"must be ≥ 0 (0 reads batches in the training thread), got {self.prefetch_batches}")

    def loss_chunk_for(self, device_type: str) -> int:
        if self.loss_chunk_tokens != -1:
            return self.loss_chunk_tokens
        return 4096 if device_type == "cuda" else 1024
