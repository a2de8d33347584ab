"""Passes 2 and 3 of `lmforge data mix`: with the output order decided (`mix_select`), scan each
input file once and append every selected copy's finished row to a temporary bucket file for its
slice of the output order, then read the buckets back one at a time and write the rows, in
order, into gzipped shards of about `shard_size_mb` each (peak memory: about one bucket)."""

from __future__ import annotations

import json
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from lmforge.curate.mix_config import MixConfig
from lmforge.curate.mix_read import iter_records, parse_record
from lmforge.curate.mix_select import SourceIndex, doc_hash, seed_key
from lmforge.curate.shards import ShardWriter
from lmforge.data.documents import Document
from lmforge.data.split import SIDES
from lmforge.errors import LmforgeError

SHARD_NAME = "mix-{:05d}.jsonl.gz"
_MAX_OPEN_BUCKETS = 64
_RECORD = struct.Struct("<QI")  # bucket record header: output position, row length


def row_bytes(doc: Document, rep: int) -> bytes:
    """Copy `rep` of `doc` as one dolma JSONL row (copies >= 1 get `#rep<j>` ids and `mix_repeat`)."""
    row: dict[str, Any] = {"id": doc.id if rep == 0 else f"{doc.id}#rep{rep}", "text": doc.text, "source": doc.source}
    metadata = dict(doc.metadata)
    if rep > 0:
        metadata["mix_repeat"] = rep
    if metadata:
        row["metadata"] = metadata
    try:
        return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (from "\ud800" escapes) cannot be UTF-8: keep them escaped
        return (json.dumps(row) + "\n").encode("ascii")


class Buckets:
    """Temporary files, one per slice of the output order, that rows are appended to while the
    inputs are scanned in file order (a few open at a time)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.open: OrderedDict[int, BinaryIO] = OrderedDict()

    def path(self, bucket: int) -> Path:
        return self.folder / f".bucket-{bucket:05d}.bin"

    def append(self, bucket: int, position: int, row: bytes) -> None:
        f = self.open.pop(bucket, None)
        if f is None:
            if len(self.open) >= _MAX_OPEN_BUCKETS:
                self.open.popitem(last=False)[1].close()
            f = open(self.path(bucket), "ab")  # noqa: SIM115 - stays open across appends; close() ends it
        self.open[bucket] = f
        f.write(_RECORD.pack(position, len(row)))
        f.write(row)

    def close(self) -> None:
        while self.open:
            self.open.popitem()[1].close()

    def read(self, bucket: int) -> list[tuple[int, bytes]]:
        path = self.path(bucket)
        data = path.read_bytes() if path.exists() else b""
        records, pos = [], 0
        while pos < len(data):
            position, length = _RECORD.unpack_from(data, pos)
            pos += _RECORD.size
            records.append((position, data[pos : pos + length]))
            pos += length
        return records


class RollingShardWriter:
    """Rows into consecutive shards of about `limit` bytes; each shard is a deterministic gzip
    written under a temp name and renamed when closed (`curate.shards.ShardWriter`)."""

    def __init__(self, folder: Path, limit: int, label: str = ""):
        self.folder, self.limit = folder, limit
        self.label = label  # prefixed to shard names in the report ("val/" for a held-out side)
        self.shards: list[dict[str, Any]] = []
        self._out: ShardWriter | None = None
        self._bytes = 0

    def write(self, row: bytes) -> None:
        if self._out is not None and self._out.rows > 0 and self._bytes + len(row) > self.limit:
            self.close_shard()
        if self._out is None:
            self._out = ShardWriter(self.folder / SHARD_NAME.format(len(self.shards)))
            self._bytes = 0
        self._out.write_line(row)
        self._bytes += len(row)

    def close_shard(self) -> None:
        if self._out is None:
            return
        out, self._out = self._out, None
        out.commit()
        self.shards.append({"name": self.label + out.path.name, "documents": out.rows, "bytes": self._bytes,
                            "compressed_bytes": out.path.stat().st_size})  # fmt: skip

    def abort(self) -> None:
        if self._out is not None:
            self._out.abort()
            self._out = None


def gather(
    config: MixConfig,
    indexes: list[SourceIndex],
    out_doc: np.ndarray,
    out_rep: np.ndarray,
    bucket_of: np.ndarray,
    buckets: Buckets,
    progress: bool,
) -> None:
    """Scan each input file once, appending every selected copy's row to its bucket."""
    key = seed_key(config.seed)
    by_doc = np.argsort(out_doc, kind="stable")  # output positions grouped by document
    sorted_doc = out_doc[by_doc]
    jobs = []  # (source index, path, first global doc, doc count)
    for index in indexes:
        start = index.offset
        skips = index.file_skips or [frozenset()] * len(index.files)
        for path, n, skip in zip(index.files, index.file_docs, skips):
            lo = int(np.searchsorted(sorted_doc, start, side="left"))
            if lo < len(sorted_doc) and sorted_doc[lo] < start + n:
                jobs.append((index, path, start, n, lo, skip))
            start += n
    total_bytes = sum(path.stat().st_size for _, path, _, _, _, _ in jobs)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="mix: gather", disable=not progress)
    done = 0
    try:
        for index, path, start, n, p, skip in jobs:
            last_needed = int(sorted_doc[np.searchsorted(sorted_doc, start + n, side="left") - 1])

            def report(pos: int, base: int = done) -> None:
                bar.update(base + pos - bar.n)

            g = start - 1
            for line_no, payload in iter_records(path, report, skip=skip):
                g += 1
                if g > last_needed:
                    break
                if sorted_doc[p] != g:
                    continue
                doc = parse_record(path, line_no, payload)
                position = g - index.offset
                if doc_hash(key, index.name, doc.id, position) != int(index.hashes[position]):
                    raise LmforgeError(f"{path}:{line_no}: file changed while mixing (document id differs); rerun")
                while p < len(sorted_doc) and sorted_doc[p] == g:
                    o = int(by_doc[p])
                    buckets.append(int(bucket_of[o]), o, row_bytes(doc, int(out_rep[o])))
                    p += 1
            if g < last_needed:
                raise LmforgeError(f"{path}: file changed while mixing (fewer documents than counted); rerun")
            done += path.stat().st_size
            bar.update(done - bar.n)
    finally:
        bar.close()
        buckets.close()


