"""Training throughput of the demo model on this machine: eager vs torch.compile, side by side.

    .venv/bin/python benchmarks/bench_train_speed.py [--steps 20] [--repeats 3]

Needs the demo's token files (run `make demo` first, or pass --tokens). Each case trains the
`configs/demo.yaml` model for --steps steps after 3 warm-up steps (compilation happens in the
warm-up); prints median tokens/s per case and the ratio; writes benchmarks/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO, report, run_interleaved

WARMUP = 3


def tokens_per_s(tokens: Path, compile_model: bool, steps: int) -> float:
    from lmforge.data.dataset import BatchLoader
    from lmforge.train.config import RunConfig
    from lmforge.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig.from_yaml(REPO / "configs" / "demo.yaml", [
            f"--trainer.run_dir={tmp}", f"--data.train=[{tokens / 'train'}]", "--data.validation=[]",
            "--tokenizer=null", f"--trainer.compile={str(compile_model).lower()}", f"--trainer.max_steps={steps + WARMUP}",
        ])
        trainer = Trainer(cfg, callbacks=[])
        batches = iter(BatchLoader(trainer.dataset, cfg.batch_instances))
        for trainer.step in range(1, WARMUP + 1):
            trainer.train_step(next(batches))
        start = time.perf_counter()
        for trainer.step in range(WARMUP + 1, WARMUP + steps + 1):
            metrics = trainer.train_step(next(batches))
        float(metrics["loss"])  # wait for the last step
        return steps * cfg.trainer.batch_tokens / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=Path, default=REPO / "runs" / "demo" / "tokens")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (args.tokens / "train" / "meta.json").exists():
        print(f"{args.tokens}/train has no token files: run `make demo` first or pass --tokens", file=sys.stderr)
        return 2
    results = run_interleaved({
        "torch.compile": lambda: tokens_per_s(args.tokens, True, args.steps),
        "eager": lambda: tokens_per_s(args.tokens, False, args.steps),
    }, args.repeats)
    report("train_speed", results, unit="tokens/s", ours="torch.compile", peer="eager",
           command=f".venv/bin/python benchmarks/bench_train_speed.py --steps {args.steps} --repeats {args.repeats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
