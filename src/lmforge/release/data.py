"""The data side of a release: which token files a run read, in which order, and what it saw.

Everything here is recomputed from the token bytes, never taken from a stored meta.json: a
token part's hash is BLAKE2b-128 of its .npy bytes (as `lmforge data tokenize` computes it
while writing), a folder's fingerprint is SHA-256 of its parts' hashes, the stream's is
SHA-256 of its folders', and the instance order of epoch e is a permutation seeded by
(seed, e, stream fingerprint) (`lmforge.data.dataset.InstanceDataset.order`). So a release
whose manifest, order files or logged CRCs do not follow from the bytes is caught.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.data.token_files import META_FILE
from lmforge.fsutil import file_sha256


def part_hash(path: Path) -> str:
    """BLAKE2b-128 of a token part's bytes, streamed."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def folder_fingerprint(part_hashes: list[str]) -> str:
    return hashlib.sha256("".join(part_hashes).encode()).hexdigest()[:16]


def stream_fingerprint(folder_fingerprints: list[str]) -> str:
    return hashlib.sha256("".join(folder_fingerprints).encode()).hexdigest()[:16]


def epoch_order(seed: int, epoch: int, fingerprint: str, num_instances: int) -> np.ndarray:
    """The instance order of one epoch (what `InstanceDataset.order` computes)."""
    key = hashlib.sha256(f"{seed}/{epoch}/{fingerprint}".encode()).digest()
    return np.random.default_rng(int.from_bytes(key[:8], "little")).permutation(num_instances)


def order_dtype(num_instances: int) -> np.dtype:
    return np.dtype(np.uint32) if num_instances < 2**32 else np.dtype(np.int64)


