"""Faults, injected on purpose (test-only; `tests/dist_worker.py`, the tests and
`benchmarks/faults.py` use them): each is a callback, most act on the first attempt only (under
torchrun's restarts, `TORCHELASTIC_RESTART_COUNT` is 0), and each appends what it did and when
to RUN/faults/injected.jsonl, so a harness can time the detection against it.

- `InjectNaN`: the given steps' forward is NaN on every rank.
- `HangRank`: one rank sleeps inside its first block's forward (stuck in compute).
- `FreezeRank`: one rank SIGSTOPs itself inside its first block's forward (a frozen node).
- `SlowRank`: one rank sleeps a fixed time in every block's forward, every step (a straggler).
- `FillDisk`: before a checkpoint step, a ballast file fills the run dir's file system; the
  next attempt removes it (space freed by an operator).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path

from lmforge.train.callback import Callback, append_jsonl

INJECTED = Path("faults") / "injected.jsonl"
BALLAST = "ballast.bin"


def first_attempt() -> bool:
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"


def record(trainer, kind: str, **fields) -> None:
    (trainer.run_dir / INJECTED).parent.mkdir(parents=True, exist_ok=True)
    append_jsonl(trainer.run_dir / INJECTED, {"kind": kind, "rank": trainer.world.rank, "step": trainer.step,
                                              "time": time.time(), **fields})


def read_injected(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / INJECTED
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class InjectNaN(Callback):
    """Makes the given steps' forward NaN on every rank (the embedding's output times NaN), so
    loss and every gradient are NaN; `first_attempt_only` under torchrun's restarts."""

    name = "inject_nan"
    priority = 100

    def __init__(self, steps, first_attempt_only: bool = False):
        self.steps, self.handle = set(steps), None
        self.active = not first_attempt_only or first_attempt()

    def pre_step(self, trainer, batch):
        if self.active and trainer.step in self.steps:
            if trainer.world.is_main:
                record(trainer, "nan")
            embed = trainer.module.model.embed
            self.handle = embed.register_forward_hook(lambda module, args, out: out * float("nan"))

    def post_step(self, trainer, metrics):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


class _InFirstBlock(Callback):
    """Runs `act` on one rank, inside its first block's forward at the given step (first attempt)."""

    priority = 100
    kind = ""

    def __init__(self, rank: int, step: int):
        self.rank, self.step, self.name = rank, step, f"inject_{self.kind}"

    def pre_step(self, trainer, batch):
        if trainer.step == self.step and trainer.world.rank == self.rank and first_attempt():
            def hook(module, args):
                record(trainer, self.kind)
                self.act()

            trainer.module.model.blocks[0].register_forward_pre_hook(hook)

    def act(self) -> None: ...


class HangRank(_InFirstBlock):
    kind = "hang"

    def act(self) -> None:
        time.sleep(3600)  # the watchdog ends the process long before


class FreezeRank(_InFirstBlock):
    kind = "freeze"

    def act(self) -> None:
        os.kill(os.getpid(), signal.SIGSTOP)


class SlowRank(Callback):
    """`delay_s` more in each of one rank's block forwards, every step, every attempt."""

    name = "inject_slow"

    def __init__(self, rank: int, delay_s: float):
        self.rank, self.delay_s = rank, delay_s

    def on_train_start(self, trainer):
        if trainer.world.rank == self.rank:
            record(trainer, "slow", delay_s=self.delay_s)
            for block in trainer.module.model.blocks:
                # Inside the block's compute: after FSDP's all-gather and the straggler clock's start.
                block.register_forward_pre_hook(lambda module, args: time.sleep(self.delay_s))


class FillDisk(Callback):
    """Fills the run dir's file system before `step` (a checkpoint step) on the first attempt;
    any later attempt frees it first."""

    name = "inject_disk_full"
    priority = 100

    def __init__(self, step: int):
        self.step = step

    def on_train_start(self, trainer):
        ballast = trainer.run_dir / BALLAST
        if not first_attempt() and trainer.world.is_main and ballast.exists():
            ballast.unlink()
        trainer.world.barrier()

    def pre_step(self, trainer, batch):
        if trainer.step == self.step and trainer.world.is_main and first_attempt():
            record(trainer, "disk_full")
            fill(trainer.run_dir / BALLAST)
        if trainer.step == self.step:
            trainer.world.barrier()  # no rank writes its checkpoint before the disk is full


def fill(path: Path, leave: int = 64 << 10) -> None:
    """Write zeros to `path` until the file system is full, then give back `leave` bytes: room
    for metrics rows and heartbeats, none for a checkpoint. Unbuffered: nothing is left to
    flush, and fail, on close."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
    os.truncate(path, max(path.stat().st_size - leave, 0))
