"""Writing token folders (the format `token_files` reads): one part at a time (`PartWriter`:
ids + document index), then the folder's meta.json (`write_meta`), with the documents that reuse
an id counted. `data tokenize`, its held-out split (`split_tokens`) and a curate pipeline's
`tokenize:` all write through these, so every token folder is one format."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np

from lmforge import __version__
from lmforge.data.token_files import FORMAT, META_FILE, token_dtype
from lmforge.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def id_hash(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class PartWriter:
    """Writes one part of a token folder: `NAME.npy` (the ids, `dtype`) and `NAME.csv.gz` (the
    document index), each under `NAME.<ext><suffix>` while open. The gzip header holds no file
    name and no time, so a part's bytes depend only on its documents (whatever it is named,
    whenever it is written). `close()` returns the part's meta.json entry."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype, source_file: str, suffix: str = ""):
        self.folder, self.name, self.dtype, self.source_file, self.suffix = folder, name, dtype, source_file, suffix
        self.tokens = open(folder / f"{name}.npy{suffix}", "wb")
        self.docs_file = open(folder / f"{name}.csv.gz{suffix}", "wb")
        self.docs_raw = gzip.GzipFile(filename="", mode="wb", fileobj=self.docs_file, mtime=0)
        self.docs_text = io.TextIOWrapper(self.docs_raw, encoding="utf-8", newline="")
        self.docs = csv.writer(self.docs_text)
        self.docs.writerow(["start", "end", "id", "source"])
        self.num_tokens = 0
        self.num_documents = 0
        self.hash = hashlib.blake2b(digest_size=16)

    def add(self, tokens: np.ndarray, lengths: np.ndarray, ids: list[str], sources: list[str]) -> None:
        """Documents encoded by `encode_texts`, with their ids and sources."""
        data = tokens.astype(self.dtype).tobytes()
        self.tokens.write(data)
        self.hash.update(data)
        start = self.num_tokens
        for doc_id, source, length in zip(ids, sources, lengths.tolist()):
            self.docs.writerow([start, start + length, doc_id, source])
            start += length + 1
        self.num_tokens += len(tokens)
        self.num_documents += len(ids)

    def close(self, *, fsync: bool = False) -> dict:
        self.docs_text.close()  # closes the GzipFile (writing its trailer), not docs_file
        for f in (self.tokens, self.docs_file):
            f.flush()
            if fsync:
                os.fsync(f.fileno())
            f.close()
        return {
            "tokens": f"{self.name}.npy",
            "documents": f"{self.name}.csv.gz",
            "num_tokens": self.num_tokens,
            "num_documents": self.num_documents,
            "source_file": self.source_file,
            "hash": self.hash.hexdigest(),
        }

    def abort(self) -> None:
        for f in (self.tokens, self.docs_file):
            f.close()
        for ext in ("npy", "csv.gz"):
            (self.folder / f"{self.name}.{ext}{self.suffix}").unlink(missing_ok=True)


def write_meta(
    folder: Path, tok: Tokenizer, parts: list[dict], id_hashes: np.ndarray, *, seconds: float, input_bytes: int,
    text_bytes: int, rejected_lines: int, skipped_files: int, split: dict | None = None,
) -> tuple[dict, list[str]]:
    """Write `folder/meta.json` for the parts already in `folder` (in stream order); returns it and a few repeated ids.
    Shared by `data tokenize` and a curate pipeline's `tokenize:` so both write one format. `split`: the
    side's record when the folder is one side of a validation split (`lmforge.data.split.ValidationSplit.record`)."""
    duplicates, examples = _duplicate_ids(folder, parts, id_hashes)
    meta = {
        "format": FORMAT,
        "dtype": token_dtype(tok.vocab_size).name,
        "num_tokens": sum(p["num_tokens"] for p in parts),
        "num_documents": sum(p["num_documents"] for p in parts),
        "fingerprint": hashlib.sha256("".join(p["hash"] for p in parts).encode()).hexdigest()[:16],
        "tokenizer": {
            "name": tok.name,
            "fingerprint": tok.fingerprint,
            "vocab_size": tok.vocab_size,
            "eos_token_id": tok.eos_token_id,
        },
        "parts": parts,
        "created_by": f"lmforge {__version__}",
        "seconds": round(seconds, 3),
        "input_bytes": input_bytes,
        "text_bytes": text_bytes,
        "rejected_lines": rejected_lines,
        "skipped_files": skipped_files,
        "duplicate_ids": duplicates,
    }
    if split is not None:
        meta["split"] = split
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta, examples


def warn_duplicates(out_dir: Path, meta: dict, examples: list[str]) -> None:
    duplicates = meta["duplicate_ids"]
    if duplicates:
        shown = ", ".join(map(repr, examples)) + (", …" if len(examples) < duplicates else "")
        log.warning(
            f"{out_dir}: {duplicates} documents reuse an id already seen in this folder ({shown}); "
            "which documents a step saw will be ambiguous for those ids"
        )


def _duplicate_ids(folder: Path, parts: list[dict], id_hashes: np.ndarray, show: int = 5) -> tuple[int, list[str]]:
    """How many documents repeat an earlier document's id, and the first few such ids. Hashes
    find candidates cheaply; the ids themselves are then read back from the document index."""
    s = np.sort(id_hashes)
    candidates = set(np.unique(s[1:][s[1:] == s[:-1]]).tolist())
    if not candidates:
        return 0, []
    counts: dict[str, int] = {}
    for part in parts:
        with gzip.open(folder / part["documents"], "rt", newline="") as f:
            for row in csv.DictReader(f):
                if id_hash(row["id"]) in candidates:
                    counts[row["id"]] = counts.get(row["id"], 0) + 1
    repeated = [doc_id for doc_id, n in counts.items() if n > 1]
    return sum(counts[i] - 1 for i in repeated), repeated[:show]
