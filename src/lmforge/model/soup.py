"""`lmforge soup`: average checkpoints of one model into one ("model soups", Wortsman et al.
2022; OLMo 2 souped its final anneals). The result is an ordinary consolidated checkpoint that
evaluates and exports like any other."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.fsutil import staged_folder
from lmforge.model.io import load_model, load_model_tokenizer, save_model


def soup(checkpoints: Sequence[str | Path], out_dir: str | Path, *, weights: Sequence[float] | None = None,
         overwrite: bool = False) -> Path:
    """Write the (weighted) mean of `checkpoints`' parameters to `out_dir`. Weights are
    normalised to sum to 1; every checkpoint must have the same model config."""
    if len(checkpoints) < 2:
        raise LmforgeError(f"soup needs at least two checkpoints, got {len(checkpoints)}")
    if weights is None:
        weights = [1.0] * len(checkpoints)
    if len(weights) != len(checkpoints):
        raise LmforgeError(f"--weights has {len(weights)} values for {len(checkpoints)} checkpoints; give one each")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise LmforgeError(f"--weights must be ≥ 0 and not all 0, got {list(weights)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise LmforgeError(f"{out_dir} exists; pass --overwrite to replace it")
    total = float(sum(weights))
    first = load_model(checkpoints[0])
    mean = {name: tensor.double() * (weights[0] / total) for name, tensor in first.state_dict().items()}
    for path, weight in zip(checkpoints[1:], weights[1:]):
        model = load_model(path)
        # One model: the same tensors computing the same function (n_kv_heads unset is n_heads;
        # init_std or max_seq_len may differ). The soup takes the first checkpoint's config.
        differs = first.cfg.weight_differences(model.cfg) + first.cfg.function_differences(model.cfg)
        if differs:
            raise LmforgeError(
                f"{path} has another model shape than {checkpoints[0]} ({', '.join(differs)} differ); "
                "only checkpoints of one model can be souped"
            )
        for name, tensor in model.state_dict().items():
            mean[name] += tensor.double() * (weight / total)  # fp64 sums: the order of checkpoints does not matter
        del model
    with torch.no_grad():
        for name, tensor in first.state_dict().items():
            tensor.copy_(mean[name].to(tensor.dtype))
    with staged_folder(out_dir) as staging:
        save_model(first, staging, load_model_tokenizer(checkpoints[0]))
    return out_dir
