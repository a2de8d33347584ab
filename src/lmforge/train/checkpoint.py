"""Checkpoints that are complete or invisible.

`checkpoints/step-N/` holds the model (`model.safetensors` + `model.yaml`, the layout
`lmforge export` reads), `optim.pt`, `trainer.json` (step, data position, callback state),
`rng.pt`, the resolved `config.yaml`, the tokenizer, and last `manifest.json` listing every
file with its size. It is written under a hidden name, fsynced and renamed; only then is the
`latest` pointer replaced (temp file, fsync, rename). Loading checks the manifest and walks
back to the newest complete checkpoint if `latest` points at a damaged one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest"
STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(root: Path, step: int, write_files) -> Path:
    """Create `root/step-{step}` atomically. `write_files(folder)` writes the contents."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    staging = root / f".step-{step}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    write_files(staging)
    files = {}
    for f in sorted(staging.iterdir()):
        with open(f, "rb+") as handle:
            os.fsync(handle.fileno())
        files[f.name] = f.stat().st_size
    (staging / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
    _fsync_dir(staging)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    _fsync_dir(root)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(final.name + "\n")
    with open(pointer, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(pointer, root / LATEST)
    _fsync_dir(root)
    return final


def check_complete(folder: Path) -> str | None:
    """None if `folder` is a complete checkpoint, else what is wrong with it."""
    manifest = folder / MANIFEST
    if not manifest.exists():
        return f"{MANIFEST} is missing"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError):
        return f"{MANIFEST} is unreadable"
    for name, size in files.items():
        path = folder / name
        if not path.exists():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {size}"
    return None


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every step-N folder, newest first."""
    if not root.exists():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found, reverse=True)


def find_resumable(root: Path) -> Path | None:
    """The checkpoint to resume from: `latest` if complete, else the newest complete one
    (saying why the others were skipped); None if there is none."""
    candidates = [p for _, p in step_dirs(root)]
    pointer = root / LATEST
    if pointer.exists():
        named = root / pointer.read_text().strip()
        candidates = [named] + [p for p in candidates if p != named]
    for folder in candidates:
        problem = check_complete(folder) if folder.exists() else "it does not exist"
        if problem is None:
            return folder
        log.warning(f"checkpoint {folder} is incomplete ({problem}); falling back to the previous one")
    return None


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints (0 keeps everything)."""
    if keep <= 0:
        return
    complete = [p for _, p in step_dirs(root) if check_complete(p) is None]
    for folder in complete[keep:]:
        shutil.rmtree(folder, ignore_errors=True)


def load_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a damaged file must not crash with a pickle traceback
        raise LmforgeError(f"{path}: cannot be read ({e})") from None
