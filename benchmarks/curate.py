"""Curation throughput: the same filter chain (FineWeb's order: Gopher repetition → Gopher
quality → C4 quality without the terminal-punctuation rule → FineWeb quality) and MinHash
dedup (5-grams, 14 bands × 8 rows, seed 1) through `lmforge data curate` and through
datatrove's `LocalPipelineExecutor`, on the same generated corpus, on this machine's cores.

    .venv/bin/python benchmarks/curate.py [--docs 2400] [--files 8] [--workers 2] [--repeats 3]
    .venv/bin/python benchmarks/curate.py --corpus FOLDER     # time your own *.jsonl.gz files instead

Each run is a fresh subprocess (imports and worker start-up count for both), runs alternate,
medians are reported. datatrove gets its cheapest layout: filters, writer and MinHash
signatures in one pipeline, then its buckets (one task per bucket), cluster and filter stages.
lmforge writes more (removed documents with reasons, attribute files, stats).
Decisions are checked after every round: the documents kept by the filters must be the same
set, and MinHash must form the same duplicate clusters (datatrove keeps an arbitrary member
of a cluster, lmforge the first in corpus order, so the kept ids may differ within a cluster).
Prints documents/s per tool and the ratio; writes benchmarks/results/curate.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from benchlib import report, run_interleaved

FILTER_STEPS = [
    {"gopher_repetition": {}},
    {"gopher_quality": {}},
    {"c4_quality": {"filter_no_terminal_punct": False}},
    {"fineweb_quality": {}},
]


def run_lmforge(corpus: Path, out: Path, workers: int) -> None:
    from lmforge.curate.pipeline import CurateConfig, curate

    steps = [*FILTER_STEPS, {"minhash_dedup": {"ngram": 5, "bands": 14, "rows": 8, "seed": 1}}]
    config = CurateConfig.from_dict({"input": [str(corpus)], "output": str(out), "steps": steps, "workers": workers})
    curate(config, progress=False)


def run_datatrove(corpus: Path, out: Path, workers: int, files: int) -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    mh = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8, seed=1)
    logs = out / "logs"
    filtered = LocalPipelineExecutor(
        pipeline=[
            JsonlReader(str(corpus), glob_pattern="*.jsonl.gz"),
            GopherRepetitionFilter(),
            GopherQualityFilter(),
            C4QualityFilter(filter_no_terminal_punct=False),
            FineWebQualityFilter(),
            JsonlWriter(str(out / "filtered")),
            MinhashDedupSignature(output_folder=str(out / "signatures"), config=mh),
        ],
        tasks=files, workers=workers, logging_dir=str(logs / "1"),
    )  # fmt: skip
    buckets = LocalPipelineExecutor(
        pipeline=[MinhashDedupBuckets(input_folder=str(out / "signatures"), output_folder=str(out / "buckets"), config=mh)],
        tasks=mh.num_buckets, workers=workers, logging_dir=str(logs / "2"), depends=filtered,
    )  # fmt: skip
    cluster = LocalPipelineExecutor(
        pipeline=[MinhashDedupCluster(input_folder=str(out / "buckets"), output_folder=str(out / "remove"), config=mh,
                                      save_cluster_id=True)],
        tasks=1, logging_dir=str(logs / "3"), depends=buckets,
    )  # fmt: skip
    final = LocalPipelineExecutor(
        pipeline=[
            JsonlReader(str(out / "filtered")),
            MinhashDedupFilter(input_folder=str(out / "remove")),
            JsonlWriter(str(out / "final")),
        ],
        tasks=files, workers=workers, logging_dir=str(logs / "4"), depends=cluster,
    )  # fmt: skip
    final.run()


# -- decisions ---------------------------------------------------------------------------------


def _ids(folder: Path) -> list[list[str]]:
    return [[json.loads(line)["id"] for line in gzip.open(p, "rt")] for p in sorted(folder.glob("*.jsonl.gz"))]


def lmforge_decisions(out: Path, corpus: Path) -> tuple[set[str], list[frozenset[str]]]:
    removed = [json.loads(line) for p in (out / "removed").glob("*.gz") for line in gzip.open(p, "rt")]
    filtered_out = {r["id"] for r in removed if r["removed_by"] != "minhash_dedup"}
    everything = {i for ids in _ids(corpus) for i in ids}
    clusters: dict[str, set[str]] = defaultdict(set)
    for r in removed:
        if r["removed_by"] == "minhash_dedup":
            keep = r["attributes"]["minhash_dedup__duplicate_of"]
            clusters[keep] |= {keep, r["id"]}
    return set(everything) - filtered_out, sorted(map(frozenset, clusters.values()), key=sorted)


def datatrove_decisions(out: Path) -> tuple[set[str], list[frozenset[str]]]:
    per_rank = _ids(out / "filtered")
    kept = {i for rank in per_rank for i in rank}
    clusters: dict[int, set[str]] = defaultdict(set)
    for p in sorted((out / "remove").glob("*.clusters")):
        rank = int(p.name.split(".")[0])
        data = p.read_bytes()
        for doc, cluster in struct.iter_unpack("<II", data):
            clusters[cluster].add(per_rank[rank][doc])
    return kept, sorted(map(frozenset, clusters.values()), key=sorted)


# -- driver --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=2400)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus", type=Path, help="a folder of dolma *.jsonl.gz files to time instead of the "
                                                 "generated corpus (--docs, --files and --seed are then ignored)")
    ap.add_argument("--_run", choices=["lmforge", "datatrove"], help=argparse.SUPPRESS)
    ap.add_argument("--_corpus", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._run:  # one timed run, in its own process
        if args._run == "lmforge":
            run_lmforge(Path(args._corpus), Path(args._out), args.workers)
        else:
            run_datatrove(Path(args._corpus), Path(args._out), args.workers, args.files)
        return

    # The generated test corpus lives with the tests (it is test data, not part of the package).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from sample_corpus import build_sample_corpus, write_sample_corpus

    tmp = Path(tempfile.mkdtemp(prefix="lmforge-bench-curate-"))
    if args.corpus is not None:
        files = sorted(args.corpus.glob("*.jsonl.gz"))
        if not files:
            sys.exit(f"{args.corpus}: no *.jsonl.gz files (both tools read that pattern)")
        (tmp / "corpus").symlink_to(args.corpus.resolve(), target_is_directory=True)
        args.files = len(files)
        n_docs = sum(1 for f in files for line in gzip.open(f, "rt") if line.strip())
    else:
        corpus = build_sample_corpus(n_docs=args.docs, seed=args.seed)
        write_sample_corpus(corpus, tmp / "corpus", n_files=args.files)
        n_docs = len(corpus.documents)
    print(f"corpus: {n_docs:,} documents in {args.files} files, {args.workers} workers, {args.repeats} rounds")
    checks: list[dict] = []
    counter = iter(range(10_000))

    def case(tool: str):
        def timed() -> float:
            out = tmp / f"{tool}-{next(counter)}"
            cmd = [sys.executable, __file__, "--_run", tool, "--_corpus", str(tmp / "corpus"), "--_out", str(out),
                   "--workers", str(args.workers), "--files", str(args.files)]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seconds = time.perf_counter() - start
            (tmp / f"last-{tool}").write_text(str(out))
            return n_docs / seconds

        return timed

    def check() -> None:
        ours = lmforge_decisions(Path((tmp / "last-lmforge").read_text()), tmp / "corpus")
        theirs = datatrove_decisions(Path((tmp / "last-datatrove").read_text()))
        checks.append({"filters_kept_equal": ours[0] == theirs[0], "kept_after_filters": len(ours[0]),
                       "minhash_clusters_equal": ours[1] == theirs[1], "clusters": len(ours[1]),
                       "removed_by_minhash": sum(len(c) - 1 for c in ours[1])})  # fmt: skip

    cases = {"lmforge": case("lmforge"), "datatrove": case("datatrove")}
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            results[name].extend(run_interleaved({name: fn}, 1)[name])
        check()
    for c in checks:
        print(f"decisions: filters keep {c['kept_after_filters']:,} docs, same set: {c['filters_kept_equal']}; "
              f"minhash {c['clusters']} clusters removing {c['removed_by_minhash']}, same clusters: "
              f"{c['minhash_clusters_equal']}")  # fmt: skip
    source = f"--corpus {args.corpus}" if args.corpus is not None else f"--docs {args.docs} --files {args.files}"
    command = f".venv/bin/python benchmarks/curate.py {source} --workers {args.workers} --repeats {args.repeats}"
    report("curate", results, unit="docs/s", ours="lmforge", peer="datatrove", command=command,
           extra={"documents": n_docs, "checks": checks})  # fmt: skip
    if not all(c["filters_kept_equal"] and c["minhash_clusters_equal"] for c in checks):
        sys.exit("decisions differ between lmforge and datatrove")


if __name__ == "__main__":
    main()
