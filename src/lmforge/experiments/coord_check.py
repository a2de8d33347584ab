"""Coordinate check: do activations keep their size as the model gets wider?

µP's diagnostic (Tensor Programs V, fig. 5; the `mup` package's `get_coord_data`): train the
same config at several widths for a few steps at one learning rate and record, at every step,
the RMS of each layer's output. Under a parametrization that transfers hyperparameters the
curves are flat in width; under standard parametrization the *change* of the activations
since initialisation grows with width (Adam's updates are O(1) per coordinate, so a d-wide
dot product moves by O(d)), which is why the best LR shrinks as models grow.

    lmforge analyze coord-check configs/demo.yaml --widths 64,128,256,512 --steps 5 --seeds 2

For each width w the config's model gets d_model = w and mlp_hidden scaled by w / d_model
(rounded to a multiple of 8); n_heads stays, so head_dim grows with width, as µP assumes, and
every other field (µP's base width included) is the config's. Each width trains `steps`
steps of one micro-batch (`trainer.micro_batch_size` contiguous `data.seq_len` windows from
the start of `data.train`, a new one each step) with the config's AdamW at a constant LR,
no warmup and no gradient clipping (Adam's update barely depends on gradient scale; the
check is about update sizes), single process, on CPU, in fp32.

Recorded at step t = 0 … steps (the forward after t updates, on that step's batch, before
its own update): the RMS of the embedding output, of each block's attention and MLP
outputs before their norms (`blocks.i.attn`, `blocks.i.mlp`), of each block's output (the
residual stream) and of the logits; and the RMS of the *change* of the same quantities from
the initial model on the same input. Seeds are averaged.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.errors import LmforgeError
from lmforge.fsutil import atomic_write
from lmforge.model.config import ModelConfig
from lmforge.model.loss import lm_loss
from lmforge.model.transformer import Transformer
from lmforge.train.config import RunConfig
from lmforge.train.optim import build_optimizer, set_lr

KINDS = ("embed", "attn", "mlp", "block", "logits")
"""Layer kinds, in the order of the forward pass; a plot panel and a table row each."""

STATS = ("rms", "delta")
"""`rms`: RMS of the activation; `delta`: RMS of its change from the initial model."""


# -- the model at each width ----------------------------------------------------------------


def width_model_config(model: ModelConfig, width: int) -> ModelConfig:
    """`model` at d_model = `width`: MLP scaled proportionally (to a multiple of 8), heads
    unchanged, everything else (parametrization and µP base width included) as configured."""
    if width < 1 or width % model.n_heads:
        raise LmforgeError(
            f"--widths: width {width} is not a multiple of model.n_heads={model.n_heads}; "
            f"use multiples of {model.n_heads}"
        )
    if (width // model.n_heads) % 2:
        raise LmforgeError(
            f"--widths: width {width} gives an odd head_dim={width // model.n_heads} with n_heads={model.n_heads} "
            f"(RoPE needs an even one); use multiples of {2 * model.n_heads}"
        )
    hidden = max(8, round(model.mlp_hidden * width / model.d_model / 8) * 8)
    return dataclasses.replace(model, d_model=width, mlp_hidden=hidden)


def layer_names(n_layers: int) -> list[str]:
    """Recorded layers in forward order: embed, per block attn / mlp / block, logits."""
    names = ["embed"]
    for i in range(n_layers):
        names += [f"blocks.{i}.attn", f"blocks.{i}.mlp", f"blocks.{i}"]
    return names + ["logits"]


def layer_kind(name: str) -> str:
    if name in ("embed", "logits"):
        return name
    return name.split(".")[2] if name.count(".") == 2 else "block"


class _Recorder:
    """Forward hooks that keep the (detached) outputs of the recorded modules of a model."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str]):
        self.outputs: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        self.handles = [modules[name].register_forward_hook(self._hook(name)) for name in names if name != "logits"]

    def _hook(self, name: str):
        def hook(module, args, output):
            self.outputs[name] = output.detach()

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _rms(x: torch.Tensor) -> float:
    return float(x.float().pow(2).mean().sqrt())


# -- the data -------------------------------------------------------------------------------


