"""The selection math of `lmforge data mix`, over counts and numpy arrays only (no file is
opened here, so it can be tested alone): the seeded per-document hash, each source's token
target, which documents (and how many whole copies) meet it, and the shuffled output order.
The rules are spelled out in `lmforge.curate.mix`'s docstring."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lmforge.curate.mix_config import MixConfig
from lmforge.data.split import ValidationSplit
from lmforge.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path  # only carried along for the gathering pass, never opened here


# -- the seeded order --------------------------------------------------------------------------


def doc_hash(key: bytes, source: str, doc_id: str, position: int) -> int:
    """A document's 64-bit selection key: keyed BLAKE2b of (source, id, position), so duplicate
    ids still get distinct keys and renaming a source reshuffles it."""
    h = hashlib.blake2b(digest_size=8, key=key)
    h.update(f"{source}\x00{doc_id}\x00{position}".encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "little")


def seed_key(seed: int) -> bytes:
    """The BLAKE2b key for `seed` (negative seeds included)."""
    return seed.to_bytes(16, "little", signed=True)


# -- per-source counts ---------------------------------------------------------------------------


@dataclass
class SourceIndex:
    """What counting learned about one source: per-document arrays, no texts."""

    name: str
    files: list[Path]
    file_docs: list[int]  # documents per file
    tokens: np.ndarray  # int64, per document
    est_bytes: np.ndarray  # int64, per document: length of its input line (an output-size estimate)
    hashes: np.ndarray  # uint64, per document: the selection key
    offset: int = 0  # global index of its first document
    file_skips: list[frozenset[int]] = field(default_factory=list)  # per file: rejected line numbers
    split_keys: np.ndarray | None = None  # uint64, per document: `split.split_key` of its id (with a split)
    selection: dict[str, Any] | None = None  # with `select:` conditions: what they kept (for mix.json)

    @property
    def n_docs(self) -> int:
        return len(self.tokens)


# -- selection ----------------------------------------------------------------------------------


@dataclass
class Selection:
    """What is taken from one source: `full_copies` whole copies, then `prefix` as copy number
    `full_copies`."""

    target: int
    full_copies: int
    prefix: np.ndarray  # local document indices of the partial copy, in hashed order
    selected_tokens: int
    selected_docs: int


def token_targets(config: MixConfig, indexes: list[SourceIndex]) -> tuple[int, list[int]]:
    """(total tokens, each source's target tokens); ConfigError for a source with no documents
    or no tokens, or one whose target needs more than `max_repeats` copies of it."""
    for i, (source, index) in enumerate(zip(config.sources, indexes)):
        where = f"sources[{i}] ({source.name})"
        if index.n_docs == 0:
            raise ConfigError(f"{where}: no documents found in {', '.join(source.paths)}; fix its paths or drop it")
        if int(index.tokens.sum()) == 0:
            raise ConfigError(f"{where}: its {index.n_docs} documents have no tokens; drop the source")
    available = [int(ix.tokens.sum()) for ix in indexes]
    if config.total_tokens is None:
        total = math.floor(min(a / s.proportion for a, s in zip(available, config.sources)))
        targets = [min(round(s.proportion * total), a) for s, a in zip(config.sources, available)]
    else:
        total = config.total_tokens
        targets = [round(s.proportion * total) for s in config.sources]
    for i, (source, a, t) in enumerate(zip(config.sources, available, targets)):
        if t > config.max_repeats * a:
            raise ConfigError(
                f"sources[{i}] ({source.name}): its target of {t:,} tokens is {t / a:.2f}x its {a:,} available "
                f"tokens, more than max_repeats={config.max_repeats:g}; lower total_tokens or its proportion, "
                "add data to it, or raise max_repeats"
            )
    return total, targets


def select_documents(index: SourceIndex, target: int) -> Selection:
    """Whole copies of the source, then a prefix of its hashed order that misses the remainder
    by at most half of one document's tokens."""
    available = int(index.tokens.sum())
    k, remaining = divmod(target, available)
    order = np.argsort(index.hashes, kind="stable")
    m = 0
    if remaining > 0:
        cum = np.cumsum(index.tokens[order])
        m = int(np.searchsorted(cum, remaining, side="right"))  # documents that keep the sum <= r
        if m < len(cum):
            before = int(cum[m - 1]) if m > 0 else 0
            if int(cum[m]) - remaining <= remaining - before:  # overshoot no worse than undershoot
                m += 1
    prefix = order[:m]
    selected = k * available + int(index.tokens[prefix].sum())
    return Selection(target, k, prefix, selected, k * index.n_docs + m)


# -- output order -------------------------------------------------------------------------------


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised: a bijective 64-bit mix."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def output_order(indexes: list[SourceIndex], selections: list[Selection]) -> tuple[np.ndarray, np.ndarray]:
    """(global document index, copy number) of every output row, in output order."""
    docs, reps = [], []
    for index, sel in zip(indexes, selections):
        every = np.arange(index.offset, index.offset + index.n_docs, dtype=np.int64)
        for j in range(sel.full_copies):
            docs.append(every)
            reps.append(np.full(index.n_docs, j, dtype=np.int64))
        docs.append(sel.prefix.astype(np.int64) + index.offset)
        reps.append(np.full(len(sel.prefix), sel.full_copies, dtype=np.int64))
    doc = np.concatenate(docs) if docs else np.zeros(0, np.int64)
    rep = np.concatenate(reps) if reps else np.zeros(0, np.int64)
    hashes = np.concatenate([ix.hashes for ix in indexes])
    key = mix64(hashes[doc] ^ mix64(rep.astype(np.uint64)))
    order = np.lexsort((rep, doc, key))  # by key; ties (never in practice) by document, copy
    return doc[order], rep[order]


# -- held-out split -------------------------------------------------------------------------------


def held_out_rows(indexes: list[SourceIndex], out_doc: np.ndarray, split: ValidationSplit) -> np.ndarray:
    """True for each output row whose document is held out. The split is over the documents the
    mix selected (each once, whatever its copies), by their ids' split keys; equal keys of a count
    are ordered by global document index. Every copy of a document shares its side."""
    keys = np.concatenate([ix.split_keys for ix in indexes if ix.split_keys is not None])
    assert len(keys) == sum(ix.n_docs for ix in indexes), "count_sources did not take split keys"
    selected = np.unique(out_doc)  # global document indices, ascending
    held = np.zeros(len(keys), dtype=bool)
    held[selected[split.mask(keys[selected])]] = True
    return held[out_doc]
