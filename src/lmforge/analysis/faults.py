"""What went wrong in a run, from the records its fault handling wrote: launches (every start
and restart, and the step it resumed from), hangs (RUN/faults/last.json), rollbacks from
non-finite steps, and stragglers. `lmforge analyze faults RUN` prints it; `--exclude-hosts`
prints only the hosts a requeue should leave out (what `scripts/slurm_train.sbatch` reads).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.train.nonfinite import read_rollbacks
from lmforge.train.stragglers import STRAGGLERS_FILE
from lmforge.train.trainer import LAUNCHES
from lmforge.train.watchdog import read_last


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def fault_report(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise LmforgeError(f"{run_dir} is not a run directory (no config.yaml): give the trainer.run_dir of a run")
    stragglers = _jsonl(run_dir / STRAGGLERS_FILE)
    return {
        "launches": _jsonl(run_dir / LAUNCHES),
        "last": read_last(run_dir),
        "rollbacks": read_rollbacks(run_dir),
        "stragglers": sorted({(s["rank"], s["host"]) for s in stragglers}),
    }


def hosts_to_exclude(run_dir: Path, since: float = 0.0) -> list[str]:
    """The hosts of the suspects of the latest hang or eviction, if it happened after `since`
    (seconds since the epoch: the start of this job, so an old record is not acted on twice)."""
    last = read_last(Path(run_dir))
    if last is None or last.get("time", 0) < since:
        return []
    return sorted({s["host"] for s in last["suspects"] if s.get("host")})


def format_report(report: dict[str, Any]) -> str:
    lines = []
    launches = report["launches"]
    lines.append(f"{len(launches)} launch(es), {max(len(launches) - 1, 0)} restart(s)")
    for i, launch in enumerate(launches):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(launch["time"]))
        lines.append(f"  {i}: {when}  from step {launch['from_step']}  on {launch['world_size']} rank(s)")
    if (last := report["last"]) is not None:
        who = ", ".join(f"rank {s['rank']} ({s.get('host', '?')}" + (f", {s['where']}" if s.get("where") else "") + ")"
                        for s in last["suspects"]) or "no single rank"
        lines.append(f"last fault: {last['kind']} at step {last['step']}"
                     + (f", phase {last['phase']}" if "phase" in last else "") + f": {who}")
        if "stacks" in last:
            lines.append(f"  stacks: {last['stacks']}")
    for r in report["rollbacks"]:
        lines.append(f"rollback at step {r['at_step']}: resumed from {r['resume_from']}, skipped steps {r['skip_steps']}")
    if report["stragglers"]:
        lines.append("stragglers: " + ", ".join(f"rank {rank} ({host})" for rank, host in report["stragglers"]))
    return "\n".join(lines)
