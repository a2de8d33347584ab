"""Data ablations (DataDecide-style): the same model and recipe trained at an equal token
budget on each named data set, over several seeds, each run an ordinary `lmforge train` run,
then scored on held-out sets and tasks and compared (`lmforge ablate ABLATION.yaml`).

    plan_runs    ─► <dataset>-s<seed> for every seed × data set (seed-major: after the first
                    pass every data set has one run), data.train = the data set,
                    trainer.max_tokens = tokens, trainer.seed = seed
    run_ablation ─► for each run without a row: write out/runs/NAME.yaml, train (or resume) it,
                    score every eval set (loss, bits per byte) and task on its final checkpoint,
                    append one row to results.jsonl
                 ─► ablation.json, ablation.md, ablation.png (`ablate_report`): each data set's
                    mean ± std over seeds per metric, and for each pair whether the difference
                    exceeds the seed spread

Training, results.jsonl, the config check and the ETA lines are the ladder's runner
(`lmforge.experiments.runner`): rerunning continues where it stopped (a run with a row is
skipped, a run dir with checkpoints but no row resumes through the trainer's own resume), and a
finished run whose config the ablation now plans differently is refused.

Paths (base, datasets, eval) are relative to the working directory, as `lmforge train` reads them.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from lmforge.data.token_files import META_FILE, TokenFiles
from lmforge.errors import ConfigError, LmforgeError
from lmforge.experiments import runner
from lmforge.experiments.ablate_config import AblationConfig, run_name
from lmforge.experiments.ablate_report import summarize, write_report
from lmforge.experiments.runner import RESULTS_FILE, read_results
from lmforge.experiments.train_run import train
from lmforge.parallel import cuda
from lmforge.train.config import RunConfig

log = logging.getLogger(__name__)

WHAT = "ablation"  # how the runner's messages name this experiment


def load_ablation(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> AblationConfig:
    """An ablation YAML with ``dotted=value`` overrides; errors name the file and the field."""
    try:
        return AblationConfig.from_yaml(path, overrides)
    except ConfigError as e:
        raise ConfigError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None


# -- the data ---------------------------------------------------------------------------------


def train_folder(folder: Path) -> Path:
    """The token folder a data set entry names: itself, else a curate output's ``tokens/train``
    or ``tokens``, else a `data tokenize --validation` output's ``train``. When none holds
    token files, `folder` itself (opening it then says what it is and what to name instead)."""
    for candidate in (folder, folder / "tokens" / "train", folder / "tokens", folder / "train"):
        if (candidate / META_FILE).exists():
            return candidate
    return folder


def eval_folder(folder: Path) -> Path:
    """The token folder an eval entry names: itself, else the held-out side of a split
    (``val``) or of a curate output (``tokens/val``)."""
    for candidate in (folder, folder / "val", folder / "tokens" / "val"):
        if (candidate / META_FILE).exists():
            return candidate
    return folder


@dataclasses.dataclass
class DataSet:
    """One named set of token folders, opened and checked."""

    name: str
    folders: list[Path]
    """The token folders, resolved (`train_folder` / `eval_folder`)."""
    tokens: int
    """Tokens over all its folders."""


def open_sets(entries: dict[str, list[Path]], field: str, base: RunConfig, resolve) -> list[DataSet]:
    """Resolve and open every folder of `entries` (the config's `field`), checking that each is
    token files made with the base config's tokenizer (or, without one, the first set's) and
    fitting its vocabulary; errors name ``ablation.FIELD.NAME``."""
    expected: tuple[str, str] | None = None  # (fingerprint, what it is)
    if base.tokenizer is not None:
        from lmforge.data.tokenizer import Tokenizer

        try:
            expected = (Tokenizer.load(base.tokenizer).fingerprint, f"the base config's tokenizer {base.tokenizer}")
        except LmforgeError as e:
            raise ConfigError(f"ablation.base: tokenizer: {e}") from None
    sets = []
    for name, given in entries.items():
        where = f"ablation.{field}.{name}"
        folders, total = [], 0
        for folder in (resolve(Path(f)) for f in given):
            try:
                files = TokenFiles(folder)
            except LmforgeError as e:
                raise ConfigError(f"{where}: {e}") from None
            if expected is None:
                expected = (files.tokenizer_fingerprint, f"{folder} (the first data set's)")
            if files.tokenizer_fingerprint != expected[0]:
                raise ConfigError(
                    f"{where}: {folder} was tokenized with another tokenizer (fingerprint {files.tokenizer_fingerprint}, "
                    f"{files.vocab_size} ids) than {expected[1]} (fingerprint {expected[0]}); every data set and eval "
                    "set of an ablation must be tokenized with one tokenizer: retokenize it")
            if files.vocab_size > base.model.vocab_size:
                raise ConfigError(f"{where}: {folder} uses {files.vocab_size} token ids but the base config's "
                                  f"model.vocab_size is {base.model.vocab_size}")
            folders.append(folder)
            total += files.num_tokens
        sets.append(DataSet(name, folders, total))
    return sets


# -- planning ---------------------------------------------------------------------------------


@dataclasses.dataclass
class PlannedRun(runner.PlannedRunBase):
    """One run of the ablation (`run_dir`, `budget`, `config_sha256` from `PlannedRunBase`)."""

    name: str
    dataset: str
    seed: int
    config: RunConfig
    epochs: float
    """Passes over the data set the budget takes (above 1: the data set repeats)."""
    evals: dict[str, list[Path]]
    """Eval set name → its token folders (resolved), scored on the final checkpoint."""


def load_base(cfg: AblationConfig) -> RunConfig:
    """The base RunConfig with the ablation's overrides. Its data.train, run dir, budget and
    seed are placeholders (each run sets its own), so the base needs none of them."""
    path = Path(cfg.base)

    def placeholders(data: dict[str, Any]) -> None:
        data["data"]["train"] = [str(f) for f in next(iter(cfg.datasets.values()))]
        data["trainer"].update(run_dir=str(Path(cfg.out) / "runs" / "base"), max_steps=None, max_tokens=cfg.tokens)

    base = runner.load_base(path, cfg.overrides, "ablation", placeholders)
    if cfg.tasks and base.tokenizer is None:
        raise ConfigError(f"ablation.tasks: scoring tasks needs the base config's tokenizer (set tokenizer in {path})")
    return base


def plan_runs(cfg: AblationConfig, base: RunConfig | None = None) -> list[PlannedRun]:
    """Every run of the ablation, seed-major (each seed over every data set, in config order).
    Opens every data set and eval set and checks their tokenizer (errors name the set)."""
    base = base or load_base(cfg)
    datasets = open_sets(cfg.datasets, "datasets", base, train_folder)
    evals = open_sets(cfg.eval, "eval", base, eval_folder)
    seq_len = cfg.eval_seq_len or base.data.seq_len
    if seq_len > base.model.max_seq_len:
        raise ConfigError(f"ablation.eval_seq_len: {seq_len} is longer than the model's context "
                          f"(model.max_seq_len={base.model.max_seq_len})")
    if cfg.tasks:
        from lmforge.eval.harness import parse_tasks

        try:
            parse_tasks(cfg.tasks)  # a misspelt task fails now, not after the first run has trained
        except LmforgeError as e:
            raise ConfigError(f"ablation.tasks: {e}") from None
    for s in evals:
        if s.tokens - 1 < seq_len:
            raise ConfigError(f"ablation.eval.{s.name}: {s.tokens} tokens make no window of {seq_len} (+1 target); "
                              "give a larger held-out set or a smaller eval_seq_len")
    runs = []
    for seed in cfg.seeds:
        for d in datasets:
            name = run_name(d.name, seed)
            trainer = base.trainer.replace(run_dir=Path(cfg.out) / "runs" / name, max_steps=None,
                                           max_tokens=cfg.tokens, seed=seed)
            config = base.replace(data=base.data.replace(train=list(d.folders)), trainer=trainer)
            instances = max((d.tokens - 1) // base.data.seq_len, 1)
            epochs = config.max_steps * config.batch_instances / instances
            runs.append(PlannedRun(name, d.name, seed, config, epochs, {s.name: s.folders for s in evals}))
    return runs


def warn_repeats(runs: list[PlannedRun]) -> None:
    """One warning per data set the budget repeats (more than one epoch)."""
    for run in {r.dataset: r for r in runs}.values():
        if run.epochs > 1:
            c = run.config
            log.warning(f"ablation.datasets.{run.dataset}: the budget of {run.budget:,} tokens ({c.max_steps} steps) "
                        f"is {run.epochs:.2f} epochs of this data set: the trainer repeats it, each epoch in a new "
                        "order (fewer tokens than the budget; the comparison then measures repetition too)")


# -- running ----------------------------------------------------------------------------------


def run_ablation(cfg: AblationConfig, *, report_only: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train every run of the ablation that has no row yet (unless `report_only`), score it,
    then write ablation.json, ablation.md and ablation.png. Returns what ablation.json holds."""
    out = Path(cfg.out)
    runs = plan_runs(cfg)
    out.mkdir(parents=True, exist_ok=True)
    check_rows(cfg, runs, read_results(out))
    if not report_only:
        warn_repeats(runs)
        runner.train_all(
            out, runs, lambda run: train_one(cfg, run), nproc=cfg.nproc, progress=progress,
            describe=lambda run: f"{run.budget:,} tokens of {run.dataset}, seed {run.seed}",
            summary=_summary,
        )  # fmt: skip
    planned = {r.name for r in runs}
    rows = [r for r in read_results(out) if r.get("name") in planned]  # rows of data sets since removed stay out
    if not rows:
        raise LmforgeError(f"{out / RESULTS_FILE}: no finished run of this ablation yet; run it without --report-only")
    summary = summarize(cfg, runs, rows)
    write_report(out, summary)
    return summary


