"""Tokenization throughput: `lmforge data tokenize` end to end (read, encode, write memmap +
index) against a plain HF `tokenizers` encode_batch loop over the same documents (read and
encode only, nothing written), with the OLMo 2 tokenizer, on this machine's cores.

    .venv/bin/python benchmarks/bench_tokenize.py [--repeats 3] [--corpus data/demo/train.jsonl.gz]

Prints one line per case (median MB/s of text over the repeats) and the ratio, and writes
benchmarks/results/tokenize.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peer_hf_encode_batch(corpus: Path, tokenizer_path: Path) -> tuple[float, int]:
    """The baseline a user writes by hand: read JSONL, encode_batch (Rust, all cores) in batches."""
    import tokenizers

    from lmforge.data.documents import read_documents

    tok = tokenizers.Tokenizer.from_file(str(tokenizer_path))
    start = time.perf_counter()
    n_tokens, batch = 0, []
    for doc in read_documents(corpus):
        batch.append(doc.text)
        if len(batch) == 256:
            n_tokens += sum(len(e.ids) for e in tok.encode_batch(batch, add_special_tokens=False))
            batch = []
    if batch:
        n_tokens += sum(len(e.ids) for e in tok.encode_batch(batch, add_special_tokens=False))
    return time.perf_counter() - start, n_tokens


def ours(corpus: Path, tokenizer_path: Path, workers: int) -> tuple[float, int]:
    from lmforge.data.tokenize import tokenize

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        meta = tokenize([corpus], tokenizer_path, Path(tmp) / "out", workers=workers, progress=False)
        return time.perf_counter() - start, meta["num_tokens"] - meta["num_documents"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=REPO / "data" / "demo" / "train.jsonl.gz")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    from lmforge.data.documents import read_documents
    from lmforge.data.tokenizer import fetch_pretrained

    tokenizer_path = fetch_pretrained("olmo2")
    mb = sum(len(d.text.encode()) for d in read_documents(args.corpus)) / 1e6
    cases = {"lmforge data tokenize": lambda: ours(args.corpus, tokenizer_path, args.workers),
             "HF tokenizers encode_batch": lambda: peer_hf_encode_batch(args.corpus, tokenizer_path)}
    times: dict[str, list[float]] = {name: [] for name in cases}
    tokens: dict[str, int] = {}
    for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
        for name, fn in cases.items():
            seconds, n = fn()
            times[name].append(seconds)
            tokens[name] = n
    if len(set(tokens.values())) != 1:
        print(f"token counts differ: {tokens}", file=sys.stderr)
        return 1
    rates = {name: mb / statistics.median(t) for name, t in times.items()}
    ours_rate, peer_rate = rates["lmforge data tokenize"], rates["HF tokenizers encode_batch"]
    print(f"corpus {args.corpus.name}: {mb:.2f} MB of text, {tokens['lmforge data tokenize']:,} tokens, "
          f"{os.cpu_count()} cores, median of {args.repeats}")
    for name, rate in rates.items():
        print(f"{name:<28} {rate:7.2f} MB/s")
    print(f"ratio lmforge / HF          {ours_rate / peer_rate:7.2f}x")
    print(f"command: .venv/bin/python benchmarks/bench_tokenize.py --repeats {args.repeats}")
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenize.json").write_text(json.dumps(
        {"mb_text": mb, "seconds": times, "mb_per_s": rates, "ratio": ours_rate / peer_rate,
         "cores": os.cpu_count(), "workers": args.workers}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