def first_batches(cfg: RunConfig, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`n_batches` micro-batches of contiguous seq_len windows from the start of data.train
    (wrapping around if the data is shorter): (inputs, targets), each (micro_batch, seq_len)."""
    from lmforge.data.dataset import TokenStream

    stream = TokenStream(cfg.data.train)
    if stream.vocab_size > cfg.model.vocab_size:
        raise LmforgeError(
            f"data.train was tokenized with a {stream.vocab_size}-id tokenizer but model.vocab_size is "
            f"{cfg.model.vocab_size}; set model.vocab_size={stream.vocab_size}"
        )
    T, mb = cfg.data.seq_len, cfg.trainer.micro_batch_size
    windows = (stream.num_tokens - 1) // T
    if windows < 1:
        raise LmforgeError(f"data.train: {stream.num_tokens} tokens make no window of data.seq_len={T} (+1 target)")
    batches = []
    for b in range(n_batches):
        rows = np.stack([stream.read(k * T, k * T + T + 1) for k in ((b * mb + np.arange(mb)) % windows)])
        rows_t = torch.from_numpy(rows)  # (mb, T + 1)
        batches.append((rows_t[:, :-1].contiguous(), rows_t[:, 1:].contiguous()))
    return batches


# -- the check ------------------------------------------------------------------------------


def _one_run(cfg: RunConfig, model_cfg: ModelConfig, batches, lr: float, seed: int) -> dict[str, Any]:
    """Train one width from one seed; per layer per step RMS and change-RMS, and the losses."""
    model = Transformer(model_cfg, device="meta")
    model.to_empty(device="cpu")
    model.init_weights(seed)
    model.train()
    initial = copy.deepcopy(model).eval()
    names = layer_names(model_cfg.n_layers)
    rec, rec0 = _Recorder(model, names), _Recorder(initial, names)
    optimizer = build_optimizer(model, cfg.optim, model_cfg)
    set_lr(optimizer, lr)
    steps = len(batches) - 1
    rms = {name: [] for name in names}
    delta = {name: [] for name in names}
    losses = []
    try:
        for t, (inputs, targets) in enumerate(batches):
            train_now = t < steps
            with torch.set_grad_enabled(train_now):
                logits = model(inputs)  # (B, T, V)
                parts = lm_loss(logits, targets, z_loss_weight=cfg.optim.z_loss)
            with torch.no_grad():
                logits0 = initial(inputs)
                now = {**rec.outputs, "logits": logits.detach()}
                then = {**rec0.outputs, "logits": logits0}
                for name in names:
                    rms[name].append(_rms(now[name]))
                    delta[name].append(_rms(now[name].float() - then[name].float()))
            losses.append(float(parts.ce.detach()))
            if train_now:
                (parts.ce + parts.z).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    finally:
        rec.remove()
        rec0.remove()
    return {"rms": rms, "delta": delta, "loss": losses}


def coord_check(
    cfg: RunConfig,
    widths: Sequence[int],
    steps: int = 5,
    seeds: int = 2,
    lr: float | None = None,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Train `cfg`'s model at each of `widths` for `steps` steps (seeds 0 … seeds-1, averaged)
    and return per width, per layer, per step t = 0 … steps the activation RMS (`rms`) and
    the RMS of its change from initialisation (`delta`), as lists indexed
    ``result[stat][layer][width_index][t]``; plus the loss curves and what was run."""
    widths = [int(w) for w in widths]
    if len(widths) < 2:
        raise LmforgeError(f"--widths: a coordinate check needs at least two widths, got {widths}")
    if len(set(widths)) != len(widths):
        raise LmforgeError(f"--widths: each width once, got {widths}")
    if steps < 1:
        raise LmforgeError(f"--steps: must be at least 1, got {steps}")
    if seeds < 1:
        raise LmforgeError(f"--seeds: must be at least 1, got {seeds}")
    lr = cfg.optim.lr if lr is None else float(lr)
    if not lr > 0:
        raise LmforgeError(f"--lr: must be positive, got {lr}")
    widths = sorted(widths)
    model_cfgs = [width_model_config(cfg.model, w) for w in widths]  # raises on a bad width first
    batches = first_batches(cfg, steps + 1)
    names = layer_names(cfg.model.n_layers)
    result: dict[str, Any] = {
        "config": json.loads(json.dumps(cfg.to_dict(), default=str)),
        "parametrization": cfg.model.parametrization,
        "widths": widths,
        "mlp_hidden": [m.mlp_hidden for m in model_cfgs],
        "steps": steps,
        "seeds": seeds,
        "lr": lr,
        "layers": names,
        "kinds": {name: layer_kind(name) for name in names},
        "rms": {name: [] for name in names},
        "delta": {name: [] for name in names},
        "loss": [],
    }
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(widths) * seeds, desc="coord-check", unit="run", dynamic_ncols=True)
    for model_cfg in model_cfgs:
        runs = []
        for seed in range(seeds):
            if bar is not None:
                bar.set_postfix_str(f"width {model_cfg.d_model} seed {seed}")
            runs.append(_one_run(cfg, model_cfg, batches, lr, seed))
            if bar is not None:
                bar.update()
        for stat in STATS:
            for name in names:
                result[stat][name].append(np.mean([r[stat][name] for r in runs], axis=0).tolist())
        result["loss"].append(np.mean([r["loss"] for r in runs], axis=0).tolist())
    if bar is not None:
        bar.close()
    return result


