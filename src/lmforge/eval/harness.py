"""`evaluate`: OLMES tasks (rank classification) on an lmforge checkpoint, a transformers OLMo 2
folder or a model in memory; per-task metrics as OLMES defines them, per-instance predictions,
a printed table and JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import LmforgeError
from lmforge.eval.metrics import aggregate, doc_metrics
from lmforge.eval.scoring import score_requests
from lmforge.eval.tasks import Request, Task, load_task, resolve_task
from lmforge.fsutil import atomic_write
from lmforge.parallel import cuda

DEFAULT_VARIANT = "rc_0shot"
# OLMES's multiple-choice core (MMLU is not in the wheel), each on its rc_0shot file.
DEFAULT_EVAL_TASKS = (
    "arc_easy", "arc_challenge", "boolq", "csqa", "hellaswag", "openbookqa", "piqa", "sciq", "socialiqa", "winogrande",
)  # fmt: skip


def parse_tasks(tasks: str | Sequence[str], variant: str = DEFAULT_VARIANT) -> list[tuple[str, str]]:
    """'arc_easy,hellaswag:rc_5shot' (or a list) → [(task, variant), ...], every name checked."""
    specs = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    specs = [s.strip() for s in specs if s.strip()]
    if not specs:
        raise LmforgeError("no tasks given; name some, e.g. --tasks arc_easy,hellaswag")
    pairs, problems = [], []
    for spec in specs:  # every bad name at once, not one per run
        try:
            pairs.append(resolve_task(spec, variant))
        except LmforgeError as e:
            problems.append(str(e))
    if problems:
        raise LmforgeError(problems[0] if len(problems) == 1 else f"{len(problems)} problems: " + "; ".join(problems))
    return list(dict.fromkeys(pairs))


def load_for_eval(
    path: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> tuple[torch.nn.Module, Tokenizer, int | None]:
    """(model, tokenizer, prefix token id) from an lmforge checkpoint (model.yaml + weights,
    consolidated or sharded) or a transformers OLMo 2 folder (config.json), each with its
    tokenizer beside it."""
    from lmforge.model.hf import from_hf
    from lmforge.model.io import (
        CONFIG_FILE,
        check_tokenizer_fits,
        load_model,
        load_model_tokenizer,
        model_folder_problem,
    )

    folder = Path(path)
    device = device or ("cuda" if cuda.is_available() else "cpu")
    prefix = None
    if not folder.is_dir():
        raise LmforgeError(model_folder_problem(folder))
    if (folder / CONFIG_FILE).exists():
        model = load_model(folder, device=device)
        tokenizer = load_model_tokenizer(folder)
    elif (folder / "config.json").exists():
        model = from_hf(folder, device=device)
        tokenizer = Tokenizer.load(folder) if (folder / "tokenizer.json").exists() else None
        prefix = _hf_bos_id(folder, tokenizer)
    else:
        raise LmforgeError(model_folder_problem(folder))
    if tokenizer is None:
        raise LmforgeError(f"{folder}: no tokenizer.json beside the model; evaluation needs the model's tokenizer")
    check_tokenizer_fits(model.cfg, tokenizer, str(folder))
    if dtype is not None:
        model = model.to(dtype)
    return model, tokenizer, prefix


def _hf_bos_id(folder: Path, tokenizer: Tokenizer | None) -> int | None:
    """lm-eval's prefix token for an empty context: the tokenizer's BOS if it names one."""
    config = folder / "tokenizer_config.json"
    if tokenizer is None or not config.exists():
        return None
    bos = json.loads(config.read_text()).get("bos_token")
    bos = bos.get("content") if isinstance(bos, dict) else bos
    return tokenizer.hf.token_to_id(bos) if isinstance(bos, str) else None


def evaluate(
    model_or_path: str | Path | torch.nn.Module,
    tasks: str | Sequence[str] | None,
    *,
    tokenizer: Tokenizer | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    variant: str = DEFAULT_VARIANT,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    token_folders: Sequence[str | Path] | None = None,
    ppl_seq_len: int | None = None,
    ppl_max_tokens: int | None = None,
    ppl_batch_size: int | None = None,
) -> dict[str, Any]:
    """Score OLMES tasks ('arc_easy', 'hellaswag:rc_5shot', ...; `variant` for names without
    one) on the first `limit` documents of each. Returns {"model", "limit", "tasks": {spec: {
    task, variant, primary_metric, primary_score, num_docs, num_requests, metrics, instances}}}.

    With `token_folders` (held-out `lmforge data tokenize` folders) also adds "perplexity":
    loss, perplexity and bits per byte over them (`lmforge.eval.perplexity`), in windows of
    `ppl_seq_len` tokens (default: the model's max_seq_len), `ppl_batch_size` windows per forward
    (default: `batch_size` // 4, at least 1), at most `ppl_max_tokens` tokens. `tasks` may then
    be empty (None)."""
    pairs = parse_tasks(tasks or [], variant) if tasks or not token_folders else []
    if limit is not None and limit < 1:
        raise LmforgeError(f"limit must be at least 1, got {limit}")
    prefix = None
    if isinstance(model_or_path, torch.nn.Module):
        if tokenizer is None:
            raise LmforgeError("evaluate: a model passed in memory needs its tokenizer (tokenizer=...)")
        model, name = model_or_path, "<in-memory model>"
    else:
        model, loaded_tokenizer, prefix = load_for_eval(model_or_path, device=device, dtype=dtype)
        tokenizer = tokenizer or loaded_tokenizer
        name = str(model_or_path)

    out: dict[str, Any] = {"model": name, "limit": limit, "tasks": {}}
    for task_name, task_variant in pairs:
        task = load_task(task_name, task_variant, limit=limit)
        start = time.perf_counter()
        out["tasks"][task.spec] = evaluate_task(
            model, tokenizer, task, batch_size=batch_size, progress=progress, prefix_token_id=prefix
        )
        out["tasks"][task.spec]["seconds"] = round(time.perf_counter() - start, 3)
    if token_folders:
        from lmforge.eval.perplexity import perplexity

        start = time.perf_counter()
        seq_len = ppl_seq_len or getattr(getattr(model, "cfg", None), "max_seq_len", None) or 2048
        out["perplexity"] = perplexity(
            model, list(token_folders), seq_len=seq_len, batch_size=ppl_batch_size or max(1, batch_size // 4),
            max_tokens=ppl_max_tokens, tokenizer=tokenizer, progress=progress,
        )  # fmt: skip
        out["perplexity"]["seconds"] = round(time.perf_counter() - start, 3)
    return out


def evaluate_task(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    task: Task,
    *,
    batch_size: int = 32,
    progress: bool = True,
    prefix_token_id: int | None = None,
) -> dict[str, Any]:
    """Metrics and per-instance records of one loaded task."""
    requests: list[Request] = []
    for doc in task.docs:
        requests += doc.requests
        requests += doc.uncond or []
    scores = score_requests(
        model, tokenizer, requests, batch_size=batch_size, progress=progress, desc=task.spec,
        prefix_token_id=prefix_token_id,
    )  # fmt: skip
    records, pos = [], 0
    for doc in task.docs:
        n = len(doc.requests)
        doc_scores = scores[pos : pos + n]
        pos += n
        uncond = None
        if doc.uncond is not None:
            uncond = scores[pos : pos + n]
            pos += n
        record = doc_metrics(doc.gold, [r.continuation for r in doc.requests], doc_scores, uncond)
        records.append({"doc_id": doc.doc_id, "native_id": doc.native_id, **record})
    metrics = aggregate(records)
    primary = task.primary_metric
    return {
        "task": task.name,
        "variant": task.variant,
        "primary_metric": primary,
        "primary_score": metrics.get(primary),
        "num_docs": len(task.docs),
        "num_requests": len(requests),
        "has_uncond": all(d.uncond is not None for d in task.docs),
        "metrics": metrics,
        "instances": records,
    }


TABLE_COLUMNS = ("acc_raw", "acc_per_token", "acc_per_char", "acc_uncond", "bits_per_byte_corr")


def format_table(results: dict[str, Any]) -> str:
    """One line per task: documents, the primary metric and the accuracies (bpb of the gold);
    then one for the perplexity, if measured."""
    names = "".join(f" {c.removesuffix('_corr'):>13}" for c in TABLE_COLUMNS)
    head = f"{'task':<28} {'docs':>6} {'primary':>24}{names}"
    lines = [head, "-" * len(head)] if results["tasks"] else []  # perplexity only: no empty table
    for spec, r in results["tasks"].items():
        primary = f"{r['primary_metric']} {_fmt(r['primary_score'])}"
        cells = "".join(f" {_fmt(r['metrics'].get(c)):>13}" for c in TABLE_COLUMNS)
        lines.append(f"{spec:<28} {r['num_docs']:>6} {primary:>24}{cells}")
    ppl = results.get("perplexity")
    if ppl:
        bpb = f", bits/byte {ppl['bits_per_byte']:.4f}" if "bits_per_byte" in ppl else ""
        lines.append(f"perplexity {ppl['perplexity']:.4f} (loss {ppl['loss']:.4f} nats/token{bpb}) over "
                     f"{ppl['tokens']:,} tokens of {', '.join(ppl['folders'])}")  # fmt: skip
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def write_json(results: dict[str, Any], path: str | Path, *, instances: bool = True) -> Path:
    """Write the results (optionally without per-instance records) as JSON, atomically."""
    path = Path(path)
    data = results
    if not instances:
        tasks = {k: {n: v for n, v in r.items() if n != "instances"} for k, r in results["tasks"].items()}
        data = {**results, "tasks": tasks}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(data, indent=1) + "\n").encode())
    return path
