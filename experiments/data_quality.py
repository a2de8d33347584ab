"""The data-quality loop on offline data: train a quality classifier, score a pool, keep its top
10 %, and decide by ablation whether that beats a random 10 % and the heuristics alone.

    pool        the generated web corpus (tests/web_corpus.py: web pages of every kind, the KJV,
                Shakespeare and Milton, pages in other languages, PII, near and exact copies)
                without its Python-documentation pieces, plus the docstrings of half of a list
                of stdlib modules (expository English the classifier never trains on)
    heuristics  pool → Gopher repetition, Gopher quality, C4, FineWeb, MinHash; 5 % of the
                documents (by a seeded hash of the id) held out as the validation split
    classifier  `lmforge data train-classifier --preset small`: positives are the Python
                reference documentation (pydoc_data topics, 80-160-word pieces); negatives are
                other generated web pages and the documents the heuristic filters removed (but the
                pool's docstrings, which are the positives' kind). The
                KJV/Shakespeare demo corpus is not among the positives (the classifier would
                learn that archaic style is quality)
    top10       heuristics' documents → classifier (annotate) → select: top 10 % of the tokens
    random10    `lmforge data mix` of heuristics' documents at top10's token count (a seeded
                random 10 %), the same validation ids held out
    ablation    configs/experiments/data-quality/ablation.yaml: the tiny preset, 150 steps of
                4,096 tokens on each data set, seeds 0, 1, 2; judged on held-out docstrings of
                the other stdlib modules (positive-kind text no step saw) and on the validation
                split

    .venv/bin/python experiments/data_quality.py            # everything (about 20 min on 2 cores)
    .venv/bin/python experiments/data_quality.py --report   # the ablation's tables from finished runs
    .venv/bin/python experiments/data_quality.py --quick    # a small pool and 20-step runs (smoke test)

Every stage is skipped when its output is complete, and the ablation resumes its runs, so an
interrupted experiment continues where it stopped. Outputs go to runs/experiments/data-quality/;
the README beside the configs holds the result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "experiments" / "data-quality"
OUT = REPO / "runs" / "experiments" / "data-quality"
sys.path.insert(0, str(REPO / "tests"))  # the generated corpora are test data, not part of the package

HEURISTICS = [
    {"gopher_repetition": {}},
    {"gopher_quality": {}},
    {"c4_quality": {"filter_no_terminal_punct": False}},
    {"fineweb_quality": {}},
    {"minhash_dedup": {}},
]
VALIDATION = 0.05
TOP_FRACTION = 0.1
DOCSTRING_MODULES = (
    "argparse", "asyncio", "collections", "concurrent.futures", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "doctest", "email", "enum", "fractions", "functools", "gzip", "hashlib",
    "heapq", "inspect", "io", "ipaddress", "itertools", "json", "logging", "os", "pathlib", "pickle", "random",
    "re", "sched", "shelve", "shutil", "socket", "sqlite3", "statistics", "string", "struct", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "traceback", "typing", "unittest", "urllib.parse",
    "uuid", "warnings", "weakref", "zipfile",
)  # fmt: skip


def step(name: str, done: bool) -> bool:
    print(f"== {name}: {'done already' if done else 'running'}", flush=True)
    return not done


def build_corpora(out: Path, pool_docs: int) -> None:
    """pool/, heldout-docs/, positives/ and negatives/ as dolma JSONL."""
    from quality_corpus import expository_documents, stdlib_docstrings, web_negatives, write_jsonl
    from web_corpus import build_web_corpus

    docstrings = stdlib_docstrings(DOCSTRING_MODULES)
    pool_modules = set(DOCSTRING_MODULES[0::2])
    in_pool = [d for d in docstrings if d["id"].split("/")[1].split(".")[0] in {m.split(".")[0] for m in pool_modules}]
    held = [d for d in docstrings if d not in in_pool]
    web = [{"id": d["id"], "text": d["text"], "source": d["source"]}
           for d in build_web_corpus(n_docs=pool_docs, seed=0).documents if d["source"] != "pydoc"]  # fmt: skip
    pool = web + in_pool
    pool.sort(key=lambda d: d["id"])  # a fixed order; shards are cut from it
    n_files = 8
    for k in range(n_files):
        write_jsonl(out / "pool" / f"pool-{k}.jsonl", pool[k::n_files])
    write_jsonl(out / "heldout-docs" / "docstrings.jsonl", held)
    write_jsonl(out / "positives" / "pydoc.jsonl", expository_documents(80, 160))
    write_jsonl(out / "negatives" / "web.jsonl", web_negatives(n_docs=pool_docs // 4, seed=1))
    counts = {"pool": len(pool), "pool_docstrings": len(in_pool), "heldout_docstrings": len(held)}
    (out / "corpora.json").write_text(json.dumps(counts, indent=1))
    print(f"   pool {len(pool):,} documents ({len(in_pool)} docstrings), held-out docstrings {len(held)}")


def write_removed(folder: Path, path: Path) -> None:
    """The documents the heuristic filters removed, as negatives: all but the pool's docstrings,
    which are the positives' kind (labelled negative they would only be label noise)."""
    from lmforge.data.documents import expand_paths, read_documents
    from quality_corpus import write_jsonl

    docs = [{"id": d.id, "text": d.text, "source": d.source} for f in expand_paths([str(folder)])
            for d in read_documents(f) if d.source != "docstring"]  # fmt: skip
    write_jsonl(path, docs)
    print(f"   {len(docs):,} removed documents")


