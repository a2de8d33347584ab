"""`lmforge release RUN --out REL`: a run as a fully open release, laid out as a Hugging Face
model repository (see the README's "Release" section for the layout). Offline and
deterministic: the same run gives the same bytes (no clocks, sorted keys, fixed orders).
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from lmforge import __version__
from lmforge.errors import LmforgeError
from lmforge.fsutil import file_sha256, staged_folder
from lmforge.model.hf import to_hf
from lmforge.model.io import load_model, load_model_tokenizer
from lmforge.release import card, data, naming, openness
from lmforge.train import checkpoint as ckpt
from lmforge.train.config import RunConfig
from lmforge.train.nonfinite import rolled_back_steps
from lmforge.train.trainer import LAUNCHES

log = logging.getLogger(__name__)

REVISIONS = "revisions.json"
SUMS = "SHA256SUMS"


def complete_checkpoints(run_dir: Path) -> dict[int, Path]:
    root = run_dir / "checkpoints"
    found = {step: p for step, p in ckpt.step_dirs(root) if ckpt.check_complete(p) is None} if root.is_dir() else {}
    if not found:
        raise LmforgeError(f"{run_dir} has no complete checkpoint to release (nothing complete in {root}); "
                           "train it first, or give the run directory of a run that has checkpoints")
    return dict(sorted(found.items()))


def pick(available: dict[int, Path], wanted: str) -> dict[int, Path]:
    """'all', or comma-separated steps; the last checkpoint is always the release's root."""
    if wanted == "all":
        return available
    try:
        steps = sorted({int(s) for s in wanted.split(",") if s.strip()})
    except ValueError:
        raise LmforgeError(f"--checkpoints: expected all or comma-separated steps like 100,200, "
                           f"got {wanted!r}") from None
    missing = [s for s in steps if s not in available]
    if missing:
        raise LmforgeError(f"--checkpoints: no complete checkpoint of step(s) {missing}; the run has "
                           f"{list(available)}")
    last = max(available)
    return {s: available[s] for s in sorted(set(steps) | {last})}


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def training_counts(cfg: RunConfig, orders: dict[int, np.ndarray], last_step: int, skipped: set[int]) -> np.ndarray:
    """How often each instance was applied in steps 1..last_step (skipped steps were read only)."""
    batch = cfg.batch_instances
    counts = np.zeros(len(orders[0]), np.int64)
    for step in range(1, last_step + 1, 1024):  # in chunks: one epoch lookup per chunk
        end = min(step + 1023, last_step)
        instances = data.instances_of_steps(orders, batch, step, end)
        applied = np.repeat(np.array([s not in skipped for s in range(step, end + 1)]), batch)
        counts += np.bincount(instances[applied], minlength=len(counts))
    return counts


def write_order(stream: data.Stream, cfg: RunConfig, last_step: int, out: Path) -> dict[int, np.ndarray]:
    """data/order/epoch-NNNNN.npy for every epoch the run reached (a plain .npy, as OLMo's
    global_indices.npy), and the orders themselves."""
    n = (stream.num_tokens - 1) // cfg.data.seq_len
    last_epoch = (last_step * cfg.batch_instances - 1) // n
    orders = {}
    out.mkdir(parents=True)
    for epoch in range(last_epoch + 1):
        orders[epoch] = data.epoch_order(cfg.trainer.seed, epoch, stream.fingerprint, n)
        np.save(out / f"epoch-{epoch:05d}.npy", orders[epoch].astype(data.order_dtype(n)))
    return orders


def copy_token_folders(stream: data.Stream, manifest: dict[str, Any], rel: Path) -> None:
    names = data.released_names([f["name"] for f in manifest["folders"]])
    for folder, entry, name in zip(stream.folders, manifest["folders"], names):
        entry["released"] = (data.RELEASED_TOKENS / name).as_posix()
        log.info(f"data: copying {folder} ({entry['num_tokens']:,} tokens) to {entry['released']}")
        (rel / entry["released"]).mkdir(parents=True)
        for file in entry["files"]:
            shutil.copyfile(folder / file, rel / entry["released"] / file)