def check_rows(cfg: AblationConfig, runs: list[PlannedRun], rows: list[dict[str, Any]]) -> None:
    """Rows of results.jsonl must come from the runs the ablation plans now (same resolved config)."""
    runner.check_rows(cfg.out, runs, rows, what=WHAT, changed="base, overrides, tokens or the data set's folders changed")


def train_one(cfg: AblationConfig, run: PlannedRun) -> dict[str, Any]:
    """Train (or resume, or find finished) one run and score it; its results row."""
    # `train` is looked up here, at call time, so a test can stand a fake in for `ablate.train`.
    runner.launch(run, Path(cfg.out) / "runs" / f"{run.name}.yaml", nproc=cfg.nproc, in_process=train, what=WHAT)
    checkpoint = runner.final_checkpoint(run)
    if checkpoint.name != f"step-{run.config.max_steps}":
        raise LmforgeError(f"run {run.name} did not finish: its newest checkpoint is {checkpoint.name} of "
                           f"{run.config.max_steps} steps; rerun the ablation to resume it")
    metrics = runner.read_metrics(run.run_dir)
    val_loss = None
    if run.config.data.validation:
        val_loss = float(runner.final_metrics(run, what=WHAT)["val_loss"])
    train_rows = [m for m in metrics if "loss" in m]
    scores = score_run(cfg, run, checkpoint)
    return {
        "name": run.name, "dataset": run.dataset, "seed": run.seed, "tokens": run.budget,
        "steps": run.config.max_steps, "epochs": round(run.epochs, 4),
        "train_loss": float(train_rows[-1]["loss"]) if train_rows else None, "val_loss": val_loss,
        "eval": scores["eval"], "tasks": scores["tasks"], "config_sha256": run.config_sha256,
    }  # fmt: skip


