"""Paragraph-level exact deduplication with a Bloom filter (dolma's approach).

A paragraph is a line. Walking the corpus in order (shard order, then position, then line),
a paragraph whose hash is already in the filter is dropped from its document; otherwise it is
added. The filter needs no more memory than its bit array, whatever the corpus size, at the
cost of a small false-positive rate: a unique paragraph is wrongly dropped with probability
about `false_positive_rate` once `expected_paragraphs` distinct paragraphs are in it. The rate
actually reached is reported, with a warning if the filter was sized too small.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import xxhash

from lmforge.config import Config, require
from lmforge.curate.steps import CurateDocument, GlobalStep, Verdict, register_step


@dataclass(kw_only=True)
class ParagraphDedupConfig(Config):
    """Drop lines seen earlier in the corpus; remove documents left without any."""

    expected_paragraphs: int = 10_000_000
    """Distinct paragraphs the filter is sized for."""
    false_positive_rate: float = 0.001
    """Target chance of dropping a unique paragraph once the filter holds expected_paragraphs."""
    size_mb: float | None = None
    """Size the bit array directly (overrides the size computed from the two fields above)."""
    min_chars: int = 1
    """Lines shorter than this (after stripping) are never dropped and not added."""
    lowercase: bool = False

    def validate(self) -> None:
        require(self.expected_paragraphs >= 1, "expected_paragraphs", "must be >= 1")
        require(0 < self.false_positive_rate < 1, "false_positive_rate", "must be in (0, 1)")
        if self.size_mb is not None:
            require(self.size_mb > 0, "size_mb", f"must be > 0, got {self.size_mb}")

    def bloom_shape(self) -> tuple[int, int]:
        """(bits, hash functions) of the filter."""
        n, p = self.expected_paragraphs, self.false_positive_rate
        if self.size_mb is not None:
            bits = max(8, int(self.size_mb * 8_000_000))
        else:
            bits = max(8, math.ceil(-n * math.log(p) / math.log(2) ** 2))
        return bits, max(1, round(bits / n * math.log(2)))


class BloomFilter:
    """A bit array probed at k positions derived from one 128-bit hash (double hashing)."""

    def __init__(self, bits: int, k: int):
        self.bits, self.k = bits, k
        self.array = bytearray((bits + 7) // 8)
        self.added = 0

    def check_and_add(self, h: int) -> bool:
        """True if `h` was (probably) added before; adds it either way."""
        h1, h2 = h & 0xFFFF_FFFF_FFFF_FFFF, (h >> 64) | 1
        array, bits = self.array, self.bits
        present = True
        for i in range(self.k):
            pos = (h1 + i * h2) % bits
            byte, mask = pos >> 3, 1 << (pos & 7)
            if not array[byte] & mask:
                present = False
                array[byte] |= mask
        if not present:
            self.added += 1
        return present

    def false_positive_rate(self) -> float:
        return (1 - math.exp(-self.k * self.added / self.bits)) ** self.k


@register_step("paragraph_dedup")
class ParagraphDedup(GlobalStep[ParagraphDedupConfig]):
    Config = ParagraphDedupConfig

    def signature(self, doc: CurateDocument, tokens: int) -> Any:
        c = self.config
        hashes = []
        for line in doc.text.split("\n"):
            key = line.strip()
            if len(key) < c.min_chars or not key:
                hashes.append(None)
            else:
                hashes.append(xxhash.xxh3_128_intdigest(key.lower() if c.lowercase else key))
        return hashes

    def resolve(self, shards: Iterable[list[Any]]) -> list[dict[int, Any]]:
        c = self.config
        bloom = BloomFilter(*c.bloom_shape())
        actions: list[dict[int, Any]] = []
        for shard in shards:
            acts: dict[int, Any] = {}
            for pos, hashes in enumerate(shard):
                drop = [i for i, h in enumerate(hashes) if h is not None and bloom.check_and_add(h)]
                if drop:
                    acts[pos] = {"drop_lines": drop}
            actions.append(acts)
        rate = bloom.false_positive_rate()
        self.summary = {"bloom_bits": bloom.bits, "bloom_hashes": bloom.k, "paragraphs_added": bloom.added,
                        "estimated_false_positive_rate": rate}  # fmt: skip
        if rate > 10 * c.false_positive_rate:
            warnings.warn(
                f"paragraph_dedup: the Bloom filter holds {bloom.added:,} paragraphs, more than the "
                f"{c.expected_paragraphs:,} it was sized for; its false-positive rate is now {rate:.2g}. "
                "Raise expected_paragraphs or size_mb.",
                stacklevel=2,
            )
        return actions

    def apply(self, doc: CurateDocument, action: Any) -> Verdict:
        lines = doc.text.split("\n")
        drop = set(action["drop_lines"])
        kept = [line for i, line in enumerate(lines) if i not in drop]
        doc.text = "\n".join(kept)
        if not doc.text.strip():
            return Verdict.remove("all_paragraphs_duplicate", lines_dropped=len(drop))
        return Verdict.keep(lines_dropped=len(drop))
