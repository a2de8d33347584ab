"""Token folders split into OUT/train and OUT/val (`lmforge.data.split` decides which document
goes where; this module moves the documents).

Both writers of token folders tokenize every document exactly once, as if there were no split
(`data tokenize` into a scratch folder, a curate pipeline's tasks into their shard parts), and
then `route` reads back each part's document index, takes each document's split key from its id
and copies its ids (EOS included) into the train or the val folder. No text is read twice: the
second pass reads the ids, about half the bytes of the text, sequentially. A count
(`validation_docs`) first reads every document index once for the keys, since the N smallest
need a global view; a fraction decides document by document.

Each side is an ordinary token folder: parts numbered in the order of the parts they come from,
one per source part with documents on that side (as `data tokenize` numbers its input files),
each side's meta.json written by `token_parts.write_meta` with a `split` entry. So OUT/train holds
the bytes `data tokenize` would write for the train documents alone, and the two writers, given
the same parts in the same order, write the same bytes.
"""

from __future__ import annotations

import csv
import gzip
import logging
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.data.split import SIDES, TRAIN, VAL, ValidationSplit, split_key
from lmforge.data.token_parts import PartWriter, id_hash, warn_duplicates, write_meta
from lmforge.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

FLUSH_TOKENS = 1 << 20
"""Ids buffered per side before they are handed to its part writer: bounds memory for huge parts."""


@dataclass(frozen=True)
class SourcePart:
    """A part of a corpus tokenized without a split: its files and what meta.json says of it."""

    tokens: Path
    documents: Path
    num_tokens: int
    source_file: str


@dataclass
class Side:
    """One side of the split as it is written: its folder, finished parts and their id hashes."""

    folder: Path
    parts: list[dict[str, Any]] = field(default_factory=list)
    id_hashes: list[np.ndarray] = field(default_factory=list)

    @property
    def num_documents(self) -> int:
        return sum(p["num_documents"] for p in self.parts)

    @property
    def num_tokens(self) -> int:
        return sum(p["num_tokens"] for p in self.parts)


class _SidePart:
    """One side's part for the source part being routed. Its writer is made at the side's first
    document from that source, so a side has a part only where it has documents."""

    def __init__(self, side: Side, dtype: np.dtype, source_file: str):
        self.side, self.dtype, self.source_file = side, dtype, source_file
        self.writer: PartWriter | None = None
        self.slices: list[np.ndarray] = []
        self.lengths: list[int] = []
        self.ids: list[str] = []
        self.sources: list[str] = []
        self.hashes = array("Q")  # every document's id hash (8 bytes each), for meta.json's duplicate count
        self.pending = 0

    def add(self, ids_with_eos: np.ndarray, doc_id: str, source: str) -> None:
        self.slices.append(ids_with_eos)
        self.lengths.append(len(ids_with_eos) - 1)
        self.ids.append(doc_id)
        self.sources.append(source)
        self.hashes.append(id_hash(doc_id))
        self.pending += len(ids_with_eos)
        if self.pending >= FLUSH_TOKENS:
            self._flush()

    def _flush(self) -> None:
        if not self.ids:
            return
        if self.writer is None:
            name = f"part-{len(self.side.parts):05d}"
            self.writer = PartWriter(self.side.folder, name, self.dtype, self.source_file)
        lengths = np.array(self.lengths, dtype=np.int64)
        self.writer.add(np.concatenate(self.slices), lengths, self.ids, self.sources)
        self.slices, self.lengths, self.ids, self.sources, self.pending = [], [], [], [], 0

    def close(self) -> None:
        self._flush()
        if self.writer is not None:
            self.side.parts.append(self.writer.close())
            self.side.id_hashes.append(np.array(self.hashes, dtype=np.uint64))


def index_rows(documents: Path) -> Iterator[tuple[int, int, str, str]]:
    """(start, end, id, source) of each document of a part's index, in order."""
    with gzip.open(documents, "rt", encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        next(rows)  # header
        for start, end, doc_id, source in rows:
            yield int(start), int(end), doc_id, source


def route(sources: list[SourcePart], split: ValidationSplit, out: Path, dtype: np.dtype) -> dict[str, Side]:
    """Copy every document of `sources` (in order) into `out/train` or `out/val`."""
    sides = {name: Side(out / name) for name in SIDES}
    for side in sides.values():
        side.folder.mkdir(parents=True, exist_ok=True)
    held = _held_by_count(sources, split) if split.needs_every_key else None
    k = 0  # global document number, for a count's mask
    for src in sources:
        tokens = np.memmap(src.tokens, dtype=dtype, mode="r", shape=(src.num_tokens,))  # a part has >= 1 document
        pending = {name: _SidePart(side, dtype, src.source_file) for name, side in sides.items()}
        for start, end, doc_id, source in index_rows(src.documents):
            is_val = bool(held[k]) if held is not None else split.holds(split_key(doc_id, split.seed))
            pending[VAL if is_val else TRAIN].add(tokens[start : end + 1], doc_id, source)
            k += 1
        for part in pending.values():
            part.close()
        del tokens  # release the memmap before the scratch part may be deleted
    return sides


def _held_by_count(sources: list[SourcePart], split: ValidationSplit) -> np.ndarray:
    """The count's mask over every document of `sources`, in order (a first pass over the ids)."""
    keys = (split_key(doc_id, split.seed) for src in sources for _, _, doc_id, _ in index_rows(src.documents))
    return split.mask(np.fromiter(keys, dtype=np.uint64))  # 8 bytes a document, never the ids


def write_split_meta(
    sides: dict[str, Side], split: ValidationSplit, tok: Tokenizer, facts: dict[str, Any]
) -> dict[str, tuple[dict, list[str]]]:
    """Each side's meta.json (`write_meta` with `facts`: the run's seconds, input_bytes,
    text_bytes, rejected_lines, skipped_files — the same on both sides, as they describe the one
    run — and the `split` record); returns {side: (meta, a few repeated ids)}."""
    documents = {name: s.num_documents for name, s in sides.items()}
    tokens = {name: s.num_tokens for name, s in sides.items()}
    written = {}
    for name, side in sides.items():
        hashes = np.concatenate(side.id_hashes) if side.id_hashes else np.zeros(0, dtype=np.uint64)
        written[name] = write_meta(
            side.folder, tok, side.parts, hashes, **facts, split=split.record(name, documents, tokens)
        )
    return written


def warn_split(out: Path, written: dict[str, tuple[dict, list[str]]]) -> None:
    """Repeated ids per side, and one line for a side left with no documents."""
    for name, (meta, examples) in written.items():
        warn_duplicates(out / name, meta, examples)
    docs = {name: meta["num_documents"] for name, (meta, _) in written.items()}
    for name, n in docs.items():
        if n == 0:
            other = VAL if name == TRAIN else TRAIN
            log.warning(
                f"{out / name} has no documents (all {docs[other]:,} went to {other}); "
                + ("raise the fraction or use a count (validation_docs)" if name == VAL else "hold out fewer")
            )
