"""Training a list of planned runs, each an ordinary `lmforge train` run: the part the ladder
(`ladder.py`) and the data ablation (`ablate.py`) share.

    for each planned run without a row in OUT/results.jsonl:
        write OUT/runs/NAME.yaml ─► train it in this process, or under torchrun (nproc > 1)
        ─► the experiment's own row (final metrics, scores) ─► append it to results.jsonl

* results.jsonl holds one JSON row per finished run, keyed by ``name``; a row is added by
  rewriting the file in one rename (`atomic_write`), so a kill never leaves half a line.
* Each row records the ``config_sha256`` of the run's resolved config; `check_rows` refuses rows
  whose run the experiment now plans with another config (the results would mix two recipes).
* A killed run has no row: the next call trains it again, and a run dir with checkpoints
  resumes through the trainer's own resume (the config written is the same, so it may).
* Progress: a line before and after each run, with an ETA from the rate so far over a cost per
  run the experiment chooses (N·D for the ladder, tokens for an ablation).

Experiments pass their own `train_one(run) -> row`; it calls `launch` (which takes the train
function to use in-process, so tests can stand a fake in for it), `final_metrics`,
`final_checkpoint` and `score_tasks`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from lmforge.config import apply_overrides
from lmforge.errors import ConfigError, LmforgeError
from lmforge.fsutil import atomic_write
from lmforge.train.config import RunConfig
from lmforge.train.trainer import METRICS_FILE

RESULTS_FILE = "results.jsonl"


def load_base(path: Path, overrides: Sequence[str], where: str, adjust: Callable[[dict[str, Any]], None]) -> RunConfig:
    """The base RunConfig YAML at `path` with dotted `overrides`, after `adjust` sets the fields
    each run replaces (run dir, budget, …) to placeholders; errors name `where` (``ladder``)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{where}.base: {path} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}.base: {path} is not valid YAML: {getattr(e, 'problem', e)}") from None
    try:
        data = apply_overrides(data, list(overrides))
        for section in ("data", "trainer"):
            if not isinstance(data.setdefault(section, {}), dict):
                raise ConfigError(f"{section}: expected a mapping")
        adjust(data)
        return RunConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{where}.base ({path}): {e}") from None


class PlannedRunBase:
    """What the runner needs of a planned run: a unique `name` and its resolved `config`
    (subclasses are dataclasses that declare both, plus their own fields)."""

    name: str
    config: RunConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.config.trainer.run_dir)

    @property
    def budget(self) -> int:
        """Tokens the run trains on: whole steps of trainer.batch_tokens."""
        return self.config.max_steps * self.config.trainer.batch_tokens

    @property
    def config_sha256(self) -> str:
        return config_sha256(self.config)


def config_sha256(config: RunConfig) -> str:
    """First 16 hex digits of the sha256 of the resolved config's YAML."""
    return hashlib.sha256(config.to_yaml().encode()).hexdigest()[:16]


# -- results.jsonl ----------------------------------------------------------------------------


def read_results(out: str | Path) -> list[dict[str, Any]]:
    """The rows of OUT/results.jsonl (none if it does not exist)."""
    path = Path(out) / RESULTS_FILE
    if not path.exists():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise LmforgeError(f"{path} line {i} is not JSON; delete that line and rerun to retrain the run") from None
    return rows


def append_result(out: str | Path, row: dict[str, Any]) -> bool:
    """Add a row to results.jsonl unless one with its name is there (read again just before);
    the file is replaced in one rename, so a reader never sees half a line. True if added."""
    path = Path(out) / RESULTS_FILE
    if any(r.get("name") == row["name"] for r in read_results(out)):
        return False
    text = path.read_text() if path.exists() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    atomic_write(path, text + json.dumps(row) + "\n")
    return True


def check_rows(out: str | Path, runs: Sequence[PlannedRunBase], rows: list[dict[str, Any]], *, what: str,
               changed: str) -> None:
    """Rows of results.jsonl must come from the runs the experiment plans now (same resolved
    config). `what` names the experiment ("ladder"), `changed` what may have changed."""
    planned = {r.name: r for r in runs}
    for row in rows:
        run = planned.get(row.get("name"))
        if run is not None and row.get("config_sha256") != run.config_sha256:
            raise LmforgeError(
                f"{Path(out) / RESULTS_FILE}: run {run.name} was trained with another config than the {what} "
                f"gives now ({changed}); use a new {what} `out` folder, or delete that row and its run dir to "
                "retrain it")


# -- running ----------------------------------------------------------------------------------