class Stream:
    """The token folders of a run read from their bytes: parts (memmaps), sources, counts."""

    def __init__(self, folders: list[Path]):
        self.folders = [Path(f) for f in folders]
        self.metas = [json.loads((f / META_FILE).read_text()) for f in self.folders]
        self.parts: list[np.ndarray] = []
        self.hashes: list[list[str]] = []
        for folder, meta in zip(self.folders, self.metas):
            dtype = np.dtype(meta["dtype"])
            self.parts += [np.memmap(folder / p["tokens"], dtype=dtype, mode="r") if p["num_tokens"]
                           else np.zeros(0, dtype) for p in meta["parts"]]
            self.hashes.append([part_hash(folder / p["tokens"]) for p in meta["parts"]])
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.num_tokens = int(self.offsets[-1])
        self.folder_fingerprints = [folder_fingerprint(h) for h in self.hashes]
        self.fingerprint = stream_fingerprint(self.folder_fingerprints)

    def read(self, start: int, end: int) -> np.ndarray:
        out, pos = [], start
        while pos < end:
            k = int(np.searchsorted(self.offsets, pos, side="right")) - 1
            take = min(end, int(self.offsets[k + 1])) - pos
            lo = pos - int(self.offsets[k])
            out.append(np.asarray(self.parts[k][lo : lo + take], dtype=np.int64))
            pos += take
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def documents(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(starts, ends, sources) of every document in stream positions (`end` is its EOS)."""
        starts, ends, sources = [], [], []
        offset = 0
        for folder, meta in zip(self.folders, self.metas):
            for part in meta["parts"]:
                with gzip.open(folder / part["documents"], "rt", newline="") as f:
                    for row in csv.DictReader(f):
                        starts.append(int(row["start"]) + offset)
                        ends.append(int(row["end"]) + offset)
                        sources.append(row["source"])
                offset += part["num_tokens"]
        return np.array(starts, np.int64), np.array(ends, np.int64), sources


def instances_of_steps(orders: dict[int, np.ndarray], batch: int, first_step: int, last_step: int) -> np.ndarray:
    """The instances of steps first..last (from 1), in order, from the per-epoch orders."""
    n = len(orders[0])
    positions = np.arange((first_step - 1) * batch, last_step * batch, dtype=np.int64)
    epochs, offsets = np.divmod(positions, n)
    out = np.empty(len(positions), np.int64)
    for e in np.unique(epochs).tolist():
        mask = epochs == e
        out[mask] = orders[e][offsets[mask]]
    return out


def batch_crc(instances: np.ndarray) -> int:
    return zlib.crc32(np.asarray(instances, dtype=np.int64).tobytes())


def content_crc(stream: Stream, instances: np.ndarray, seq_len: int) -> int:
    crc = 0
    for i in np.asarray(instances).tolist():
        crc = zlib.crc32(stream.read(i * seq_len, i * seq_len + seq_len + 1).tobytes(), crc)
    return crc


SOURCE_CHUNK = 1 << 20  # instances counted per pass of source_tokens


def source_tokens(stream: Stream, seq_len: int, counts: np.ndarray) -> tuple[dict[str, int], dict[str, int]]:
    """(available, trained) tokens per source: every token of the stream, and the input tokens
    of the trained instances (`counts[i]`: how often instance i was applied)."""
    starts, ends, sources = stream.documents()
    names = sorted(set(sources))
    source_of_doc = np.array([names.index(s) for s in sources], np.int64)
    lengths = ends - starts + 1  # with the EOS
    available = {n: int(lengths[source_of_doc == k].sum()) for k, n in enumerate(names)}
    # Tokens of source k before stream position x: whole documents before x's, plus x's own part.
    cumulative = np.zeros((len(names), len(starts) + 1), np.int64)
    for k in range(len(names)):
        cumulative[k, 1:] = np.cumsum(np.where(source_of_doc == k, lengths, 0))

    def before(x: np.ndarray) -> np.ndarray:  # (sources, len(x))
        doc = np.clip(np.searchsorted(ends, x, side="left"), 0, len(starts) - 1)
        inside = np.clip(x - starts[doc], 0, lengths[doc])
        out = cumulative[:, doc].copy()
        out[source_of_doc[doc], np.arange(len(x))] += inside
        return out

    used = np.nonzero(counts)[0]
    trained_counts = np.zeros(len(names), np.int64)
    for chunk in range(0, len(used), SOURCE_CHUNK):  # (sources × chunk) at a time, not × every instance
        part = used[chunk:chunk + SOURCE_CHUNK]
        a = part * seq_len
        trained_counts += (before(a + seq_len) - before(a)) @ counts[part].astype(np.int64)
    trained = {n: int(trained_counts[k]) for k, n in enumerate(names)}
    return available, trained


RELEASED_TOKENS = Path("data") / "tokens"  # where --include-data puts the token folders


def released_names(names: list[str]) -> list[str]:
    """Folder names under data/tokens/, unique: a name two folders share gets its position in
    front (00-train, 01-train), so the training order also shows in the listing."""
    return [f"{i:02d}-{n}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def manifest(stream: Stream, cfg: dict[str, Any], counts: np.ndarray, skipped: list[int]) -> dict[str, Any]:
    """data/manifest.json: the token folders in training order with every file's SHA-256,
    the fingerprints, and per-source available and trained tokens."""
    seq_len = cfg["data"]["seq_len"]
    available, trained = source_tokens(stream, seq_len, counts)
    folders = []
    for folder, meta, fingerprint in zip(stream.folders, stream.metas, stream.folder_fingerprints):
        files = [META_FILE] + [name for p in meta["parts"] for name in (p["tokens"], p["documents"])]
        folders.append({"path": str(folder), "name": folder.name, "fingerprint": fingerprint,
                        "num_tokens": int(meta["num_tokens"]),
                        "files": {name: file_sha256(folder / name) for name in files}})
    return {
        "folders": folders,
        "fingerprint": stream.fingerprint,
        "num_tokens": stream.num_tokens,
        "seq_len": seq_len,
        "batch_instances": cfg["trainer"]["batch_tokens"] // seq_len,
        "seed": cfg["trainer"]["seed"],
        "num_instances": (stream.num_tokens - 1) // seq_len,
        "instances_trained": int(counts.sum()),
        "skipped_steps": skipped,
        "sources": {name: {"available_tokens": available[name], "trained_tokens": trained[name],
                           "multiplier": round(trained[name] / available[name], 4) if available[name] else None}
                    for name in sorted(available)},
    }
