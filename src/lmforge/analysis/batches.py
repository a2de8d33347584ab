"""What did step N train on? Recomputed from the run's config alone: the data order is a
pure function of (seed, epoch, data fingerprint), so no log of batches is needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.data.dataset import InstanceDataset, TokenStream
from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import LmforgeError
from lmforge.train.config import RunConfig


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise LmforgeError(f"{run_dir}: not a run directory (config.yaml is missing)")
    return RunConfig.from_yaml(path)


def format_instance(row: dict[str, Any]) -> str:
    """An instance as a person reads it: each document's covered text under a rule naming it,
    so the boundaries inside the packed sequence are visible."""
    lines = [f"instance {row['instance']} (tokens {row['start']}:{row['end']})"]
    for doc in row["documents"]:
        lines.append(f"  ── {doc['id']} ({doc['source']}, tokens {doc['start']}:{doc['end'] + 1}) " + "─" * 8)
        if "covered" in doc:
            lines += ["  │ " + line for line in doc["covered"].splitlines() or [""]]
    return "\n".join(lines)


def batch_documents(run_dir: str | Path, step: int, *, words: int = 8) -> list[dict[str, Any]]:
    """One row per instance of optimizer step `step` (1-based): its index, token range, and the
    documents it covers (id, source, first words, and `covered`: the decoded text of the part
    of the document inside this instance, when the run has a tokenizer)."""
    cfg = load_run_config(run_dir)
    if step < 1:
        raise LmforgeError(f"--step must be ≥ 1 (steps count from 1), got {step}")
    stream = TokenStream(cfg.data.train)
    dataset = InstanceDataset(stream, cfg.data.seq_len, seed=cfg.trainer.seed)
    tokenizer = Tokenizer.load(cfg.tokenizer) if cfg.tokenizer else None
    instances = dataset.instances_at((step - 1) * cfg.batch_instances, cfg.batch_instances)
    rows = []
    for instance in instances.tolist():
        start, end = dataset.token_range(instance)
        docs = []
        for folder, span in stream.documents_in(start, end):
            doc = {"id": span.id, "source": span.source, "folder": folder, "start": span.start, "end": span.end}
            if tokenizer is not None:
                head = stream.read(span.start, min(span.end, span.start + 4 * words))
                doc["first_words"] = " ".join(tokenizer.decode(head.tolist()).split()[:words])
                # The span [start, end] includes the closing EOS; the instance is [start, end).
                covered = stream.read(max(span.start, start), min(span.end + 1, end))
                doc["covered"] = tokenizer.decode(covered.tolist())
            docs.append(doc)
        rows.append({"instance": instance, "start": start, "end": end, "documents": docs})
    return rows