def score_run(cfg: AblationConfig, run: PlannedRun, checkpoint: Path) -> dict[str, Any]:
    """{"eval": {set: {loss, bpb}}, "tasks": {task: {acc, bpb, metric}}} of the final checkpoint:
    each eval set's loss in nats per token and (with the base config's tokenizer) bits per byte
    (`lmforge.eval.perplexity`), each task's accuracy and gold bits per byte."""
    if not cfg.eval and not cfg.tasks:
        return {"eval": {}, "tasks": {}}
    from lmforge.data.tokenizer import Tokenizer
    from lmforge.eval.perplexity import perplexity
    from lmforge.model.io import load_model

    device = "cuda" if cuda.is_available() else "cpu"
    model = load_model(checkpoint, device=device)
    tokenizer = Tokenizer.load(run.config.tokenizer) if run.config.tokenizer else None
    scores: dict[str, Any] = {"eval": {}, "tasks": {}}
    for name, folders in run.evals.items():
        r = perplexity(model, folders, seq_len=cfg.eval_seq_len or run.config.data.seq_len,
                       batch_size=cfg.eval_batch_size, max_tokens=cfg.eval_max_tokens, tokenizer=tokenizer,
                       progress=False)  # fmt: skip
        scores["eval"][name] = {"loss": r["loss"], "bpb": r.get("bits_per_byte"), "tokens": r["tokens"]}
    scores["tasks"] = runner.score_tasks(model, cfg.tasks, limit=cfg.limit, tokenizer=tokenizer)
    return scores


def _summary(row: dict[str, Any]) -> str:
    """The progress line's numbers for a finished run."""
    parts = [f"val_loss {row['val_loss']:.4f}"] if row["val_loss"] is not None else []
    parts += [f"{name} loss {e['loss']:.4f}" for name, e in row["eval"].items()]
    return ", ".join(parts)

