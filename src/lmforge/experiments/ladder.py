"""The model ladder: a grid of model sizes × token budgets, each trained as an ordinary
`lmforge train` run, then a scaling law L(N, D) fitted to the final validation losses and
checked on larger held-out sizes (`lmforge ladder LADDER.yaml`).

    plan_runs  ─► for each run: write out/runs/NAME.yaml, train (or resume) it, score tasks,
                  append one row to results.jsonl
    fit_ladder ─► average seeds, fit on the non-holdout points, bootstrap, predict the holdout
                  sizes ─► fit.json, ladder.png, ladder.md
    predict    ─► a loss (and task accuracies) with intervals, read from fit.json

Rerunning continues where it stopped: a run with a row in results.jsonl is skipped, a run dir
with checkpoints but no row resumes through the trainer's own resume. Training the runs,
results.jsonl and the config check are `lmforge.experiments.runner`'s, shared with `ablate`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.analysis import scaling
from lmforge.analysis.scaling_plot import plot_ladder
from lmforge.errors import ConfigError, LmforgeError
from lmforge.experiments import runner
from lmforge.experiments.ladder_config import CHINCHILLA_TOKENS_PER_PARAM, LadderConfig, run_name
from lmforge.experiments.ladder_report import format_markdown
from lmforge.experiments.runner import RESULTS_FILE, append_result, read_results  # noqa: F401 (re-exported)
from lmforge.experiments.train_run import train
from lmforge.fsutil import atomic_write
from lmforge.model.size import model_size
from lmforge.train.config import RunConfig

FIT_FILE = "fit.json"


def load_ladder(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LadderConfig:
    """A ladder YAML with ``dotted=value`` overrides; errors name the file and the field."""
    try:
        return LadderConfig.from_yaml(path, overrides)
    except ConfigError as e:
        raise ConfigError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None


# -- planning ---------------------------------------------------------------------------------


@dataclasses.dataclass
class PlannedRun(runner.PlannedRunBase):
    """One run of the ladder (`run_dir`, `budget`, `config_sha256` from `PlannedRunBase`)."""

    name: str
    d_model: int
    multiple: float
    seed: int
    holdout: bool
    params: int
    """N: non-embedding parameters."""
    config: RunConfig


def load_base(cfg: LadderConfig) -> RunConfig:
    """The base RunConfig with the ladder's overrides; the run dir and budget are placeholders
    (each run sets its own), so the base needs neither."""
    path = Path(cfg.base)

    def placeholders(data: dict[str, Any]) -> None:
        data["trainer"].update(run_dir=str(Path(cfg.out) / "runs" / "base"), max_steps=None, max_tokens=1)

    base = runner.load_base(path, cfg.overrides, "ladder", placeholders)
    if not base.data.validation:
        raise ConfigError(f"ladder.base ({path}): data.validation is empty; the ladder fits the validation loss")
    if cfg.tasks and base.tokenizer is None:
        raise ConfigError(f"ladder.tasks: scoring tasks needs the base config's tokenizer (set tokenizer in {path})")
    return base


def plan_runs(cfg: LadderConfig, base: RunConfig | None = None) -> list[PlannedRun]:
    """Every run of the ladder, fitted sizes first, each in increasing compute."""
    base = base or load_base(cfg)
    runs = []
    grid = [(d, m, False) for d in cfg.sizes for m in cfg.token_multiples]
    grid += [(d, m, True) for d in cfg.holdout for m in cfg.holdout_multiples]
    for d_model, multiple, holdout in grid:
        shape = cfg.shape(d_model)
        where = f"ladder.{'holdout' if holdout else 'sizes'}[{(cfg.holdout if holdout else cfg.sizes).index(d_model)}]"
        try:
            # replace() keeps every other model field of the base (vocab, norms, parametrization…).
            model = base.model.replace(d_model=shape.d_model, n_layers=shape.n_layers, n_heads=shape.n_heads,
                                       n_kv_heads=None, mlp_hidden=shape.mlp_hidden)
        except ConfigError as e:
            raise ConfigError(f"{where}: d_model={d_model} gives an invalid model: {e}") from None
        params = model_size(model).active_non_embedding  # an MoE: what one token runs
        tokens = max(1, round(multiple * CHINCHILLA_TOKENS_PER_PARAM * params))
        steps = -(-tokens // base.trainer.batch_tokens)
        for seed in cfg.seeds:
            name = run_name(d_model, multiple, seed)
            trainer = base.trainer.replace(run_dir=Path(cfg.out) / "runs" / name, max_steps=None,
                                           max_tokens=tokens, seed=seed)
            optim = base.optim.replace(warmup_steps=math.ceil(cfg.warmup_fraction * steps))
            config = base.replace(model=model, trainer=trainer, optim=optim)
            runs.append(PlannedRun(name, d_model, float(multiple), seed, holdout, params, config))
    fitted = sorted((r for r in runs if not r.holdout), key=lambda r: (r.params * r.budget, r.name))
    held = sorted((r for r in runs if r.holdout), key=lambda r: (r.params * r.budget, r.name))
    return fitted + held


# -- running ----------------------------------------------------------------------------------


def run_ladder(cfg: LadderConfig, *, fit_only: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train every run of the ladder that has no row yet (unless `fit_only`), then fit and
    write fit.json, ladder.png and ladder.md. Returns what fit.json holds."""
    out = Path(cfg.out)
    runs = plan_runs(cfg)
    out.mkdir(parents=True, exist_ok=True)
    check_rows(cfg, runs, read_results(out))
    if not fit_only:
        train_runs(cfg, runs, progress=progress)
    return fit_ladder(cfg, runs, read_results(out))


