"""A hang, turned into a clean exit that names the stuck rank.

A hung collective gives no clue: every rank waits in it for the process group's timeout and
then fails alike. Here each rank's own thread rewrites a small heartbeat file every
`faults.heartbeat_s` (RUN/faults/heartbeat/rank-R.json: step, phase, how long the phase has
lasted, whether the training thread is inside a collective, and where). Files, not the c10d
store: the store is hosted by one rank, so a store-based watchdog goes blind exactly when
that rank freezes.

When this rank's phase outlasts its budget, `max(faults.stall_floor_s, faults.stall_factor ×
typical step time)` (`faults.stall_long_s` for the first step, evaluations and checkpoints),
it reads every heartbeat and names the suspects (`diagnose`):

- frozen_or_dead: ranks whose heartbeat stopped (SIGSTOP, a dead node, a process stuck
  holding the GIL);
- behind: ranks outside any collective while the others wait inside one (stuck in compute,
  in data loading, in a file write);
- collective_mismatch: every rank inside a collective, but not all at the same step and
  phase (the minority is named);
- collective: every rank inside the same collective (the network or NCCL: nobody is named;
  on GPU the NCCL flight recorder's dumps say more);
- stalled: no rank in a collective and all stalled (a single-process run, a shared file system).

The first rank to decide writes RUN/faults/hang-LAUNCH.json and RUN/faults/last.json (kind,
suspects with their hosts, step, phase, budget, where the stacks are) and logs one line;
every rank that sees that file (or decides by itself) appends all its Python stacks to
RUN/faults/stacks/rank-R.txt (`faulthandler`) and exits with `HANG_EXIT_CODE`, so a wrapper
(torchrun's restarts, `scripts/slurm_train.sbatch`) can tell a hang from a bug. A frozen
rank on the detecting rank's host is sent SIGUSR1 (to its training thread, so the dump runs on
that thread before it executes anything more) and SIGCONT: it dumps where it froze, then sees
the record, dumps again and exits.

Backstops: `faulthandler.dump_traceback_later` dumps the stacks and exits when the watchdog's
own thread cannot run (Python itself stuck), and `kill -USR1 PID` dumps a rank's stacks at any
time. After the first step the collectives' timeout is tightened to
`faults.collective_timeout_s` (loosened again during checkpoints and evaluations), as
torchtitan does, so what the watchdog misses still fails in minutes, not half an hour.
"""

from __future__ import annotations

import ctypes
import datetime
import faulthandler
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from lmforge.errors import HANG_EXIT_CODE
from lmforge.fsutil import atomic_write
from lmforge.parallel import World
from lmforge.train.config import FaultsConfig
from lmforge.train.progress import Progress

log = logging.getLogger(__name__)

FAULTS = Path("faults")
LAST = FAULTS / "last.json"
HEARTBEATS = FAULTS / "heartbeat"
STACKS = FAULTS / "stacks"

_TORCH_DISTRIBUTED = f"{os.sep}torch{os.sep}distributed{os.sep}"
_TORCH_DCP = f"{_TORCH_DISTRIBUTED}checkpoint{os.sep}"


def in_collective(frame) -> bool:
    """Whether a thread's Python stack is inside torch.distributed: a collective, or FSDP or
    DCP waiting for one. Checkpoint file writes (DCP's own frames) do not count."""
    while frame is not None:
        name = frame.f_code.co_filename
        if _TORCH_DISTRIBUTED in name and _TORCH_DCP not in name:
            return True
        frame = frame.f_back
    return False


def where(frame) -> str:
    """The innermost frame outside torch, as file:line function: the code that waits."""
    first = frame
    while frame is not None:
        name = frame.f_code.co_filename
        if f"{os.sep}torch{os.sep}" not in name and f"{os.sep}threading.py" not in name:
            return f"{name}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back
    return "" if first is None else f"{first.f_code.co_filename}:{first.f_lineno} {first.f_code.co_name}"


def signal_thread(pid: int, tid: int | None, signum: int) -> None:
    """Send `signum` to one thread of another process (Linux `tgkill`), else to the process.

    A process-directed signal is handled by whichever of its threads the kernel picks; a frozen
    rank's training thread then runs on while another thread dumps, and the stack no longer
    shows where it froze. A thread-directed one runs the handler on that thread first."""
    if tid:
        tgkill = getattr(_libc(), "tgkill", None)
        if tgkill is not None and tgkill(ctypes.c_int(pid), ctypes.c_int(tid), ctypes.c_int(signum)) == 0:
            return
    os.kill(pid, signum)


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # no C library to open (not Linux or macOS)
        return None


