"""Token files: the tokenized corpus on disk, and reading it back.

A token folder holds, per input file, a flat memmap of ids (`part-NNNNN.npy`, raw like
dolma's and OLMo-core's: no header, dtype in meta.json) with EOS after every document, and
a document index (`part-NNNNN.csv.gz`: start, end, id, source; `end` is the position of the
EOS that closes the document). `meta.json` records the tokenizer, dtype, counts and a
fingerprint of the content; it is written last, so a folder without it is incomplete.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from lmforge.errors import LmforgeError

FORMAT = "lmforge.tokens.v1"
META_FILE = "meta.json"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (halves disk and page cache), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def read_span(arrays: Sequence[np.ndarray], offsets: np.ndarray, start: int, end: int) -> np.ndarray:
    """Elements [start, end) of the concatenation of `arrays` (whose start offsets, plus the
    total at the end, are `offsets`), as int64, without concatenating anything else."""
    pieces = []
    first = max(int(np.searchsorted(offsets, start, side="right")) - 1, 0)
    for i in range(first, len(arrays)):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        if lo >= end:
            break
        if hi > start:
            pieces.append(arrays[i][max(start, lo) - lo : min(end, hi) - lo])
    return np.concatenate(pieces).astype(np.int64) if pieces else np.zeros(0, dtype=np.int64)


def not_token_folder(folder: Path) -> str:
    """Why `folder` (no meta.json) cannot be read as token files, and the folder to name instead:
    the usual mistakes are naming the parent of a split (train/ + val/) or a curate run's output."""
    split = [side for side in ("train", "val") if (folder / side / META_FILE).exists()]
    if split:
        return (f"{folder} holds a train/validation split, not token files: use {folder / 'train'} as data.train "
                f"and set data.validation to {folder / 'val'}")  # fmt: skip
    curated = any((folder / f).exists() for f in ("tokens", "stats.json", "pipeline.json"))
    if (folder / "documents").is_dir() and curated:
        tokens = folder / "tokens"
        if (tokens / "train" / META_FILE).exists():
            return (f"{folder} is a curate output folder, not token files: use {tokens / 'train'} as data.train and "
                    f"set data.validation to {tokens / 'val'}")  # fmt: skip
        if (tokens / META_FILE).exists():
            return f"{folder} is a curate output folder, not token files: use {tokens} (its token files)"
        return (f"{folder} is a curate output folder without token files: add `tokenize: {{tokenizer: …}}` to its "
                f"pipeline (it writes {tokens}), or run `lmforge data tokenize {folder / 'documents'} --tokenizer T "
                "--out TOKENS`")  # fmt: skip
    if (folder / "mix.json").exists():
        if (folder / "val").is_dir():  # a mix with a held-out split: keep the two sides apart
            return (f"{folder} holds the JSONL shards of `lmforge data mix`, not token files: tokenize its sides apart "
                    f"(`lmforge data tokenize {folder / 'train'} --tokenizer T --out TOKENS/train`, the same for "
                    f"{folder / 'val'} into TOKENS/val)")  # fmt: skip
        return (f"{folder} holds the JSONL shards of `lmforge data mix`, not token files: tokenize them first "
                f"(`lmforge data tokenize {folder} --tokenizer T --out TOKENS`)")  # fmt: skip
    if not folder.exists():
        return f"{folder}: no such folder; name a token folder written by `lmforge data tokenize`"
    return f"{folder}: not a tokenized folder ({META_FILE} missing; run `lmforge data tokenize`)"


@dataclass(frozen=True)
class DocumentSpan:
    id: str
    source: str
    start: int
    """Global token position of the document's first token."""
    end: int
    """Global position of the EOS closing it."""


class TokenFiles:
    """A token folder opened for reading: one global token stream over all parts."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta_path = self.folder / META_FILE
        if not meta_path.exists():
            raise LmforgeError(not_token_folder(self.folder))
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise LmforgeError(f"{meta_path}: unknown format {self.meta.get('format')!r}, expected {FORMAT!r}")
        self.dtype = np.dtype(self.meta["dtype"])
        self.parts = [
            np.memmap(self.folder / part["tokens"], dtype=self.dtype, mode="r", shape=(part["num_tokens"],))
            if part["num_tokens"]
            else np.zeros(0, dtype=self.dtype)
            for part in self.meta["parts"]
        ]
        sizes = np.array([len(p) for p in self.parts], dtype=np.int64)
        self.part_starts = np.concatenate([[0], np.cumsum(sizes)])
        self.num_tokens = int(self.part_starts[-1])

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def tokenizer_fingerprint(self) -> str:
        return self.meta["tokenizer"]["fingerprint"]

    @property
    def vocab_size(self) -> int:
        return self.meta["tokenizer"]["vocab_size"]

    def read(self, start: int, end: int) -> np.ndarray:
        """Tokens [start, end) of the folder's stream as int64, across part boundaries."""
        return read_span(self.parts, self.part_starts, start, end)

    # -- document index (loaded on first use: training does not need it) -------------------------
    @cached_property
    def _documents(self) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
        starts, ends, ids, sources = [], [], [], []
        for part, offset in zip(self.meta["parts"], self.part_starts):
            with gzip.open(self.folder / part["documents"], "rt", newline="") as f:
                for row in csv.DictReader(f):
                    starts.append(int(row["start"]) + offset)
                    ends.append(int(row["end"]) + offset)
                    ids.append(row["id"])
                    sources.append(row["source"])
        return np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64), ids, sources

    def documents_in(self, start: int, end: int) -> list[DocumentSpan]:
        """Every document with a token (or its EOS) in [start, end), in stream order."""
        starts, ends, ids, sources = self._documents
        first = int(np.searchsorted(ends, start, side="left"))
        last = int(np.searchsorted(starts, end, side="left"))
        return [DocumentSpan(ids[i], sources[i], int(starts[i]), int(ends[i])) for i in range(first, last)]