def check_rows(cfg: LadderConfig, runs: list[PlannedRun], rows: list[dict[str, Any]]) -> None:
    """Rows of results.jsonl must come from the runs the ladder plans now (same resolved config)."""
    runner.check_rows(cfg.out, runs, rows, what="ladder", changed="base, overrides or size rule changed")


def train_runs(cfg: LadderConfig, runs: list[PlannedRun], *, progress: bool = True) -> None:
    """Train the runs without a row, appending each row as it finishes; the ETA is from the
    rate so far in N·D (∝ training FLOPs) over the runs trained in this session."""
    runner.train_all(
        cfg.out, runs, lambda run: train_one(cfg, run), nproc=cfg.nproc, progress=progress,
        describe=lambda run: f"{run.params:,} params, {run.budget:,} tokens",
        cost=lambda run: run.params * run.budget, summary=lambda row: f"val_loss {row['val_loss']:.4f}",
    )  # fmt: skip


def train_one(cfg: LadderConfig, run: PlannedRun) -> dict[str, Any]:
    """Train (or resume, or find finished) one run; its results row."""
    # `train` is looked up here, at call time, so a test can stand a fake in for `ladder.train`.
    runner.launch(run, Path(cfg.out) / "runs" / f"{run.name}.yaml", nproc=cfg.nproc, in_process=train, what="ladder")
    shape = cfg.shape(run.d_model)
    final = final_metrics(run)
    return {
        "name": run.name, "d_model": run.d_model, "n_layers": shape.n_layers, "n_heads": shape.n_heads,
        "mlp_hidden": shape.mlp_hidden, "multiple": run.multiple, "params": run.params,
        "tokens": int(final["tokens"]), "steps": int(final["step"]), "val_loss": float(final["val_loss"]),
        "seed": run.seed, "holdout": run.holdout, "tasks": score_tasks(cfg, run),
        "config_sha256": run.config_sha256,
    }  # fmt: skip


def final_metrics(run: PlannedRun) -> dict[str, Any]:
    """The metrics row of the run's last step, which carries its final validation loss (the
    trainer validates after the last step)."""
    return runner.final_metrics(run, what="ladder")


def score_tasks(cfg: LadderConfig, run: PlannedRun) -> dict[str, dict[str, Any]]:
    """{task: {bpb (gold bits per byte, the task loss), acc (the task's primary metric), metric}}
    of the run's final checkpoint."""
    if not cfg.tasks:
        return {}
    return runner.score_tasks(runner.final_checkpoint(run), cfg.tasks, limit=cfg.limit)


# -- fitting ----------------------------------------------------------------------------------


def average_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per (size, multiple, holdout): loss, tokens and task numbers averaged over seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["d_model"], float(r["multiple"]), bool(r["holdout"])), []).append(r)
    points = []
    for (d_model, multiple, holdout), group in sorted(groups.items()):
        tasks: dict[str, dict[str, float]] = {}
        for spec in sorted({t for r in group for t in r.get("tasks", {})}):
            values = [r["tasks"][spec] for r in group if spec in r.get("tasks", {})]
            tasks[spec] = {k: float(np.mean([v[k] for v in values])) for k in ("bpb", "acc")
                           if all(v.get(k) is not None for v in values)}
        points.append({
            "name": f"d{d_model}-x{multiple}", "d_model": d_model, "multiple": multiple, "holdout": holdout,
            "params": group[0]["params"], "tokens": float(np.mean([r["tokens"] for r in group])),
            "loss": float(np.mean([r["val_loss"] for r in group])), "seeds": sorted(r["seed"] for r in group),
            "tasks": tasks,
        })  # fmt: skip
    return points


