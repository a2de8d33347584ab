"""Stragglers: the rank that makes every step slow.

Step times are equal on every rank (the collectives wait for the slowest), so they cannot say
which rank is slow. Each rank measures its own compute instead: the forward time of its
blocks, between FSDP's all-gather (whose hook runs first) and its reshard (ours is prepended),
so waiting for others is left out. It also counts the time it waits for its batches. On
logging steps the ranks share their per-step means (one all-reduce), and every rank applies
the same rule to the same numbers: a rank whose compute exceeds the median by
`faults.straggler_rel_margin` *and* by `faults.straggler_abs_margin_s` in most of the last
`faults.straggler_windows` windows is a straggler. It is listed in metrics.jsonl
(`straggler_ranks`) and RUN/stragglers.jsonl (host, ratio to the median). With
`faults.evict_stragglers` the run stops after the next checkpoint (exit 76), its hosts in
RUN/faults/last.json for a requeue to leave out.
"""

from __future__ import annotations

import json
import logging
import socket
import statistics
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import torch

from lmforge.errors import StragglersEvicted
from lmforge.fsutil import atomic_write
from lmforge.parallel import cuda
from lmforge.train.callback import Callback, append_jsonl
from lmforge.train.config import FaultsConfig
from lmforge.train.watchdog import LAST

if TYPE_CHECKING:
    from lmforge.train.trainer import Trainer

log = logging.getLogger(__name__)

STRAGGLERS_FILE = "stragglers.jsonl"


def slow_ranks(compute_s: list[float], rel_margin: float, abs_margin_s: float) -> list[int]:
    """Ranks above the median by both margins (one window)."""
    median = statistics.median(compute_s)
    return [r for r, c in enumerate(compute_s) if c > median * (1 + rel_margin) and c - median > abs_margin_s]


def named_stragglers(windows: list[list[int]], of: int) -> list[int]:
    """Ranks slow in more than half of the last `of` windows (`windows`: each one's slow ranks)."""
    need = of // 2 + 1
    return sorted({r for w in windows for r in w if sum(r in v for v in windows) >= need})


class BlockClock:
    """Seconds this rank spends in its blocks' forward: a host timer on CPU, where the work
    runs in the call; CUDA events on GPU, where the call only queues it."""

    def __init__(self, blocks: torch.nn.ModuleList, device: torch.device):
        self.on_gpu = device.type == "cuda"
        self.seconds = 0.0
        self._start: Any = None
        self._events: list[tuple[Any, Any]] = []  # GPU: (start, end) pairs not yet read
        self.handles = []
        for block in blocks:
            self.handles.append(block.register_forward_pre_hook(self._begin))  # after FSDP's all-gather
            self.handles.append(block.register_forward_hook(self._end, prepend=True))  # before its reshard

    def _begin(self, module, args) -> None:
        if self.on_gpu:
            self._start = cuda.timing_event()
            self._start.record()
        else:
            self._start = time.perf_counter()

    def _end(self, module, args, out) -> None:
        if self.on_gpu:
            end = cuda.timing_event()
            end.record()
            self._events.append((self._start, end))
        else:
            self.seconds += time.perf_counter() - self._start

    def take(self) -> float:
        """The seconds since the last take (on GPU this waits for the blocks' work)."""
        seconds = self.seconds + sum(cuda.elapsed_s(start, end) for start, end in self._events)
        self.seconds, self._events = 0.0, []
        return seconds

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class StragglerMonitor(Callback):
    priority = 28  # after the speed monitor's host sync, before the logger writes the row
    name = "stragglers"

    def __init__(self, cfg: FaultsConfig):
        self.cfg = cfg
        self.clock: BlockClock | None = None
        self.windows: deque[list[int]] = deque(maxlen=cfg.straggler_windows)
        self.evict: list[dict[str, Any]] = []

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.world.size == 1:
            return
        self.hosts = trainer.world.all_gather_object(socket.gethostname())
        self.clock = BlockClock(trainer.module.model.blocks, trainer.world.device)
        self.steps = 0
        trainer.progress.data_s = 0.0

    def pre_step(self, trainer: Trainer, batch) -> None:
        # The step after the one that wrote a checkpoint: leave, for a requeue without them.
        if self.evict and trainer.saved_step == trainer.step - 1:
            trainer.finish_checkpoint()
            self.evict_now(trainer)

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.clock is None:
            return
        self.steps += 1
        if trainer.step % trainer.cfg.trainer.log_every:
            return
        world, steps = trainer.world, self.steps
        # Every rank's [compute, data wait] per step, in one all-reduce of a (ranks, 2) table.
        table = torch.zeros(world.size, 2, device=world.device, dtype=torch.float64)
        table[world.rank] = torch.tensor([self.clock.take() / steps, trainer.progress.data_s / steps])
        compute, data = world.all_reduce_sum(table).cpu().T.tolist()
        trainer.progress.data_s, self.steps = 0.0, 0
        self.windows.append(slow_ranks(compute, self.cfg.straggler_rel_margin, self.cfg.straggler_abs_margin_s))
        named = named_stragglers(list(self.windows), self.cfg.straggler_windows)
        metrics["straggler_ranks"] = named
        if not named:
            return
        median = statistics.median(compute)
        rows = [{"step": trainer.step, "time": time.time(), "rank": r, "host": self.hosts[r],
                 "ratio": round(compute[r] / median, 3),
                 "compute_s": compute[r], "median_compute_s": median, "data_s": data[r]} for r in named]
        if world.is_main:
            for row in rows:
                append_jsonl(trainer.run_dir / STRAGGLERS_FILE, row)
        if self.cfg.evict_stragglers and not self.evict:
            self.evict = rows
            if world.is_main:
                log.warning(f"step {trainer.step}: straggler(s) " + ", ".join(f"rank {r['rank']} ({r['host']}, "
                            f"{r['ratio']:.2f}× the median)" for r in rows) + "; stopping after the next checkpoint "
                            "(faults.evict_stragglers)")

    def evict_now(self, trainer: Trainer) -> None:
        record = {"kind": "straggler", "suspects": [{"rank": r["rank"], "host": r["host"], "ratio": r["ratio"]}
                                                    for r in self.evict],
                  "step": trainer.step - 1, "time": time.time(), "exit_code": StragglersEvicted.exit_code}
        if trainer.world.is_main:
            (trainer.run_dir / LAST).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(trainer.run_dir / LAST, json.dumps(record, indent=1))
        hosts = ", ".join(sorted({r["host"] for r in self.evict}))
        raise StragglersEvicted(f"stopped after the checkpoint of step {trainer.step - 1} to leave out straggling "
                                f"host(s) {hosts} (faults.evict_stragglers; {trainer.run_dir / LAST}); requeue "
                                "without them and it resumes there")

    def on_train_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.clock is not None:
            self.clock.remove()
