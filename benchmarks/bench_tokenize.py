"""Tokenization throughput: `lmforge data tokenize` end to end (read, encode, write memmap +
index) against a plain HF `tokenizers` encode_batch loop over the same documents (read and
encode only, nothing written), with the OLMo 2 tokenizer, on this machine's cores.

    .venv/bin/python benchmarks/bench_tokenize.py [--repeats 3] [--corpus data/demo/train.jsonl.gz]

Prints the median MB/s of text per case and the ratio; writes benchmarks/results/tokenize.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO, report, run_interleaved


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
        return time.perf_counter() - start, meta["num_tokens"] - meta["num_documents"]  # less the EOS ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=REPO / "data" / "demo" / "train.jsonl.gz")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="lmforge processes (default: its own choice)")
    args = parser.parse_args()

    from lmforge.data.documents import read_documents
    from lmforge.data.tokenizer import fetch_pretrained

    tokenizer_path = fetch_pretrained("olmo2")
    mb = sum(len(d.text.encode()) for d in read_documents(args.corpus)) / 1e6
    token_counts: dict[str, int] = {}

    def rate(name: str, fn) -> float:
        seconds, token_counts[name] = fn()
        return mb / seconds

    results = run_interleaved({
        "lmforge data tokenize": lambda: rate("ours", lambda: ours(args.corpus, tokenizer_path, args.workers)),
        "HF tokenizers encode_batch": lambda: rate("peer", lambda: peer_hf_encode_batch(args.corpus, tokenizer_path)),
    }, args.repeats)
    if token_counts["ours"] != token_counts["peer"]:
        print(f"token counts differ: {token_counts}", file=sys.stderr)
        return 1
    print(f"corpus {args.corpus.name}: {mb:.2f} MB of text, {token_counts['ours']:,} tokens, {os.cpu_count()} cores")
    report("tokenize", results, unit="MB/s", ours="lmforge data tokenize", peer="HF tokenizers encode_batch",
           command=f".venv/bin/python benchmarks/bench_tokenize.py --repeats {args.repeats}",
           extra={"mb_text": mb, "cores": os.cpu_count(), "workers": args.workers or "default"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