def write_output(
    config: MixConfig,
    indexes: list[SourceIndex],
    out_doc: np.ndarray,
    out_rep: np.ndarray,
    stage: Path,
    progress: bool,
    held_out: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Gather the rows of (`out_doc`, `out_rep`) into buckets inside `stage`, then write them in that
    order as shards there. Returns one {name, documents, bytes, compressed_bytes} per shard.

    With `held_out` (per output row) the rows are written, still in that order, as shards of
    `stage/train/` and, where it is True, of `stage/val/` (names in the report: `train/mix-…`)."""
    est = np.concatenate([ix.est_bytes for ix in indexes])[out_doc] if len(out_doc) else np.zeros(0, np.int64)
    starts = np.cumsum(est) - est
    bucket_of = starts // config.shard_bytes  # slices of ≈ shard_size_mb of (estimated) rows
    n_buckets = int(bucket_of[-1]) + 1 if len(bucket_of) else 0
    buckets = Buckets(stage)
    gather(config, indexes, out_doc, out_rep, bucket_of, buckets, progress)

    if held_out is None:
        writers = [RollingShardWriter(stage, config.shard_bytes)]
        side_of = np.zeros(len(out_doc), dtype=np.int64)
    else:
        writers = [RollingShardWriter(stage / side, config.shard_bytes, f"{side}/") for side in SIDES]
        for side in SIDES:
            (stage / side).mkdir()  # both sides exist, even one with no rows
        side_of = held_out.astype(np.int64)  # SIDES = (train, val)
    bar = tqdm(total=len(out_doc), unit="doc", unit_scale=True, desc="mix: write", disable=not progress)
    expected = 0
    try:
        for b in range(n_buckets):
            records = sorted(buckets.read(b))
            for position, row in records:
                if position != expected:
                    raise LmforgeError(f"output row {expected} was not gathered (an input changed?); rerun")
                writers[side_of[position]].write(row)
                expected += 1
            bar.update(len(records))
            buckets.path(b).unlink(missing_ok=True)
        for writer in writers:
            writer.close_shard()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    finally:
        bar.close()
    if expected != len(out_doc):
        raise LmforgeError(f"only {expected} of {len(out_doc)} output rows were gathered (an input changed?); rerun")
    return [shard for writer in writers for shard in writer.shards]