def _loss_prediction(law, boots: list, N: float, D: float, level: float) -> dict[str, Any]:
    """`predict_loss` as a dict; without bootstrap fits, the central value and no interval."""
    if not boots:
        return {"value": float(law(N, D)), "low": None, "high": None, "level": level}
    return scaling.predict_loss(law, boots, N, D, level=level).to_dict()


def _acc_prediction(loss_law, loss_boots: list, task_law, task_boots: list, N: float, D: float,
                    level: float) -> dict[str, Any]:
    """`predict_accuracy` as a dict; without bootstrap fits, the central value and no interval."""
    if not loss_boots or not task_boots:
        return {"value": float(task_law(loss_law(N, D))), "low": None, "high": None, "level": level}
    return scaling.predict_accuracy(loss_law, loss_boots, task_law, task_boots, N, D, level=level).to_dict()


def _check(pred: dict[str, Any], actual: float) -> dict[str, Any]:
    inside = None if pred["low"] is None else bool(pred["low"] <= actual <= pred["high"])
    return {"actual": actual, "predicted": pred, "relative_error": scaling.relative_error(pred["value"], actual),
            "inside": inside}


def fit_ladder(cfg: LadderConfig, runs: list[PlannedRun], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Fit the law on the non-holdout points (seeds averaged), bootstrap it, check it on the
    holdout points, fit each task's two steps; write fit.json, ladder.png and ladder.md."""
    out = Path(cfg.out)
    planned = {r.name for r in runs}
    rows = [r for r in rows if r["name"] in planned]  # rows of sizes since removed from the ladder stay out
    missing = sorted(planned - {r["name"] for r in rows})
    points = average_seeds(rows)
    fitted = [p for p in points if not p["holdout"]]
    held = [p for p in points if p["holdout"]]
    if len(fitted) < scaling.MIN_LOSS_POINTS:
        raise LmforgeError(
            f"{out / RESULTS_FILE}: {len(fitted)} fitted points (of {len(cfg.sizes) * len(cfg.token_multiples)} "
            f"planned), the law needs at least {scaling.MIN_LOSS_POINTS}; run the ladder without --fit-only")
    N, D, L = (np.array([p[k] for p in fitted], dtype=np.float64) for k in ("params", "tokens", "loss"))
    law = scaling.fit_loss_law(N, D, L)
    boots = scaling.bootstrap_loss_laws(N, D, L, n_boot=cfg.n_boot, seed=0, center=law) if cfg.n_boot else []
    fit: dict[str, Any] = {
        "law": law.to_dict(),
        "level": cfg.level,
        "bootstrap": {"n_boot": cfg.n_boot, "fits": len(boots), "intervals": _param_intervals(boots, cfg.level)},
        "points": fitted,
        "holdout": [],
        "missing": missing,
        "tasks": {},
        "boots": [b.to_dict() for b in boots],
    }
    for h in held:
        pred = _loss_prediction(law, boots, h["params"], h["tokens"], cfg.level)
        fit["holdout"].append({"name": h["name"], "params": h["params"], "tokens": h["tokens"],
                               **_check(pred, h["loss"])})
    for spec in sorted({t for p in points for t in p["tasks"]}):
        fit["tasks"][spec] = fit_task(cfg, spec, fitted, held)
    atomic_write(out / FIT_FILE, json.dumps(fit, indent=1) + "\n")
    plot_ladder(
        fitted, law, out / "ladder.png", holdout=held,
        predictions=[{k: v for k, v in h["predicted"].items() if v is not None} for h in fit["holdout"]],
        title=f"{out.name}: {len(fitted)} fitted points, {len(held)} held out",
    )  # fmt: skip
    atomic_write(out / "ladder.md", format_markdown(cfg, fit, held))
    return fit


def fit_task(cfg: LadderConfig, spec: str, fitted: list[dict], held: list[dict]) -> dict[str, Any]:
    """Step 1: the task's gold bits-per-byte as L(N, D); step 2: accuracy as a sigmoid of it.
    A task that cannot be fitted gets {"error": why} rather than stopping the ladder."""
    pts = [p for p in fitted if {"bpb", "acc"} <= set(p["tasks"].get(spec, {}))]
    N, D = (np.array([p[k] for p in pts], dtype=np.float64) for k in ("params", "tokens"))
    bpb = np.array([p["tasks"][spec]["bpb"] for p in pts], dtype=np.float64)
    acc = np.array([p["tasks"][spec]["acc"] for p in pts], dtype=np.float64)
    try:
        loss_law = scaling.fit_loss_law(N, D, bpb)
        task_law = scaling.fit_task_law(bpb, acc)
        loss_boots, task_boots = [], []
        if cfg.n_boot:
            loss_boots = scaling.bootstrap_loss_laws(N, D, bpb, n_boot=cfg.n_boot, seed=0, center=loss_law)
            task_boots = scaling.bootstrap_task_laws(bpb, acc, n_boot=cfg.n_boot, seed=0)
    except LmforgeError as e:
        return {"error": str(e), "points": len(pts)}
    out: dict[str, Any] = {
        "points": len(pts), "loss_law": loss_law.to_dict(), "task_law": task_law.to_dict(), "holdout": [],
        "loss_boots": [b.to_dict() for b in loss_boots], "task_boots": [b.to_dict() for b in task_boots],
    }  # fmt: skip
    for h in held:
        actual = h["tasks"].get(spec, {})
        if not {"bpb", "acc"} <= set(actual):
            continue
        bpb_pred = _loss_prediction(loss_law, loss_boots, h["params"], h["tokens"], cfg.level)
        acc_pred = _acc_prediction(loss_law, loss_boots, task_law, task_boots, h["params"], h["tokens"],
                                   cfg.level)
        out["holdout"].append({"name": h["name"], "bpb": _check(bpb_pred, actual["bpb"]),
                               "acc": {**_check(acc_pred, actual["acc"]),
                                       "absolute_error": abs(acc_pred["value"] - actual["acc"])}})
    return out


def _param_intervals(boots: list, level: float) -> dict[str, list[float]]:
    if not boots:
        return {}
    names = list(boots[0].to_dict())
    return {k: [float(q) for q in np.quantile([b.to_dict()[k] for b in boots], ((1 - level) / 2, (1 + level) / 2))]
            for k in names}


# -- predictions ------------------------------------------------------------------


def predict(out_or_cfg: LadderConfig | str | Path, params: float, tokens: float) -> dict[str, Any]:
    """Loss (and each fitted task's bits-per-byte and accuracy) at N `params`, D `tokens`, with
    intervals, from the laws and bootstrap fits stored in fit.json (no refitting)."""
    if isinstance(out_or_cfg, LadderConfig):
        out, level = Path(out_or_cfg.out), out_or_cfg.level
    else:
        out, level = Path(out_or_cfg), None
        if out.suffix in (".yaml", ".yml") and out.is_file():
            cfg = load_ladder(out)
            out, level = Path(cfg.out), cfg.level
    path = out / FIT_FILE
    if not path.exists():
        raise LmforgeError(f"{path} not found: run (or fit) the ladder first (`lmforge ladder LADDER.yaml`)")
    if not (params > 0 and tokens > 0):
        raise LmforgeError(f"predict: params and tokens must be positive, got {params} and {tokens}")
    fit = json.loads(path.read_text())
    level = level or fit["level"]
    law = scaling.LossLaw.from_dict(fit["law"])
    boots = [scaling.LossLaw.from_dict(b) for b in fit["boots"]]
    result: dict[str, Any] = {"params": params, "tokens": tokens,
                              "loss": _loss_prediction(law, boots, params, tokens, level), "tasks": {}}
    for spec, t in fit["tasks"].items():
        if "error" in t:
            continue
        loss_law = scaling.LossLaw.from_dict(t["loss_law"])
        loss_boots = [scaling.LossLaw.from_dict(b) for b in t["loss_boots"]]
        task_law = scaling.TaskLaw.from_dict(t["task_law"])
        task_boots = [scaling.TaskLaw.from_dict(b) for b in t["task_boots"]]
        result["tasks"][spec] = {
            "bpb": _loss_prediction(loss_law, loss_boots, params, tokens, level),
            "acc": _acc_prediction(loss_law, loss_boots, task_law, task_boots, params, tokens, level),
        }
    return result


def parse_count(text: str) -> float:
    """'1.2e9', '1_200_000', '1.2B', '350M', '20k' → a positive number."""
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}.get(text.strip()[-1:].lower(), 1.0)
    body = text.strip()[:-1] if scale != 1.0 else text.strip()
    try:
        value = float(body.replace("_", "").replace(",", "")) * scale
    except ValueError:
        raise LmforgeError(f"{text!r} is not a number (e.g. 1.2e9, 350M, 2B)") from None
    if not (value > 0 and math.isfinite(value)):
        raise LmforgeError(f"{text!r}: must be a positive number")
    return value
