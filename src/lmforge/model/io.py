"""A model on disk in lmforge's own layouts, both with `model.yaml` (the `ModelConfig`) and,
when the tokenizer travels with it, `tokenizer.json`:

* consolidated: `model.safetensors`, one file with our parameter names (`save_model`,
  `lmforge checkpoint consolidate`);
* sharded: `model/`, a `torch.distributed.checkpoint` folder as training checkpoints write it
  from any number of ranks.

`load_model` reads either, so `lmforge export` takes a training checkpoint as it is; given a
folder that is neither, `model_folder_problem` says what it is instead (a run folder, a
transformers folder, nothing) and what to pass."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import LmforgeError
from lmforge.fsutil import give_umask_mode, staged_folder
from lmforge.safe_dcp import read_metadata, safe_load
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer

WEIGHTS_FILE = "model.safetensors"
SHARDED_DIR = "model"
CONFIG_FILE = "model.yaml"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
HF_CONFIG_FILE = "config.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


def save_model(model: Transformer, directory: str | Path, tokenizer: Tokenizer | None = None) -> None:
    """Write weights, config and (optionally) tokenizer into `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    write_safetensors(state, directory / WEIGHTS_FILE, metadata={"format": "lmforge"})
    (directory / CONFIG_FILE).write_text(model.cfg.to_yaml())
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory)


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """`safetensors.torch.save_file`, with the file given the umask's mode (it writes 0600)."""
    save_file(tensors, path, metadata=metadata)
    give_umask_mode(path)


def save_tokenizer(tokenizer: Tokenizer, directory: Path) -> None:
    """`tokenizer.json`, plus a `tokenizer_config.json` naming eos/pad when they are not the
    ones `Tokenizer.load` would find by itself (a transformers tokenizer may name others)."""
    tokenizer.save(directory / TOKENIZER_FILE)
    try:
        found = Tokenizer(tokenizer.hf, name=tokenizer.name)
        detected = (found.eos_token, found.pad_token) == (tokenizer.eos_token, tokenizer.pad_token)
    except LmforgeError:  # no eos it would recognise
        detected = False
    if not detected:
        specials = {"eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token}
        (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(specials, indent=2) + "\n")


def load_model(directory: str | Path, *, device: str | torch.device = "cpu") -> Transformer:
    """The model in `directory`: consolidated (`model.safetensors`) or sharded (`model/`)."""
    directory = Path(directory)
    sharded = (directory / SHARDED_DIR / ".metadata").exists()
    if not (directory / CONFIG_FILE).exists():
        raise LmforgeError(model_folder_problem(directory))
    if not (sharded or (directory / WEIGHTS_FILE).exists()):
        raise LmforgeError(
            f"{directory}: not an lmforge model checkpoint (it has {CONFIG_FILE} but neither {WEIGHTS_FILE} nor a "
            f"sharded {SHARDED_DIR}/ folder)"
        )
    cfg = ModelConfig.from_dict(yaml.safe_load((directory / CONFIG_FILE).read_text()), where="model.")
    if sharded:
        return load_sharded(cfg, directory / SHARDED_DIR, device=device)
    state = load_file(directory / WEIGHTS_FILE, device=str(device))
    return assign_weights(cfg, state, where=str(directory))


def load_sharded(cfg: ModelConfig, folder: Path, *, device: str | torch.device = "cpu") -> Transformer:
    """Read a DCP model folder (written by any number of ranks) into one unsharded model."""
    model = Transformer(cfg, device="meta").to_empty(device=device)
    state = model.state_dict()
    stored = read_metadata(folder).state_dict_metadata
    missing = sorted(set(state) - set(stored))
    unexpected = sorted(set(stored) - set(state))
    if missing or unexpected:
        parts = [_first_of("missing key", missing), _first_of("unexpected key", unexpected)]
        raise LmforgeError(f"{folder}: weights do not match the model config: {'; '.join(p for p in parts if p)}")
    for name, tensor in state.items():
        shape = tuple(getattr(stored[name], "size", ()))
        if shape != tuple(tensor.shape):
            raise LmforgeError(f"{folder}: {name} has shape {shape}, the config implies {tuple(tensor.shape)}")
    safe_load(state, folder)
    model.reset_buffers()
    return model


def assign_weights(
    cfg: ModelConfig,
    state: dict[str, torch.Tensor],
    *,
    where: str,
    display: Callable[[str], str] = lambda name: name,
) -> Transformer:
    """A model whose parameters *are* the tensors of `state` (no copy, no init pass).

    Every parameter must be present with the config's shape and nothing else may be, so a
    truncated or mismatched file never loads silently; `display` maps our parameter names to
    the names the user's file uses, for the error message.
    """
    model = Transformer(cfg, device="meta")
    expected = {name: p.shape for name, p in model.state_dict().items()}
    missing = sorted(display(n) for n in set(expected) - set(state))
    unexpected = sorted(display(n) for n in set(state) - set(expected))
    if missing or unexpected:
        parts = [_first_of("missing key", missing), _first_of("unexpected key", unexpected)]
        raise LmforgeError(f"{where}: weights do not match the model config: {'; '.join(p for p in parts if p)}")
    for name, shape in expected.items():
        if state[name].shape != shape:
            raise LmforgeError(
                f"{where}: {display(name)} has shape {tuple(state[name].shape)}, the config implies {tuple(shape)}"
            )
    model.load_state_dict(state, assign=True, strict=True)
    model.reset_buffers()
    return model


def _first_of(what: str, names: list[str]) -> str:
    if not names:
        return ""
    more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
    return f"{what} {names[0]!r}{more}"


def check_tokenizer_fits(cfg: ModelConfig, tokenizer: Tokenizer, where: str) -> None:
    """A tokenizer with more ids than the model has rows was not the model's: refuse it."""
    if tokenizer.vocab_size > cfg.vocab_size:
        raise LmforgeError(
            f"{where}: the tokenizer has {tokenizer.vocab_size:,} ids but the model's vocabulary is "
            f"{cfg.vocab_size:,}; use the tokenizer the model was trained with"
        )


def load_model_tokenizer(directory: str | Path) -> Tokenizer | None:
    """The tokenizer saved beside a model (with its tokenizer_config.json, if any), or None."""
    directory = Path(directory)
    return Tokenizer.load(directory) if (directory / TOKENIZER_FILE).exists() else None


def is_hf_folder(directory: str | Path) -> bool:
    """A transformers model folder (config.json) rather than one of lmforge's (model.yaml)."""
    directory = Path(directory)
    return (directory / HF_CONFIG_FILE).exists() and not (directory / CONFIG_FILE).exists()


def model_folder_problem(directory: str | Path) -> str:
    """One line saying why `directory` holds no model, and what to pass instead."""
    directory = Path(directory)
    if not directory.exists():
        return f"{directory} does not exist"
    if not directory.is_dir():
        return f"{directory} is a file; pass the folder that holds the model ({CONFIG_FILE} or {HF_CONFIG_FILE})"
    root = directory / "checkpoints" if (directory / "checkpoints").is_dir() else directory
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir())
    complete = [p for _, p in steps if (p / "manifest.json").exists()]
    if complete:
        what = "a run folder" if root != directory else "a run's checkpoints folder"
        return f"{directory} is {what}, not a checkpoint; pass one of its checkpoints, e.g. {complete[-1]}"
    if root != directory or (directory / "config.yaml").exists() or (directory / "metrics.jsonl").exists():
        return f"{directory} is a run folder with no complete checkpoint yet (nothing in {root})"
    return (f"{directory} is not a model checkpoint: it has neither {CONFIG_FILE} (lmforge) nor {HF_CONFIG_FILE} "
            "(transformers)")


def consolidate(checkpoint: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """One `model.safetensors` + `model.yaml` (+ tokenizer) from any model checkpoint, written
    into a staged folder that appears only when complete."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise LmforgeError(f"{out_dir} exists; pass --overwrite to replace it")
    model = load_model(checkpoint)
    with staged_folder(out_dir) as staging:
        save_model(model, staging, load_model_tokenizer(checkpoint))
    return out_dir
