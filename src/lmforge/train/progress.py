"""Where this rank is: the step and the phase of it, with how long each phase has lasted.

The training thread marks phases as it goes (`enter`, `during`); the watchdog's thread reads
them to decide whether a phase has stalled, and the straggler monitor reads the time spent
waiting for data. Writes are single attribute assignments, which the other thread may read
at any moment without a lock (a reader sees the old or the new value, never a torn one).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator

PHASES = ("start", "data", "forward_backward", "optimizer", "callbacks", "eval", "checkpoint", "end")
LONG_PHASES = frozenset({"start", "eval", "checkpoint", "end"})
"""Phases whose length has nothing to do with a step's: resuming and the first step (compile,
first gathers), evaluations, checkpoint writes."""


class Progress:
    def __init__(self) -> None:
        self.step = 0
        self.phase = "start"
        self.since = time.monotonic()
        self.first_step = True  # the first step of this process compiles and warms up: a long budget
        self.data_s = 0.0  # seconds spent waiting for batches, summed (the straggler monitor resets it)
        self._step_start = self.since
        self._step_times: deque[float] = deque(maxlen=32)
        self.on_long_change: Callable[[bool], None] | None = None
        """Called with True when a long phase begins and False when it ends (the watchdog
        loosens and tightens the collectives' timeout)."""

    @property
    def long(self) -> bool:
        return self.phase in LONG_PHASES or self.first_step

    def enter(self, phase: str) -> None:
        was_long = self.long
        now = time.monotonic()
        if self.phase == "data":
            self.data_s += now - self.since
        if phase == "callbacks" and self.phase in ("forward_backward", "optimizer"):
            self._step_times.append(now - self._step_start)  # data + forward/backward + optimizer
            self.first_step = False
        self.phase, self.since = phase, now
        if self.on_long_change is not None and self.long != was_long:
            self.on_long_change(self.long)

    def begin_step(self, step: int) -> None:
        """A new step starts by waiting for its batch."""
        self.step = step
        self.enter("data")
        self._step_start = self.since

    @contextlib.contextmanager
    def during(self, phase: str) -> Iterator[None]:
        """A phase nested in another (an evaluation inside the callbacks); the outer one
        resumes with a fresh clock."""
        outer = self.phase
        self.enter(phase)
        try:
            yield
        finally:
            self.enter(outer)

    def typical_step_s(self) -> float | None:
        """The median of the recent steps' durations (evaluations and checkpoints excluded),
        or None before the first step has finished."""
        return statistics.median(self._step_times) if self._step_times else None

    def phase_s(self) -> float:
        return time.monotonic() - self.since
