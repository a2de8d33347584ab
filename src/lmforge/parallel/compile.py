"""Per-block `torch.compile`: every block has the same code and shapes, so one compiled graph
serves all of them, and compile time does not grow with depth (torchtitan's approach)."""

from __future__ import annotations

import torch
from torch import nn


def apply_compile(model: nn.Module) -> None:
    # The block's forward is compiled, not its __call__: FSDP's hooks (all-gather before,
    # reshard after) stay outside the compiled graph, as with torchtitan's wrapped blocks,
    # and parameter names keep no `_orig_mod.` prefix.
    # A block that cannot be one graph (MoE experts: `compiles_as_one_graph`) compiles around
    # the part that breaks it.
    for block in model.blocks:
        block.forward = torch.compile(block.forward, fullgraph=getattr(block, "compiles_as_one_graph", True))
