"""SIGTERM means "stop soon": a preemption notice, a scheduler's time limit, torchrun shutting its
workers down. The handler only sets a flag; after each step the ranks agree whether any of them
got one (a signal may reach one rank only), then all write a checkpoint of that step and leave
the loop together, so the relaunch continues exactly where this run stopped.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import torch

from lmforge.parallel import World


class StopSignal:
    """Within `with StopSignal() as stop:`, SIGTERM sets `stop.received` instead of ending the
    process (the previous handler comes back on exit). Outside the main thread, where Python
    cannot install handlers, it never fires."""

    def __init__(self, signum: int = signal.SIGTERM):
        self.signum = signum
        self.received = False
        self._previous = None

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = True

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    def agreed(self, world: World) -> bool:
        """Whether any rank has received the signal (a collective: every rank calls it each step)."""
        if not (world.distributed and world.size > 1):
            return self.received
        flag = torch.tensor([float(self.received)], device=world.device)
        return bool(world.all_reduce_sum(flag) > 0)