def tokens_kept(curate_out: Path, label: str) -> int:
    stats = json.loads((curate_out / "stats.json").read_text())
    return int(next(s for s in stats["steps"] if s["label"] == label)["resolve"]["tokens_kept"])


def prepare(out: Path, pool_docs: int) -> None:
    from lmforge.curate.classifier_train import train_classifier
    from lmforge.curate.mix import MixConfig, mix
    from lmforge.curate.pipeline import CurateConfig, curate
    from lmforge.data.tokenize import tokenize
    from lmforge.data.tokenizer import train_bpe

    out.mkdir(parents=True, exist_ok=True)
    if step("corpora", (out / "corpora.json").exists()):
        build_corpora(out, pool_docs)
    tokenizer = out / "tokenizer.json"
    if step("tokenizer (BPE, 4,096 ids, on the pool)", tokenizer.exists()):
        train_bpe([str(out / "pool")], 4096).save(tokenizer)
    tokenize_block = {"tokenizer": str(tokenizer), "validation": VALIDATION}
    heuristics = out / "heuristics"
    if step("heuristics", (heuristics / "stats.json").exists()):
        curate(CurateConfig.from_dict({"input": [str(out / "pool")], "output": str(heuristics), "steps": HEURISTICS,
                                       "tokenizer": str(tokenizer), "tokenize": tokenize_block}))  # fmt: skip
    removed = out / "negatives" / "removed-by-heuristics.jsonl"
    if step("negatives: what the heuristics removed", removed.exists()):
        write_removed(heuristics / "removed", removed)
    classifier = out / "classifier"
    if step("classifier", (classifier / "report.json").exists()):
        report = train_classifier([out / "positives"], [out / "negatives"], classifier, preset="small")
        print(f"   held-out ROC-AUC {report['roc_auc']:.4f}, precision {report['precision']:.3f}, "
              f"recall {report['recall']:.3f}")  # fmt: skip
    top10 = out / "top10"
    if step("top10 (classifier + select)", (top10 / "stats.json").exists()):
        steps = [{"classifier": {"model_file": str(classifier / "model.bin"), "label": "hq"}},
                 {"select": {"attribute": "hq_score", "top_fraction": TOP_FRACTION, "by": "tokens"}}]  # fmt: skip
        curate(CurateConfig.from_dict({"input": [str(heuristics / "documents")], "output": str(top10), "steps": steps,
                                       "tokenizer": str(tokenizer), "tokenize": tokenize_block}))  # fmt: skip
    random10 = out / "random10"
    if step("random10 (data mix at top10's tokens)", (random10 / "mix.json").exists()):
        mix(MixConfig.from_dict({"output": str(random10), "tokenizer": str(tokenizer), "seed": 0,
                                 "total_tokens": tokens_kept(top10, "select"), "validation": VALIDATION,
                                 "sources": [{"name": "heuristics", "paths": [str(heuristics / "documents")],
                                              "proportion": 1.0}]}))  # fmt: skip
    if step("random10 tokens", (out / "random10-tokens" / "meta.json").exists()):
        tokenize([str(random10 / "train")], str(tokenizer), str(out / "random10-tokens"))
    if step("held-out docstrings tokens", (out / "heldout" / "python_docs" / "meta.json").exists()):
        tokenize([str(out / "heldout-docs")], str(tokenizer), str(out / "heldout" / "python_docs"))


def ablation_config(out: Path, quick: bool) -> Path:
    """The ablation YAML to run: the shipped one, or for --quick a copy pointing at OUT/quick."""
    if not quick:
        return CONFIGS / "ablation.yaml"
    import yaml

    text = (CONFIGS / "ablation.yaml").read_text().replace("runs/experiments/data-quality", str(out.relative_to(REPO)))
    cfg = yaml.safe_load(text)
    rel = out.relative_to(REPO)
    cfg.update(tokens=81920, overrides=[
                                        f"tokenizer={rel}/tokenizer.json"])  # fmt: skip
    path = out / "ablation.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report", action="store_true", help="only the ablation's report from finished runs")
    ap.add_argument("--quick", action="store_true", help="a 4,000-document pool and 20-step runs, in OUT/quick")
    args = ap.parse_args()
    from lmforge.experiments.ablate import load_ablation, run_ablation

    out = OUT / "quick" if args.quick else OUT
    if not args.report:
        prepare(out, 4_000 if args.quick else 48_000)
    cfg = load_ablation(ablation_config(out, args.quick))
    run_ablation(cfg, report_only=args.report)
    print(f"wrote {Path(cfg.out) / 'ablation.md'} and ablation.png")


if __name__ == "__main__":
    main()