def diagnose(beats: dict[int, dict[str, Any] | None], now: float, stale_after: float) -> tuple[str, list[int]]:
    """(kind, suspect ranks) from every rank's latest heartbeat (None: no file this launch).
    `now` and the heartbeats' `time` are wall-clock seconds."""
    stale = sorted(r for r, b in beats.items() if b is None or now - b["time"] > stale_after)
    if stale:
        return "frozen_or_dead", stale
    inside = {r for r, b in beats.items() if b and b["in_collective"]}
    outside = sorted(set(beats) - inside)
    if inside and outside:
        return "behind", outside
    if not inside:
        return "stalled", outside
    where_at = {r: (b["step"], b["phase"]) for r, b in beats.items() if b and r in inside}
    counts = Counter(where_at.values())
    if len(counts) == 1:
        return "collective", []
    majority = max(counts, key=lambda k: (counts[k], k))
    return "collective_mismatch", sorted(r for r, k in where_at.items() if k != majority)


class Watchdog:
    """`with Watchdog(...):` around training; a daemon thread does the rest."""

    def __init__(self, cfg: FaultsConfig, run_dir: Path, world: World, progress: Progress, launch: str):
        self.cfg, self.world, self.progress, self.launch = cfg, world, progress, launch
        self.run_dir = run_dir
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.beat_path = run_dir / HEARTBEATS / f"rank-{world.rank}.json"
        self.stack_path = run_dir / STACKS / f"rank-{world.rank}.txt"
        self.incident_path = run_dir / FAULTS / f"hang-{launch}.json"
        self._main = threading.get_ident()  # the training thread: the one whose stack tells where it waits
        self._main_tid = threading.get_native_id()  # the same thread, as the kernel names it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lmforge-watchdog", daemon=True)
        self._stacks = None
        self._warned: set[str] = set()
        self._dumped = False  # this rank's stacks are out (the others wait for it before exiting)

    # -- lifetime -----------------------------------------------------------------------------
    def __enter__(self) -> Watchdog:
        (self.run_dir / HEARTBEATS).mkdir(parents=True, exist_ok=True)
        self.stack_path.parent.mkdir(parents=True, exist_ok=True)
        self._stacks = open(self.stack_path, "a")  # kept open: faulthandler writes to its fd from C
        if threading.current_thread() is threading.main_thread():
            faulthandler.register(signal.SIGUSR1, file=self._stacks, all_threads=True)
        self.progress.on_long_change = self._on_long_change
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10 * self.cfg.heartbeat_s)
        faulthandler.cancel_dump_traceback_later()
        if threading.current_thread() is threading.main_thread():
            faulthandler.unregister(signal.SIGUSR1)
        self.progress.on_long_change = None
        if self._stacks is not None:
            self._stacks.close()

    def budget_s(self) -> float:
        """How long the current phase may last."""
        if self.progress.long:
            return self.cfg.stall_long_s
        typical = self.progress.typical_step_s() or 0.0
        return max(self.cfg.stall_floor_s, self.cfg.stall_factor * typical)

    # -- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.cfg.heartbeat_s):
            try:
                self._tick()
            except Exception as error:  # the watchdog must never be what kills a healthy run
                said = f"{type(error).__name__}: {error}"
                if said not in self._warned:  # once each (a full disk fails every heartbeat)
                    self._warned.add(said)
                    log.warning(f"watchdog (rank {self.world.rank}): {said}")

    def _tick(self) -> None:
        budget = self.budget_s()
        # If this thread cannot run for this long (Python stuck), faulthandler's C thread dumps
        # the stacks and exits the process (code 1).
        faulthandler.dump_traceback_later(2 * budget + 10 * self.cfg.heartbeat_s, exit=True, file=self._stacks)
        self._beat()
        if self.incident_path.exists():
            self._dump_and_exit(json.loads(self.incident_path.read_text()))
        elif self.progress.phase_s() > budget:
            self._detect(budget)

    def _beat(self) -> None:
        frame = sys._current_frames().get(self._main)
        p = self.progress
        beat = {"rank": self.world.rank, "host": self.host, "pid": self.pid, "tid": self._main_tid,
                "launch": self.launch, "step": p.step, "phase": p.phase, "phase_s": round(p.phase_s(), 3),
                "in_collective": in_collective(frame), "where": where(frame), "dumped": self._dumped,
                "time": time.time()}
        atomic_write(self.beat_path, json.dumps(beat))

    def read_beats(self) -> dict[int, dict[str, Any] | None]:
        beats: dict[int, dict[str, Any] | None] = {}
        for rank in range(self.world.size):
            try:
                beat = json.loads((self.run_dir / HEARTBEATS / f"rank-{rank}.json").read_text())
            except (OSError, json.JSONDecodeError):
                beat = None
            beats[rank] = beat if beat and beat.get("launch") == self.launch else None
        return beats

    def _detect(self, budget: float) -> None:
        beats = self.read_beats()
        kind, suspects = diagnose(beats, time.time(), stale_after=budget / 2)
        p = self.progress
        incident = {
            "kind": kind,
            "suspects": [{"rank": r, **_pick(beats[r], "host", "pid", "tid", "step", "phase", "where")}
                         for r in suspects],
            "step": p.step, "phase": p.phase, "stalled_s": round(p.phase_s(), 1), "budget_s": round(budget, 1),
            "detected_by": self.world.rank, "launch": self.launch, "time": time.time(),
            "stacks": str(self.run_dir / STACKS), "heartbeats": {r: b for r, b in beats.items()},
            "exit_code": HANG_EXIT_CODE,
        }
        # The first rank to decide writes the record; the others dump and follow.
        if not create_once(self.incident_path, json.dumps(incident, indent=1), self.world.rank):
            self._dump_and_exit(json.loads(self.incident_path.read_text()))
            return
        atomic_write(self.run_dir / LAST, json.dumps(incident, indent=1))
        named = ", ".join(f"rank {s['rank']} ({s.get('host', '?')})" for s in incident["suspects"]) or "no single rank"
        log.error(f"hang ({kind}): {named}; step {p.step}, phase {p.phase} stalled {p.phase_s():.0f}s > budget "
                  f"{budget:.0f}s; stacks in {self.run_dir / STACKS}, record {self.run_dir / LAST}; "
                  f"exiting with code {HANG_EXIT_CODE}")
        if kind == "frozen_or_dead":  # a frozen rank on this host: dump where it froze (SIGUSR1 is
            for s in incident["suspects"]:  # delivered first when it resumes), then run on, see the record, exit
                if s.get("host") == self.host and s.get("pid") and s["rank"] != self.world.rank:
                    try:
                        signal_thread(s["pid"], s.get("tid"), signal.SIGUSR1)
                        os.kill(s["pid"], signal.SIGCONT)
                    except OSError:
                        pass
        self._dump_and_exit(incident)

    def _dump_and_exit(self, incident: dict[str, Any]) -> None:
        assert self._stacks is not None
        p = self.progress
        self._stacks.write(f"\n=== lmforge watchdog: rank {self.world.rank} (pid {self.pid}, {self.host}), "
                           f"step {p.step}, phase {p.phase} for {p.phase_s():.0f}s; hang {incident['kind']} "
                           f"found by rank {incident['detected_by']} (launch {self.launch}) ===\n")
        self._stacks.flush()
        faulthandler.cancel_dump_traceback_later()
        faulthandler.dump_traceback(file=self._stacks, all_threads=True)
        self._stacks.flush()
        # Wait for the others to dump theirs too: the first rank to exit breaks the collectives,
        # and a rank whose collective fails exits by the exception before its stacks are out.
        self._dumped = True
        self._beat()
        deadline = time.monotonic() + max(5.0, 10 * self.cfg.heartbeat_s)
        while time.monotonic() < deadline and not all(b and b.get("dumped") for b in self.read_beats().values()):
            time.sleep(self.cfg.heartbeat_s / 4)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(HANG_EXIT_CODE)  # from this thread: the training thread is the one that is stuck

    # -- the collectives' timeout -----------------------------------------------------------------
    def _on_long_change(self, long: bool) -> None:
        if self.cfg.collective_timeout_s and self.world.distributed:
            seconds = max(self.cfg.stall_long_s * 2, self.cfg.collective_timeout_s) if long else \
                self.cfg.collective_timeout_s
            set_collective_timeout(self.world, seconds)