def values(result: dict[str, Any], layer: str, step: int = -1, stat: str = "rms") -> list[float]:
    """Per width (ascending), the `stat` of `layer` at `step` (-1: the last). `layer` is a
    recorded layer name, or a kind (embed, attn, mlp, block, logits): the mean over its layers."""
    if stat not in STATS:
        raise ValueError(f"stat must be one of {STATS}, got {stat!r}")
    if layer in result["layers"]:
        members = [layer]
    else:
        members = [name for name, kind in result["kinds"].items() if kind == layer]
        if not members:
            raise ValueError(f"no layer or layer kind {layer!r}; layers: {', '.join(result['layers'])}")
    per_layer = np.array([[curve[step] for curve in result[stat][name]] for name in members])  # (layers, widths)
    return per_layer.mean(axis=0).tolist()


def spread(result: dict[str, Any], layer: str, step: int = -1, stat: str = "rms") -> float:
    """max / min across widths of `values(result, layer, step, stat)` (1.0 = flat in width)."""
    v = values(result, layer, step, stat)
    lo = min(v)
    return math.inf if lo <= 0 else max(v) / lo


# -- reports --------------------------------------------------------------------------------


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per layer kind at the last step: values per width and their max/min, for both stats."""
    rows = []
    for kind in KINDS:
        row: dict[str, Any] = {"kind": kind}
        for stat in STATS:
            row[stat] = values(result, kind, -1, stat)
            row[f"{stat}_spread"] = spread(result, kind, -1, stat)
        rows.append(row)
    return rows


def format_table(result: dict[str, Any]) -> str:
    widths = result["widths"]
    head = (f"coordinate check: {result['parametrization']}, lr {result['lr']:.3g}, {result['steps']} steps, "
            f"{result['seeds']} seed(s), widths {','.join(map(str, widths))}\n"
            f"max/min across widths at step {result['steps']}:\n"
            f"  {'layer':<8} {'activation RMS':>15} {'change RMS':>11}   change RMS per width")
    lines = [head]
    for row in summary_rows(result):
        per_width = " ".join(f"{v:.3g}" for v in row["delta"])
        lines.append(f"  {row['kind']:<8} {row['rms_spread']:>14.2f}x {row['delta_spread']:>10.2f}x   {per_width}")
    return "\n".join(lines)


def plot_coord_check(result: dict[str, Any], path: str | Path) -> Path:
    """One panel per layer kind (columns) and stat (rows): x = width (log2), y = RMS (log),
    one line per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths, steps = result["widths"], result["steps"]
    fig, axes = plt.subplots(2, len(KINDS), figsize=(3.2 * len(KINDS), 6.4), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for col, kind in enumerate(KINDS):
        for row, stat in enumerate(STATS):
            ax = axes[row][col]
            for t in range(0 if stat == "rms" else 1, steps + 1):
                ys = values(result, kind, t, stat)
                ax.plot(widths, ys, "o-", ms=3, color=cmap(t / max(steps, 1)), label=f"step {t}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(widths, [str(w) for w in widths])
            ax.grid(alpha=0.3, which="both")
            if row == 0:
                ax.set_title(kind)
            else:
                ax.set_xlabel("width (d_model)")
            if col == 0:
                ax.set_ylabel("activation RMS" if stat == "rms" else "RMS of change from init")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"coordinate check ({result['parametrization']}, lr {result['lr']:.3g})")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_coord_check(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """coord_check.json and coord_check.png in `out_dir` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "coord_check.json"
    atomic_write(json_path, json.dumps(result, indent=1))
    return json_path, plot_coord_check(result, out / "coord_check.png")