def export(folder: Path, out: Path) -> None:
    model = load_model(folder)
    to_hf(model, out, load_model_tokenizer(folder))


def environment(run_dir: Path, world_sizes: list[int]) -> dict[str, Any]:
    import torch
    import transformers

    launches = [json.loads(line) for line in (run_dir / LAUNCHES).read_text().splitlines()] \
        if (run_dir / LAUNCHES).exists() else []
    return {
        "training": {"world_sizes": world_sizes, "launches": launches},
        "release": {"lmforge": __version__, "torch": torch.__version__, "numpy": np.__version__,
                    "transformers": transformers.__version__, "python": platform.python_version()},
    }


def build_release(run_dir: Path, out: Path, *, checkpoints: str = "all", tasks: str | None = None,
                  eval_limit: int | None = None, score_revisions: bool = False, include_data: bool = False,
                  stage: str = "", license: str = "apache-2.0", overwrite: bool = False) -> Path:
    """`score_revisions` scores every revision on `tasks` (revisions.json, the card, scores.png), not
    only the final model: how the scores grew over training, as OLMo reports per checkpoint.
    `include_data` copies the token folders into data/tokens/ (the manifest's files only), so the
    release holds the data itself and verifies without the training machine's paths."""
    run_dir, out = Path(run_dir), Path(out)
    if score_revisions and not tasks:
        raise LmforgeError("--score-revisions needs --tasks (the tasks to score every revision on)")
    if not (run_dir / "config.yaml").exists():
        raise LmforgeError(f"{run_dir} is not a run directory (no config.yaml); give the trainer.run_dir of a run")
    if out.exists() and not overwrite:
        raise LmforgeError(f"{out} exists; choose a new folder or pass --overwrite")
    cfg = RunConfig.from_yaml(run_dir / "config.yaml")
    available = complete_checkpoints(run_dir)
    chosen = pick(available, checkpoints)
    last = max(chosen)
    batch_tokens = cfg.trainer.batch_tokens
    unit = naming.choose_unit(last * batch_tokens)
    rows = {r["step"]: r for r in read_rows(run_dir) if "step" in r}
    skipped = sorted(set(cfg.trainer.skip_steps) | rolled_back_steps(run_dir))
    prefix = f"{stage}-" if stage and not stage.endswith("-") else stage

    with staged_folder(out) as rel:  # replaces `out` only when complete
        log.info(f"release of {run_dir}: {len(chosen)} revision(s), final step {last}")
        stream = data.Stream(cfg.data.train)
        orders = write_order(stream, cfg, last, rel / "data" / "order")
        counts = training_counts(cfg, orders, last, set(skipped))
        manifest = data.manifest(stream, cfg.to_dict(), counts, skipped)
        if include_data:
            copy_token_folders(stream, manifest, rel)
        _json(rel / "data" / "manifest.json", manifest)

        revisions, previous = [], 0
        for step, folder in chosen.items():
            name = naming.revision_name(step, batch_tokens, unit, prefix=prefix)
            log.info(f"revision {name}: exporting {folder}")
            export(folder, rel / "revisions" / name)
            row = rows.get(step, {})
            files = {p.name: file_sha256(p) for p in sorted((rel / "revisions" / name).iterdir())}
            revisions.append({
                "name": name, "step": step, "tokens": step * batch_tokens, "steps": [previous + 1, step],
                "loss": row.get("loss"), "val_loss": row.get("val_loss"),
                "evals": {k: v for k, v in sorted(row.items()) if k.startswith("eval/")},
                "batch_crc": row.get("batch_crc"), "content_crc": row.get("content_crc"), "files": files,
            })
            previous = step
        expected = sorted(set(range(cfg.trainer.checkpoint_every, last + 1, cfg.trainer.checkpoint_every))
                          | cfg.trainer.kept_steps(last))
        pruned = [s for s in expected if s not in available]
        for p in sorted((rel / "revisions" / revisions[-1]["name"]).iterdir()):  # the root: the final model
            shutil.copy2(p, rel / p.name)

        (rel / "logs").mkdir()
        shutil.copyfile(run_dir / "metrics.jsonl", rel / "logs" / "metrics.jsonl")
        if (run_dir / "faults" / "rollbacks.jsonl").exists():
            shutil.copyfile(run_dir / "faults" / "rollbacks.jsonl", rel / "logs" / "rollbacks.jsonl")
        (rel / "training").mkdir()
        shutil.copyfile(run_dir / "config.yaml", rel / "training" / "config.yaml")
        world_sizes = sorted({ckpt.read_json(f / "trainer.json")["world_size"] for f in available.values()})
        _json(rel / "environment.json", environment(run_dir, world_sizes))

        results = None
        if tasks:
            scored = revisions if score_revisions else revisions[-1:]
            scores = {}
            for i, revision in enumerate(scored, 1):
                log.info(f"scoring {revision['name']} on {tasks} ({i}/{len(scored)})")
                scores[revision["name"]] = score(rel / "revisions" / revision["name"], tasks, eval_limit)
            if score_revisions:
                for revision in revisions:
                    revision["scores"] = scores[revision["name"]]
            results = {"model": revisions[-1]["name"], "limit": eval_limit, "tasks": scores[revisions[-1]["name"]]}
            _json(rel / "results.json", results)
        _json(rel / REVISIONS, {"unit": unit, "batch_tokens": batch_tokens,
                                "rule": "tokens = ceil(step × batch_tokens / unit)", "revisions": revisions,
                                "missing_steps": pruned})
        plot(run_dir, rel / "loss.png")
        if score_revisions:
            plot_scores(revisions, rel / "scores.png")
        (architecture,) = json.loads((rel / "config.json").read_text())["architectures"]
        (rel / "README.md").write_text(card.model_card(run_dir.resolve().name, cfg, manifest, revisions, results,
                                                       architecture=architecture, license=license, pruned=pruned,
                                                       skipped=skipped))
        assessment = openness.assess(rel)
        (rel / "OPENNESS.md").write_text(openness.openness_markdown(assessment))
        _json(rel / "openness.json", openness.openness_json(assessment))
        write_sums(rel)
    if pruned:
        log.warning(f"{len(pruned)} checkpoint(s) of this run were pruned (steps {pruned[:8]}"
                    f"{' …' if len(pruned) > 8 else ''}): the release lists them as missing (revisions.json); "
                    "trainer.release_every keeps them in future runs")
    return out