def train_all(
    out: str | Path,
    runs: Sequence[PlannedRunBase],
    train_one: Callable[[Any], dict[str, Any]],
    *,
    nproc: int = 1,
    progress: bool = True,
    describe: Callable[[Any], str] = lambda run: f"{run.budget:,} tokens",
    cost: Callable[[Any], float] = lambda run: float(run.budget),
    summary: Callable[[dict[str, Any]], str] = lambda row: "",
) -> list[dict[str, Any]]:
    """Train every run without a row in results.jsonl, in order, appending each run's row
    (`train_one(run)`, plus ``wall_s``) as soon as it finishes. Prints
    ``[k/n] NAME: describe(run) …`` before a run and ``… done in S s, summary(row), ETA T``
    after it, the ETA from the wall time per unit of `cost` over the runs trained so far.
    Returns the rows added."""
    out = Path(out)
    for run in runs:
        run.config.check_world_size(nproc)  # before anything trains
    done = {r["name"] for r in read_results(out)}
    todo = [r for r in runs if r.name not in done]
    added = []
    cost_done = wall_done = 0.0
    for k, run in enumerate(todo, 1):
        line = f"[{k}/{len(todo)}] {run.name}: {describe(run)}"
        if progress:
            print(f"{line} …", file=sys.stderr, flush=True)
        start = time.perf_counter()
        row = train_one(run)
        wall = time.perf_counter() - start
        row["wall_s"] = round(wall, 3)
        append_result(out, row)
        added.append(row)
        cost_done, wall_done = cost_done + cost(run), wall_done + wall
        eta = wall_done / max(cost_done, 1e-12) * sum(cost(r) for r in todo[k:])
        if progress:
            said = summary(row)
            print(f"{line} … done in {wall:.1f} s{', ' + said if said else ''}, ETA {duration(eta)}",
                  file=sys.stderr, flush=True)
    return added


def launch(run: PlannedRunBase, config_path: str | Path, *, nproc: int, in_process: Callable[[RunConfig], Any],
           what: str) -> None:
    """Write the run's config to `config_path` and train it (or resume it, or find it
    finished): `in_process(config)` when nproc is 1, else
    ``torchrun --standalone --nproc-per-node NPROC -m lmforge train CONFIG``."""
    config_path = Path(config_path)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(config_path, run.config.to_yaml())
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "lmforge", "train", str(config_path)]  # = torchrun … -m lmforge train RUN.yaml
        code = subprocess.run(cmd, check=False).returncode
        if code != 0:
            raise LmforgeError(f"run {run.name} failed under torchrun (exit status {code}; its log is above); "
                               f"rerun the {what} to resume it")
    else:
        in_process(run.config)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of RUN/metrics.jsonl (none if it does not exist)."""
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def final_metrics(run: PlannedRunBase, *, what: str, key: str = "val_loss") -> dict[str, Any]:
    """The metrics row of the run's last step that carries `key` (the trainer validates, and
    so logs, after the last step)."""
    steps = run.config.max_steps
    last = [r for r in read_metrics(run.run_dir) if r.get("step") == steps and key in r]
    if not last:
        what_key = "validation loss" if key == "val_loss" else key
        raise LmforgeError(f"{run.run_dir / METRICS_FILE}: no {what_key} at the last step ({steps}) of run "
                           f"{run.name}; delete its run dir and rerun the {what} to retrain it")
    return last[-1]


def final_checkpoint(run: PlannedRunBase) -> Path:
    """The run's newest complete checkpoint (the final one, once it has finished)."""
    from lmforge.train.checkpoint import find_resumable

    folder = find_resumable(run.run_dir / "checkpoints", quiet=True)
    if folder is None:
        raise LmforgeError(f"{run.run_dir}: no complete checkpoint to score")
    return folder


def score_tasks(model_or_folder: Any, tasks: Sequence[str], *, limit: int | None, tokenizer: Any = None
                ) -> dict[str, dict[str, Any]]:
    """{task: {bpb (gold bits per byte, the task loss), acc (the task's primary metric), metric}}
    of a checkpoint folder (or a model in memory, with its `tokenizer`); {} without tasks."""
    if not tasks:
        return {}
    from lmforge.eval.harness import evaluate

    results = evaluate(model_or_folder, list(tasks), tokenizer=tokenizer, limit=limit, progress=False)
    return {
        spec: {"bpb": r["metrics"].get("bits_per_byte_corr"), "acc": r["primary_score"], "metric": r["primary_metric"]}
        for spec, r in results["tasks"].items()
    }


def duration(seconds: float) -> str:
    """'1h05m' or '3m07s'."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
