"""Checkpoints that are complete or invisible, written and read by any number of ranks.

    step-N/model/        parameters by name (torch.distributed.checkpoint: every rank writes its
                         shards, any number of ranks reads them back, resharded)
    step-N/optim/        AdamW state by parameter name (the same)
    step-N/rng/rank-R.json   each rank's RNG states
    step-N/trainer.json  step, tokens, data position, callback states;  model.yaml, config.yaml,
                         tokenizer.json;  manifest.json (every file with its size), written last

All ranks write into `.step-N.partial/`; after a barrier rank 0 alone fsyncs, writes the
manifest, renames the folder to `step-N` and then replaces the `latest` pointer (temp file,
fsync, rename). Loading checks the manifest and walks back to the newest complete checkpoint
if `latest` names a damaged one. Nothing in a checkpoint is unpickled with code execution:
DCP's metadata and entries are read through `lmforge.safe_dcp`, everything else is JSON/YAML.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from lmforge.errors import LmforgeError
from lmforge.fsutil import atomic_write, fsync_dir
from lmforge.parallel import World, cuda
from lmforge.safe_dcp import safe_load

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest"
STEP_DIR = re.compile(r"^step-(\d+)$")


# -- RNG state as JSON (a pickled RNG state would be code to execute on load) ------------------------


def rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if (cuda_state := cuda.rng_state()) is not None:
        state["cuda"] = cuda_state
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and cuda.is_available():
        cuda.set_rng_state(state["cuda"])


# -- sharded state (collective: every rank calls these) ------------------------------------------------


def save_state(folder: Path, state: dict[str, dict[str, Any]], *, background: bool = False,
               process_groups: dict[str, Any] | None = None) -> list[Future]:
    """Each top-level entry of `state` (e.g. 'model', 'optim') into its own DCP folder.

    With `background`, the tensors are copied to host memory now and written by threads
    (`dcp.async_save`), so training goes on; the returned futures say when the files are
    written. `process_groups[key]` is the group the thread writing `key` uses for its
    collectives: one gloo group per entry, because the entries' threads run at the same time
    and collectives of two threads on one group would pair up differently on each rank."""
    futures = []
    for key, value in state.items():
        with warnings.catch_warnings():  # "assuming the intent is to save in a single process"
            warnings.filterwarnings("ignore", message=".*single process.*")
            if background:
                group = (process_groups or {}).get(key)
                result = dcp.async_save(value, checkpoint_id=folder / key, process_group=group)
                futures.append(getattr(result, "upload_completion", result))  # 2.13 may return a response object
            else:
                dcp.save(value, checkpoint_id=folder / key)
    return futures


def load_state(folder: Path, state: dict[str, dict[str, Any]]) -> None:
    """Fill `state` (shaped like what was saved, e.g. from `TrainModule.state_dict()`) in place."""
    for key, value in state.items():
        safe_load(value, folder / key)


# -- atomic folders -------------------------------------------------------------------------------------


@dataclass
class PendingCheckpoint:
    """A checkpoint whose files are (being) written into `staging`, not yet visible."""

    root: Path
    step: int
    staging: Path
    writes: list[Future] = field(default_factory=list)

    @property
    def final(self) -> Path:
        return self.root / f"step-{self.step}"


class CheckpointWriteError(LmforgeError):
    """A checkpoint could not be written (disk full, permissions, …), decided alike on every
    rank; its staging folder is removed and `latest` still names the previous checkpoint."""


# What DCP raises when one rank's write fails: every rank gets it. (It derives from
# BaseException, not Exception.)
WRITE_ERRORS = (Exception, CheckpointException)


def begin_checkpoint(root: Path, step: int, world: World, write_all: Callable[[Path], list[Future]],
                     write_main: Callable[[Path], None]) -> PendingCheckpoint:
    """Start `root/step-{step}`. Every rank calls this: `write_all(folder)` runs on every rank
    (collective writes first, so a failure there reaches every rank; it returns the futures of
    writes still running in the background), `write_main(folder)` on rank 0 only. Nothing is
    visible until `finish_checkpoint`. A failed write on any rank raises CheckpointWriteError
    on every rank."""
    staging = root / f".step-{step}.partial"
    pending = PendingCheckpoint(root, step, staging)
    failure = None
    if world.is_main:
        try:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
        except OSError as e:
            failure = e
    _agree(pending, world, failure)  # also the barrier: the folder exists for everyone
    try:
        pending.writes = write_all(staging)
        if world.is_main:
            write_main(staging)
    except WRITE_ERRORS as e:
        failure = e
    _agree(pending, world, failure)
    return pending


def finish_checkpoint(pending: PendingCheckpoint, world: World) -> Path:
    """Wait for the writes, then rank 0 seals the folder, renames it and moves `latest`."""
    failure = None
    try:
        for write in pending.writes:
            write.result()
    except WRITE_ERRORS as e:
        failure = e
    _agree(pending, world, failure)  # every rank's files are written
    final = pending.final
    if world.is_main:
        try:
            _seal(pending.staging, pending.step)
            if final.exists():
                shutil.rmtree(final)
            os.replace(pending.staging, final)
            fsync_dir(pending.root)
            atomic_write(pending.root / LATEST, final.name + "\n", durable=True)
        except OSError as e:
            failure = e
    _agree(pending, world, failure)  # nobody moves on (or dies) believing a checkpoint exists before it does
    return final


def _agree(pending: PendingCheckpoint, world: World, failure: BaseException | None) -> None:
    """A barrier that also carries each rank's write failure: if any rank failed, every rank
    raises the same one-line CheckpointWriteError (rank 0 first removes the staging folder)."""
    reasons = world.all_gather_object(None if failure is None else describe_write_failure(failure, pending.staging))
    failed = [(rank, reason) for rank, reason in enumerate(reasons) if reason is not None]
    if not failed:
        return
    if world.is_main:
        shutil.rmtree(pending.staging, ignore_errors=True)  # free what it took
    rank, reason = failed[0]
    latest = pending.root / LATEST
    still = latest.read_text().strip() if latest.exists() else "none"
    where = f" (rank {rank})" if world.size > 1 else ""
    raise CheckpointWriteError(f"step {pending.step}: checkpoint not written to {pending.root}{where}: {reason}; "
                               f"{LATEST} is still {still}")


def describe_write_failure(error: BaseException, folder: Path) -> str:
    """The OS error behind a failed write, in words ("No space left on device"), found in the
    exception chain or DCP's per-rank failures; torch's serializer reports a full disk only as
    "unexpected pos", so a nearly full file system is named as such."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return f"{os.strerror(e.errno)} [errno {e.errno}]"
        if isinstance(e, CheckpointException):
            todo += [exc for exc, _trace in e.failures.values()]
        todo += [x for x in (e.__cause__, e.__context__) if x is not None]
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and shutil.disk_usage(existing).free < 16 * 2**20:
        free = shutil.disk_usage(existing).free
        return f"No space left on device ({free:,} bytes free on its file system)"
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _seal(staging: Path, step: int) -> None:
    """fsync every file and folder, then write the manifest that makes the folder complete."""
    files = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
        files[path.relative_to(staging).as_posix()] = path.stat().st_size
    for folder in sorted({p.parent for p in staging.rglob("*")}, key=lambda p: -len(p.parts)):
        fsync_dir(folder)
    atomic_write(staging / MANIFEST, json.dumps({"step": step, "files": files}, indent=1), durable=True)
    fsync_dir(staging)


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


def find_resumable(root: Path, *, quiet: bool = False) -> Path | None:
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
        if not quiet:
            log.warning(f"checkpoint {folder} is incomplete ({problem}); falling back to the previous one")
    return None


def prune(root: Path, keep: int, keep_steps: Iterable[int] = ()) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints (0 keeps everything), never
    those of `keep_steps`; returns the folders deleted, oldest first."""
    if keep <= 0:
        return []
    pinned = set(keep_steps)
    complete = [(step, p) for step, p in step_dirs(root) if check_complete(p) is None]
    deleted = [folder for step, folder in complete[keep:] if step not in pinned]
    for folder in deleted:
        shutil.rmtree(folder, ignore_errors=True)
    return deleted[::-1]


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LmforgeError(f"{path}: cannot be read ({e})") from None
