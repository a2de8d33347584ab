"""`lmforge verify REL`: check a release against itself and against the token bytes.

1. every file against SHA256SUMS (and nothing unlisted);
2. every token file against data/manifest.json, and the data fingerprint recomputed from the
   token bytes (a meta.json is never trusted), in the order training/config.yaml reads them;
3. the order of every epoch rebuilt from the seed and that fingerprint, against data/order/;
4. each logged step's instances rebuilt, their `batch_crc` and (the tokens) `content_crc`
   against logs/metrics.jsonl (`--step N`, `--sample K` or every logged step);
5. the revision index: names by the token rule, files, CRCs;
6. with `--scores`, the evaluation results: results.json and every revision's `scores`,
   rescored from the released weights (the costly part: a forward pass per task document).

Each problem is one line naming the file (and the step); nothing is trusted that can be
recomputed. A release of any world size verifies in one process: the order and the CRCs do
not depend on it.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lmforge.errors import LmforgeError
from lmforge.fsutil import file_sha256
from lmforge.release import data, naming

MAX_STEP_LINES = 5  # a changed seed breaks every step: say the first few, then count
SCORE_TOLERANCE = 1e-4  # relative, and absolute near 0: rescoring on another machine (threads, BLAS) moves
# log-probabilities by ~1e-6 each, and a summed metric (sum_logits_corr) by its size times that


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        what = ", ".join(f"{v} {k}" for k, v in self.checked.items())
        return f"verified: {what}" if self.ok else f"{len(self.problems)} problem(s); checked {what}"


def require_release(rel: Path) -> None:
    for name in ("revisions.json", "SHA256SUMS", "data/manifest.json", "training/config.yaml", "logs/metrics.jsonl"):
        if not (rel / name).is_file():
            raise LmforgeError(f"{rel} is not an lmforge release (no {name}); make one with "
                               "`lmforge release RUN --out FOLDER`")


def check_sums(rel: Path, report: Report) -> None:
    listed: dict[str, str] = {}
    for n, line in enumerate((rel / "SHA256SUMS").read_text().splitlines(), 1):
        digest, _, name = line.partition("  ")
        if not name or len(digest) != 64:
            report.problems.append(f"SHA256SUMS line {n}: not `<sha256>  <path>`")
            continue
        listed[name] = digest
    for name, digest in listed.items():
        path = rel / name
        if not path.is_file():
            report.problems.append(f"{name}: listed in SHA256SUMS but missing")
        elif file_sha256(path) != digest:
            report.problems.append(f"{name}: SHA-256 differs from SHA256SUMS (changed after the release)")
    for path in sorted(rel.rglob("*")):
        name = path.relative_to(rel).as_posix()
        if path.is_file() and name != "SHA256SUMS" and name not in listed:
            report.problems.append(f"{name}: not listed in SHA256SUMS")
    report.checked["files"] = len(listed)


def locate(rel: Path, folder: dict[str, Any], data_dir: Path | None) -> Path:
    """Where a token folder is: under --data, in the release (--include-data), or where it was trained."""
    if data_dir is not None:
        return data_dir / folder["name"]
    return rel / folder["released"] if "released" in folder else Path(folder["path"])


def check_data(rel: Path, cfg: dict, manifest: dict, data_dir: Path | None, report: Report) -> data.Stream | None:
    """Token files against the manifest; the fingerprints from the bytes. The stream as the
    config reads it, or None when the token folders are not there."""
    by_path = {str(Path(f["path"])): f for f in manifest["folders"]}
    listed = [str(Path(p)) for p in cfg["data"]["train"]]
    if listed != list(by_path):
        report.problems.append("training/config.yaml: data.train lists the token folders in another order (or "
                               f"others) than data/manifest.json: {listed} vs {list(by_path)}")
    folders = []
    for path in listed:
        entry = by_path.get(path)
        if entry is None:
            report.problems.append(f"training/config.yaml: data.train folder {path} is not in data/manifest.json")
            return None
        where = locate(rel, entry, data_dir)
        if not where.is_dir():
            report.problems.append(f"{where}: token folder not found (pass --data DIR holding {entry['name']}/)")
            return None
        for name, digest in entry["files"].items():
            if not (where / name).is_file():
                report.problems.append(f"{where / name}: missing (listed in data/manifest.json)")
            elif file_sha256(where / name) != digest:
                report.problems.append(f"{where / name}: SHA-256 differs from data/manifest.json")
        folders.append(where)
    report.checked["token folders"] = len(folders)
    stream = data.Stream(folders)
    for where, meta, fingerprint in zip(folders, stream.metas, stream.folder_fingerprints):
        if meta.get("fingerprint") != fingerprint:
            report.problems.append(f"{where / 'meta.json'}: fingerprint {meta.get('fingerprint')}, but its token "
                                   f"bytes give {fingerprint} (a forged or stale meta.json)")
    if manifest["fingerprint"] != stream.fingerprint:
        report.problems.append(f"data/manifest.json: data fingerprint {manifest['fingerprint']}, but the token bytes "
                               f"give {stream.fingerprint}")
    return stream


def rebuilt_orders(cfg: dict, stream: data.Stream, last_step: int) -> dict[int, np.ndarray]:
    seq_len, batch = cfg["data"]["seq_len"], cfg["trainer"]["batch_tokens"] // cfg["data"]["seq_len"]
    n = (stream.num_tokens - 1) // seq_len
    epochs = (max(last_step, 1) * batch - 1) // n + 1
    return {e: data.epoch_order(cfg["trainer"]["seed"], e, stream.fingerprint, n) for e in range(epochs)}


def check_order(rel: Path, orders: dict[int, np.ndarray], report: Report) -> None:
    for epoch, want in orders.items():
        name = f"data/order/epoch-{epoch:05d}.npy"
        try:
            got = np.load(rel / name, allow_pickle=False)
        except FileNotFoundError:
            report.problems.append(f"{name}: missing (training reached epoch {epoch})")
            continue
        except (ValueError, OSError) as error:
            report.problems.append(f"{name}: unreadable ({error}; truncated?)")
            continue
        if len(got) != len(want):
            report.problems.append(f"{name}: {len(got):,} instances, the data makes {len(want):,} (truncated?)")
        elif not np.array_equal(got, want):
            first = int(np.nonzero(got != want)[0][0])
            report.problems.append(f"{name}: differs from the order the seed and the data give (first at "
                                   f"position {first})")
    report.checked["epochs"] = len(orders)


def logged_rows(rel: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (rel / "logs" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "batch_crc" in r]


def pick_rows(rows: list[dict], step: int | None, sample: int | None) -> list[dict]:
    if step is not None:
        chosen = [r for r in rows if r["step"] == step]
        if not chosen:
            span = f"{rows[0]['step']}..{rows[-1]['step']}" if rows else "none"
            raise LmforgeError(f"--step {step}: logs/metrics.jsonl has no row for step {step} (logged steps: {span})")
        return chosen
    if sample is not None and sample < len(rows):
        return sorted(random.Random(0).sample(rows, sample), key=lambda r: r["step"])
    return rows


def check_steps(rows: list[dict], cfg: dict, stream: data.Stream, orders: dict[int, np.ndarray],
                report: Report) -> None:
    seq_len, batch = cfg["data"]["seq_len"], cfg["trainer"]["batch_tokens"] // cfg["data"]["seq_len"]
    bad: list[str] = []
    for row in rows:
        instances = data.instances_of_steps(orders, batch, row["step"], row["step"])
        crc = data.batch_crc(instances)
        if crc != row["batch_crc"]:
            bad.append(f"logs/metrics.jsonl step {row['step']}: batch_crc {row['batch_crc']} logged, {crc} recomputed "
                       "from the seed, the data and the order")
        if "content_crc" in row:
            content = data.content_crc(stream, instances, seq_len)
            if content != row["content_crc"]:
                bad.append(f"logs/metrics.jsonl step {row['step']}: content_crc {row['content_crc']} logged, "
                           f"{content} recomputed from the token bytes")
    report.problems += bad[:MAX_STEP_LINES]
    if len(bad) > MAX_STEP_LINES:
        report.problems.append(f"logs/metrics.jsonl: … and {len(bad) - MAX_STEP_LINES} more step mismatches")
    report.checked["steps"] = len(rows)


def check_revisions(rel: Path, index: dict, rows: dict[int, dict], report: Report) -> None:
    unit, batch_tokens = index["unit"], index["batch_tokens"]
    for rev in index["revisions"]:
        name, step = rev["name"], rev["step"]
        tokens = naming.scaled_tokens(step * batch_tokens, unit)  # the rule `lmforge release` names by
        if not re.fullmatch(rf"(.*-)?step{step}-tokens{tokens}{unit}", name):
            report.problems.append(f"revisions.json {name}: not the name of step {step} "
                                   f"(step{step}-tokens{tokens}{unit} by the token rule)")
        for fname, digest in rev["files"].items():
            path = rel / "revisions" / name / fname
            if not path.is_file() or file_sha256(path) != digest:
                report.problems.append(f"revisions/{name}/{fname}: missing or differs from revisions.json")
        logged = rows.get(step, {}).get("batch_crc")
        if rev.get("batch_crc") is not None and logged is not None and logged != rev["batch_crc"]:
            report.problems.append(f"revisions.json {name}: batch_crc {rev['batch_crc']}, "
                                   f"logged {logged} at step {step}")
    report.checked["revisions"] = len(index["revisions"])


def check_scores(rel: Path, index: dict, report: Report) -> None:
    """Rescore the released weights on the released tasks; every metric must match."""
    from lmforge.eval.harness import evaluate

    if not (rel / "results.json").is_file():
        report.problems.append("results.json: missing, nothing to rescore (release with --tasks)")
        return
    results = json.loads((rel / "results.json").read_text())
    claims = [("results.json", rel, results["tasks"])]
    claims += [(f"revisions.json {r['name']}", rel / "revisions" / r["name"], r["scores"])
               for r in index["revisions"] if "scores" in r]
    for where, model_dir, claimed in claims:
        rescored = evaluate(model_dir, list(claimed), limit=results.get("limit"), progress=False)["tasks"]
        for spec, score in claimed.items():
            for metric, value in score["metrics"].items():
                got = rescored[spec]["metrics"].get(metric)
                if got is None or not math.isclose(got, value, rel_tol=SCORE_TOLERANCE, abs_tol=SCORE_TOLERANCE):
                    report.problems.append(f"{where}: {spec} {metric} {value}, rescored {got}")
    report.checked["scored models"] = len(claims)


def verify(rel: Path, *, step: int | None = None, sample: int | None = None, data_dir: Path | None = None,
           scores: bool = False) -> Report:
    rel = Path(rel)
    require_release(rel)
    report = Report()
    check_sums(rel, report)
    cfg = yaml.safe_load((rel / "training" / "config.yaml").read_text())
    manifest = json.loads((rel / "data" / "manifest.json").read_text())
    index = json.loads((rel / "revisions.json").read_text())
    rows = logged_rows(rel)
    stream = check_data(rel, cfg, manifest, data_dir, report)
    if stream is None:
        return report
    last = max([r["step"] for r in rows] + [r["step"] for r in index["revisions"]] + [1])
    orders = rebuilt_orders(cfg, stream, last)
    check_order(rel, orders, report)
    check_steps(pick_rows(rows, step, sample), cfg, stream, orders, report)
    check_revisions(rel, index, {r["step"]: r for r in rows}, report)
    if scores:
        check_scores(rel, index, report)
    return report
