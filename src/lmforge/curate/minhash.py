"""Near-duplicate removal with MinHash LSH and connected components.

1. Shingles: the text is simplified (lowercase, digits → 0, punctuation → space, whitespace
   collapsed, accents stripped), split into spaCy words, and every run of `ngram` words is
   hashed with 64-bit xxHash.
2. Signature: `bands × rows` hash functions h(x) = (a·x + b) mod (2⁶¹−1), each kept at its
   minimum over the shingles. Shingling, hashing and the seeded parameters are the ones datatrove
   uses, so both tools compute the same signatures (the benchmark checks the clusters agree).
   We compute them for a whole shard at once with numpy instead of one document at a time.
3. Candidates: two documents are candidates if all `rows` values of any band agree. With the
   defaults (14 × 8) documents of Jaccard similarity 0.8 become candidates with p ≈ 0.92, at 0.5
   with p ≈ 0.05. Optionally a candidate pair must also agree on at least `threshold` of all
   signature values (an estimate of their Jaccard similarity) — this removes the LSH's false
   positives at the cost of comparing pairs.
4. Clusters: connected components of the candidate graph; the first document of each cluster
   in corpus order (shard order, then position) is kept, so the result depends on neither the
   number of workers nor the order in which shards finished.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import regex
import xxhash

from lmforge.config import Config, require
from lmforge.curate.steps import CurateDocument, GlobalStep, Verdict, register_step
from lmforge.curate.text import PUNCTUATION

_MERSENNE_61 = np.uint64((1 << 61) - 1)
_DIGITS = regex.compile(r"\p{Nd}+([.,،٫⎖⎗⎘]{1}\p{Nd}+)?")
_PUNCT_TO_SPACE = str.maketrans(PUNCTUATION, " " * len(PUNCTUATION))
_WHITESPACE = re.compile(r"\s+")


def simplify(text: str) -> str:
    """The normalised text shingles are taken from (datatrove's default `simplify_text`)."""
    text = _DIGITS.sub("0", text.lower()).translate(_PUNCT_TO_SPACE)
    text = _WHITESPACE.sub(" ", text.strip())
    if not text.isascii():
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    return text.strip()


@dataclass(kw_only=True)
class MinHashConfig(Config):
    """MinHash LSH near-duplicate removal."""

    ngram: int = 5
    """Shingle size in words."""
    bands: int = 14
    rows: int = 8
    """Hash values per band; bands × rows values in all."""
    threshold: float | None = None
    """If set, candidate pairs must also agree on this share of signature values (estimated
    Jaccard similarity). None: every LSH candidate pair is a duplicate (datatrove's rule)."""
    seed: int = 1
    """Seeds the hash functions; every shard must use the same."""

    def validate(self) -> None:
        require(self.ngram >= 1, "ngram", f"must be >= 1, got {self.ngram}")
        require(self.bands >= 1, "bands", f"must be >= 1, got {self.bands}")
        require(self.rows >= 1, "rows", f"must be >= 1, got {self.rows}")
        if self.threshold is not None:
            require(0 < self.threshold <= 1, "threshold", f"must be in (0, 1], got {self.threshold}")


def hash_parameters(n_hashes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the universal hash functions, the same draws as datatrove's for a given seed."""
    gen = np.random.RandomState(seed)
    a = gen.randint(1, _MERSENNE_61, dtype=np.uint64, size=(1, n_hashes))
    b = gen.randint(0, _MERSENNE_61, dtype=np.uint64, size=(1, n_hashes))
    return a, b


def shingle_hashes(words: list[str], n: int) -> np.ndarray:
    """64-bit xxHash of each run of `n` words joined by spaces."""
    count = len(words) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    joined = " ".join(words)
    ends = [0] * (len(words) + 1)  # ends[i] = where word i starts; shingle i..i+n-1 ends before ends[i+n]-1
    pos = 0
    for i, w in enumerate(words):
        ends[i] = pos
        pos += len(w) + 1
    ends[len(words)] = pos
    h = xxhash.xxh64_intdigest
    return np.fromiter((h(joined[ends[i] : ends[i + n] - 1]) for i in range(count)), dtype=np.uint64, count=count)


def minhash_signatures(shingles: list[np.ndarray], a: np.ndarray, b: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Min-hash signatures (n_docs, n_hashes) of many documents' shingle arrays at once.
    Documents without shingles get all-ones rows and are never matched (see `resolve`)."""
    n_hashes = a.shape[1]
    out = np.full((len(shingles), n_hashes), np.iinfo(np.uint64).max, dtype=np.uint64)
    lengths = np.array([len(s) for s in shingles], dtype=np.int64)
    doc_of = np.repeat(np.arange(len(shingles)), lengths)
    flat = np.concatenate(shingles) if len(shingles) else np.empty(0, dtype=np.uint64)
    # Process in slices of shingles so memory stays at chunk × n_hashes × 8 bytes.
    for start in range(0, len(flat), chunk):
        part = flat[start : start + chunk, None]
        docs = doc_of[start : start + chunk]
        # uint64 arithmetic wraps before the modulo, exactly as in datatrove.
        values = (part * a + b) % _MERSENNE_61
        bounds = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])
        np.minimum.at(out, docs[bounds], np.minimum.reduceat(values, bounds, axis=0))
    return out


@register_step("minhash_dedup")
class MinHashDedup(GlobalStep[MinHashConfig]):
    Config = MinHashConfig

    def setup(self) -> None:
        c = self.config
        self._a, self._b = hash_parameters(c.bands * c.rows, c.seed)

    def signature(self, doc: CurateDocument, tokens: int) -> Any:
        words = doc.split_words(simplify(doc.text))
        return doc.id, shingle_hashes(words, self.config.ngram)

    def save_signatures(self, signatures: list[Any], path: Path) -> None:
        ids = [doc_id for doc_id, _ in signatures]
        shingles = [s for _, s in signatures]
        sig = minhash_signatures(shingles, self._a, self._b)
        empty = np.array([len(s) == 0 for s in shingles], dtype=bool)
        with open(path, "wb") as f:
            np.savez(f, sig=sig, empty=empty, ids=np.array(ids, dtype=object))

    def load_signatures(self, path: Path) -> Any:
        with np.load(path, allow_pickle=True) as z:
            return z["ids"].tolist(), z["sig"], z["empty"]

    def resolve(self, shards: Iterable[Any]) -> list[dict[int, Any]]:
        c = self.config
        shards = list(shards)  # signatures of all shards: ~8 bytes × bands × rows per document
        ids = [i for shard_ids, _, _ in shards for i in shard_ids]
        sig = np.concatenate([s for _, s, _ in shards]) if shards else np.empty((0, c.bands * c.rows), np.uint64)
        empty = np.concatenate([e for _, _, e in shards]) if shards else np.empty(0, bool)
        shard_of = np.repeat(np.arange(len(shards)), [len(s) for s, _, _ in shards])
        offsets = np.r_[0, np.cumsum([len(s) for s, _, _ in shards])]
        parent = np.arange(len(ids))
        valid = np.flatnonzero(~empty)

        def root(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for band in range(c.bands):
            keys = np.ascontiguousarray(sig[valid, band * c.rows : (band + 1) * c.rows])
            order = np.lexsort(keys.T[::-1])
            sorted_keys = keys[order]
            same = np.all(sorted_keys[1:] == sorted_keys[:-1], axis=1)
            if not same.any():
                continue
            docs = valid[order]  # corpus order within equal keys (lexsort is stable)
            for left, right in _pairs_in_runs(same, docs, c.threshold is not None):
                if c.threshold is not None and np.mean(sig[left] == sig[right]) < c.threshold:
                    continue
                ra, rb = root(left), root(right)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)  # the earliest document is the root

        actions: list[dict[int, Any]] = [{} for _ in shards]
        sizes: dict[int, int] = {}
        roots = np.array([root(i) for i in range(len(ids))], dtype=np.int64)
        for r in roots:
            sizes[int(r)] = sizes.get(int(r), 0) + 1
        for i in np.flatnonzero(roots != np.arange(len(ids))):
            r = int(roots[i])
            shard = int(shard_of[i])
            actions[shard][int(i - offsets[shard])] = {"duplicate_of": ids[r], "cluster_size": sizes[r]}
        return actions

    def apply(self, doc: CurateDocument, action: Any) -> Verdict:
        return Verdict.remove("minhash_duplicate", **action)


def _pairs_in_runs(same: np.ndarray, docs: np.ndarray, all_pairs: bool):
    """Pairs of documents to join from each run of equal band keys: each member with the run's
    first (enough for components), or, when pairs are verified, every pair in runs of up to 64
    (a member may be similar to another member but not to the first)."""
    starts = np.flatnonzero(np.r_[True, ~same])
    ends = np.r_[starts[1:], len(docs)]
    for s, e in zip(starts, ends):
        if e - s < 2:
            continue
        members = np.sort(docs[s:e])
        if all_pairs and e - s <= 64:
            for i in range(len(members)):
                for j in range(i + 1, len(members)):
                    yield int(members[i]), int(members[j])
        else:
            for m in members[1:]:
                yield int(members[0]), int(m)
