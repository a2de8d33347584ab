"""Scoring speed of `lmforge eval` against lm-eval 0.4.13 (`HFLM.loglikelihood`) on the same
exported model and the same OLMES requests (the conditional ones: lm-eval's multiple-choice
task scores no unconditional requests), in one process, cases interleaved.

    .venv/bin/python benchmarks/eval.py [--tasks arc_easy,hellaswag] [--limit 200] [--preset tiny]
                                        [--batch-size 32] [--repeats 3] [--threads 1]

The model is a random-init preset with a BPE trained on the demo corpus (its vocabulary size),
exported with `to_hf`; speed does not depend on the weights. Also prints the largest
difference between the two sides' log-likelihoods. Writes benchmarks/results/eval.json.

Both sides run in this process, so on the same torch intra-op threads (`--threads`, set
explicitly; default 1), and are given the same `--batch-size`, in sequences per forward.
lm-eval's sequence is one request; ours is one context with all its continuations packed
after it (`lmforge.eval.scoring`), so ours holds more requests per forward: `--ours-batch-size`
sets ours apart (e.g. 8 rows ≈ 32 requests) to check that this is not where the speed comes from.
Both sides include their tokenization in the time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchlib import REPO, report, run_interleaved  # noqa: E402

import torch  # noqa: E402

from lmforge.data.tokenizer import train_bpe  # noqa: E402
from lmforge.eval.harness import parse_tasks  # noqa: E402
from lmforge.eval.scoring import score_requests  # noqa: E402
from lmforge.eval.tasks import load_task  # noqa: E402
from lmforge.model.config import ModelConfig  # noqa: E402
from lmforge.model.hf import from_hf, to_hf  # noqa: E402
from lmforge.model.transformer import Transformer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="arc_easy,hellaswag")
    ap.add_argument("--limit", type=int, default=200, help="documents per task")
    ap.add_argument("--preset", default="tiny", help="model preset (its vocab_size is the BPE's)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ours-batch-size", type=int, default=None, help="lmforge's batch size (default: --batch-size)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both sides (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ours_batch = args.ours_batch_size or args.batch_size

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    preset = ModelConfig.preset(args.preset)
    tok = train_bpe([REPO / "data" / "demo" / "train.jsonl.gz"], vocab_size=preset.vocab_size, show_progress=False)
    torch.manual_seed(0)
    model = Transformer(preset.replace(vocab_size=tok.vocab_size))
    requests = []
    for task, variant in parse_tasks(args.tasks):
        for doc in load_task(task, variant, limit=args.limit).docs:
            requests += doc.requests

    with tempfile.TemporaryDirectory(prefix="lmforge-bench-eval-") as tmp:
        folder = to_hf(model, Path(tmp) / "hf", tok)
        ours_model = from_hf(folder)
        lm = HFLM(pretrained=str(folder), dtype="float32", device="cpu", batch_size=args.batch_size)
        instances = [Instance("loglikelihood", {}, (r.context, r.continuation), idx=i) for i, r in enumerate(requests)]
        outputs: dict[str, list[float]] = {}

        def ours() -> float:
            start = time.perf_counter()
            scores = score_requests(ours_model, tok, requests, batch_size=ours_batch, progress=False)
            seconds = time.perf_counter() - start
            outputs["lmforge"] = [s.logprob for s in scores]
            return len(requests) / seconds

        def peer() -> float:
            start = time.perf_counter()
            results = lm.loglikelihood(instances, disable_tqdm=True)
            seconds = time.perf_counter() - start
            outputs["lm-eval"] = [ll for ll, _ in results]
            return len(requests) / seconds

        results = run_interleaved({"lmforge": ours, "lm-eval": peer}, args.repeats)
    diff = max(abs(a - b) for a, b in zip(outputs["lmforge"], outputs["lm-eval"], strict=True))
    print(f"{len(requests):,} requests ({args.tasks}, {args.limit} docs each), preset {args.preset}, "
          f"vocab {tok.vocab_size}, batch {args.batch_size} (ours {ours_batch}), {torch.get_num_threads()} threads; "
          f"max |Δ loglikelihood| = {diff:.2e}")  # fmt: skip
    command = f".venv/bin/python benchmarks/eval.py --tasks {args.tasks} --limit {args.limit} --preset {args.preset} "
    command += f"--batch-size {args.batch_size} --repeats {args.repeats} --threads {args.threads}"
    command += f" --ours-batch-size {args.ours_batch_size}" if args.ours_batch_size else ""
    report("eval", results, unit="requests/s", ours="lmforge", peer="lm-eval", command=command,
           extra={"requests": len(requests), "max_abs_loglikelihood_diff": diff, "threads": torch.get_num_threads(),
                  "batch_size": args.batch_size, "ours_batch_size": ours_batch})  # fmt: skip


if __name__ == "__main__":
    main()
