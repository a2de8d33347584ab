"""Per-block `torch.compile`: every block has the same code and shapes, so one compiled graph
serves all of them, and compile time does not grow with depth (torchtitan's approach)."""

from __future__ import annotations

from torch import nn


def apply_compile(model: nn.Module) -> None:
    # nn.Module.compile() compiles in place: parameter names keep no `_orig_mod.` prefix.
    for block in model.blocks:
        block.compile(fullgraph=True)