def score(model_dir: Path, tasks: str, limit: int | None) -> dict[str, dict[str, Any]]:
    """Each task's scores for one exported model (no timings or instances: the release is deterministic)."""
    from lmforge.eval.harness import evaluate

    results = evaluate(model_dir, tasks, limit=limit, progress=False)
    return {spec: {k: v for k, v in r.items() if k not in ("instances", "seconds")}
            for spec, r in results["tasks"].items()}


def plot(run_dir: Path, path: Path) -> None:
    from lmforge.plot import plot_run

    plot_run(run_dir, path)


def plot_scores(revisions: list[dict[str, Any]], path: Path) -> None:
    from lmforge.plot import plot_series

    series = {f"{spec} ({r['primary_metric']})": [] for spec, r in revisions[-1]["scores"].items()}
    for revision in revisions:
        for spec, r in revision["scores"].items():
            series[f"{spec} ({r['primary_metric']})"].append((revision["tokens"], r["primary_score"]))
    plot_series(series, path, xlabel="tokens", ylabel="score", title="scores by revision")


def write_sums(rel: Path) -> None:
    """SHA256SUMS over every file, sorted, in `sha256sum -c` format."""
    lines = [f"{file_sha256(p)}  {p.relative_to(rel).as_posix()}"
             for p in sorted(rel.rglob("*")) if p.is_file() and p.name != SUMS]
    (rel / SUMS).write_text("\n".join(lines) + "\n")


def _json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