def set_collective_timeout(world: World, seconds: float) -> None:
    """The timeout of every process group this run's collectives use (torchtitan's
    `set_pg_timeouts`); it applies to collectives issued from now on."""
    from torch.distributed import distributed_c10d as c10d

    timeout = datetime.timedelta(seconds=seconds)
    groups = {id(c10d._get_default_group()): c10d._get_default_group()}
    for mesh in (world.mesh, world.ep_mesh):
        if mesh is not None:
            for dim in range(mesh.ndim):
                group = mesh.get_group(dim)
                groups[id(group)] = group
    for group in groups.values():
        c10d._set_pg_timeout(timeout, group)


def create_once(path: Path, text: str, rank: int) -> bool:
    """Create `path` holding `text` unless it exists; False if another writer was first. A hard
    link of a finished file appears whole (a reader never sees it half-written); where the file
    system has no hard links, an exclusive create."""
    staged = path.with_name(f".{path.name}.rank-{rank}")
    staged.write_text(text)
    try:
        os.link(staged, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True
    finally:
        staged.unlink()


def read_last(run_dir: Path) -> dict[str, Any] | None:
    """The latest hang record of a run (None if it never hung)."""
    path = run_dir / LAST
    return json.loads(path.read_text()) if path.exists() else None


def _pick(beat: dict[str, Any] | None, *keys: str) -> dict[str, Any]:
    return {k: beat[k] for k in keys if k in beat} if beat else {}
