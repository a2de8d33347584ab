"""Fault injection: what each fault costs a run, and whether the run that survives it is the run
that never had it.

    .venv/bin/python benchmarks/faults.py [--ranks 4] [--steps 16] [--only hang,freeze]

Every case trains the same tiny model on `--ranks` gloo ranks under `torchrun
--max-restarts=2` (tests/dist_worker.py) and injects one fault on the first attempt only
(tests/fault_injection.py): a rank killed (SIGKILL), hung in compute, frozen (SIGSTOP), slowed
(a fixed delay per block), NaN forwards for 3 steps in a row, the disk filled before a
checkpoint (a small tmpfs: needs root, else the case is skipped), SIGTERM to one rank (which
ends the job cleanly: the relaunch is a second command, as a requeue would be). For each it
reports, from the run's own records (RUN/faults/*.json*, stragglers.jsonl, metrics.jsonl):

- detect: seconds from the injection to lmforge's record of it (the hang record, the first
  straggler row); "step" where lmforge acts within the step (NaN, full disk, SIGTERM);
  "torchrun" where the launcher sees the dead process;
- resume: seconds from the injection to the next launch training again (resumed from
  `latest`), by torchrun's restart or the relaunch;
- steps redone: the fault's step minus the step the next launch resumed from;
- restarts: launches after the first;
- suspect: whether the rank lmforge named is the injected one;
- equal: metrics rows (loss, z-loss, grad norm, lr, batch CRC, tokens) and the final weights'
  SHA-256 equal to a fault-free run's (for NaN: a fault-free run that skips the same batches).

The table goes to stdout and benchmarks/results/faults.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from benchlib import REPO

sys.path.insert(0, str(REPO / "tests"))  # the fault injections and the worker are test code
from fault_injection import read_injected  # noqa: E402

WORKER = REPO / "tests" / "dist_worker.py"
COMPARED = ("loss", "z_loss", "grad_norm", "lr", "batch_crc", "tokens")
FAULT_STEP = 6
CASES = {  # name: (worker arguments, step of the fault, injected rank or None)
    "kill": (["--kill-rank=1", f"--kill-after-step={FAULT_STEP}"], FAULT_STEP, None),
    "hang": ([f"--hang=1:{FAULT_STEP}"], FAULT_STEP, 1),
    "freeze": ([f"--freeze=0:{FAULT_STEP}"], FAULT_STEP, 0),
    "slow": (["--slow=2:0.03"], None, 2),
    "nan": (["--inject-nan-at=9,10,11"], 11, None),
    "disk_full": (["--fill-disk-at=8"], 8, None),
    "sigterm": (["--sigterm-rank=1", f"--sigterm-after-step={FAULT_STEP}"], FAULT_STEP, None),
}


def token_data(root: Path) -> Path:
    """A tokenizer and a token folder, as the tests make them (tests/conftest.py)."""
    from conftest import write_corpus

    from lmforge.data.tokenize import tokenize
    from lmforge.data.tokenizer import train_bpe

    corpus = write_corpus(root / "train.jsonl", 600, seed=1)
    tok = train_bpe([corpus], vocab_size=512, show_progress=False)
    tok.save(root / "tokenizer.json")
    tokenize([corpus], tok, root / "train", workers=1, progress=False)
    return root


def run_config(data: Path, run_dir: Path, ranks: int, steps: int, **trainer) -> dict:
    return {
        "model": {"vocab_size": 512, "d_model": 32, "n_layers": 1, "n_heads": 2, "mlp_hidden": 64},
        "data": {"train": [str(data / "train")], "seq_len": 32},
        "optim": {"schedule": "constant", "warmup_steps": 4},
        "trainer": {"run_dir": str(run_dir), "batch_tokens": 32 * ranks, "micro_batch_size": 1, "max_steps": steps,
                    "checkpoint_every": 4, "keep_checkpoints": 0, "log_every": 1, **trainer},
        "faults": {"stall_floor_s": 3.0, "stall_factor": 10.0, "stall_long_s": 60.0, "heartbeat_s": 0.5,
                   "collective_timeout_s": 30.0},
        "tokenizer": str(data / "tokenizer.json"),
    }


def torchrun(ranks: int, config: dict, path: Path, *args: str) -> subprocess.CompletedProcess:
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}  # README: restarts
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
           "--max-restarts=2", str(WORKER), str(path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def weights_sha256(run_dir: Path) -> str:
    from lmforge.model.io import load_model

    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    digest = hashlib.sha256()
    for name, tensor in sorted(load_model(latest).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def equal_runs(run_dir: Path, reference: Path) -> bool:
    rows = [{k: r.get(k) for k in COMPARED} for r in jsonl(run_dir / "metrics.jsonl")]
    want = [{k: r.get(k) for k in COMPARED} for r in jsonl(reference / "metrics.jsonl")]
    return rows == want and weights_sha256(run_dir) == weights_sha256(reference)


def small_disk(path: Path, size: str = "8m") -> bool:
    path.mkdir(parents=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return made.returncode == 0


def measure(name: str, run_dir: Path, reference: Path, fault_step: int | None, rank: int | None) -> dict:
    injected = read_injected(run_dir)
    launches = jsonl(run_dir / "faults" / "launches.jsonl")
    t0 = injected[0]["time"] if injected else None
    row: dict = {"fault": name, "restarts": max(len(launches) - 1, 0)}
    last = json.loads((run_dir / "faults" / "last.json").read_text()) if (run_dir / "faults" / "last.json").exists() \
        else None
    stragglers = jsonl(run_dir / "stragglers.jsonl")
    if name in ("hang", "freeze") and last and t0:
        row["detect"] = last["time"] - t0
        row["suspect_ok"] = [s["rank"] for s in last["suspects"]] == [rank]
    elif name == "slow":
        row["detect"] = stragglers[0]["time"] - t0 if stragglers and t0 else None
        row["suspect_ok"] = bool(stragglers) and {s["rank"] for s in stragglers} == {rank}
    else:
        row["detect"] = "torchrun" if name == "kill" else "step"
    if len(launches) > 1 and t0:
        row["resume"] = launches[1]["time"] - t0
        row["steps_redone"] = fault_step - launches[1]["from_step"]
    else:
        row["resume"], row["steps_redone"] = None, 0
    row["equal"] = equal_runs(run_dir, reference)
    return row


def cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return f"{value:.1f} s" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "faults.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lmforge-faults-"))
    data = token_data(root)
    ranks, steps = args.ranks, args.steps
    print(f"{ranks} gloo ranks, {steps} steps, checkpoint every 4; fault at step {FAULT_STEP} unless said", flush=True)
    references = {}
    for skip in ([], [9, 10, 11]):
        ref = root / f"reference-skip{len(skip)}"
        out = torchrun(ranks, run_config(data, ref, ranks, steps, skip_steps=skip), root / f"ref{len(skip)}.yaml")
        assert out.returncode == 0, out.stderr[-3000:]
        references[len(skip)] = ref
    rows = []
    for name in args.only.split(","):
        worker_args, fault_step, rank = CASES[name]
        run_dir = root / name / "run"
        if name == "disk_full" and not small_disk(root / name):
            print(f"{name}: skipped (mounting a tmpfs needs root)", flush=True)
            continue
        cfg = run_config(data, run_dir, ranks, steps)
        start = time.time()
        out = torchrun(ranks, cfg, root / f"{name}.yaml", *worker_args)
        if name == "sigterm" and out.returncode == 0:  # a clean stop: the requeue is a second launch
            out = torchrun(ranks, cfg, root / f"{name}.yaml")
        if out.returncode != 0:
            print(f"{name}: the run failed:\n{out.stderr[-3000:]}", flush=True)
            rows.append({"fault": name, "failed": True})
            continue
        row = measure(name, run_dir, references[3 if name == "nan" else 0], fault_step, rank)
        row["wall"] = time.time() - start
        rows.append(row)
        print(f"{name}: done in {row['wall']:.0f} s", flush=True)
        if name == "disk_full":
            subprocess.run(["umount", "-l", str(root / name)], check=False)
    columns = ("fault", "detect", "resume", "steps_redone", "restarts", "suspect_ok", "equal")
    table = [columns] + [tuple(cell(r.get(c)) for c in columns) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(columns))]
    print()
    for line in table:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/faults.py " + " ".join(sys.argv[1:])
    args.out.write_text(json.dumps({"ranks": ranks, "steps": steps, "rows": rows, "command": command}, indent=1) + "\n")
    print(f"\nwrote {args.out}; command: {command}")


if __name__ == "__main__":
    main()
