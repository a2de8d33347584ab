"""Mixing sources to target proportions (`lmforge data mix`): pick whole documents from each
source so that every source's share of the output's *tokens* is what the config asks for,
upsampling (repeating) small sources and downsampling large ones, and write the result as
shuffled, gzipped dolma JSONL shards plus a report.

Config (`MixConfig`)::

    sources:                      # each: name, paths (files/folders of JSONL[.gz|.zst]), proportion
      - {name: web,   paths: [data/web],   proportion: 0.7}
      - {name: books, paths: [data/books], proportion: 0.3}
    output: mixed/
    total_tokens: null            # null: the largest total reachable without repeating any source
    max_repeats: 4.0              # a source may be repeated at most this many times
    shard_size_mb: 64             # uncompressed JSONL bytes per shard (a document is never split)
    seed: 0
    tokenizer: null               # null: whitespace-separated words; else e.g. "olmo2" or a path
    strict: false                 # true: stop at the first bad line or unreadable file

Semantics
---------
* Proportions must each be > 0 and sum to 1 (within 1e-6).
* **Counting.** Every document of every source is counted once: words (`len(text.split())`)
  or, with `tokenizer`, the length of `Tokenizer.encode(text)` (no special tokens).
  A source's *available* tokens ``A`` is the sum over its documents.
* **Total.** ``total_tokens``, or when it is null ``floor(min_s A_s / p_s)``: the largest total
  at which no source needs more than its own tokens. Each source's target is
  ``t = round(p * total)`` (capped at ``A`` when the total was derived).
  If ``t / A > max_repeats`` the run is refused (ConfigError naming the source); a source with no
  documents or no tokens is refused too.
* **Order.** Each source's documents are ordered by a 64-bit keyed BLAKE2b hash of
  (seed as key; source name, document id, position), where position is the document's
  0-based ordinal within its source (files in `expand_paths` order, then line order), so
  duplicate ids still get distinct keys. Same seed and inputs → same order.
* **Selection.** ``k = floor(t / A)`` whole copies of the source are taken (copy 0, 1, …, k-1),
  then a prefix of the hashed order for the remaining ``r = t - k*A`` tokens: documents are
  added in hashed order while the running sum stays ≤ r; the first document that would
  overshoot is added too if its overshoot is no larger than the undershoot of leaving it out
  (``sum + n - r <= r - sum``), and selection stops there. So each source misses its target by
  at most half of one document's tokens. This partial copy is copy number ``k``.
* **Repeats.** Copy 0 of a document is written as it was read. Copy ``j >= 1`` gets the id
  ``<id>#rep<j>`` and ``metadata.mix_repeat = j``.
* **Interleaving.** All selected copies of all sources are ordered by a 64-bit mix of
  (the document's hash, copy number), i.e. a seeded shuffle that is a pure function of
  (seed, source names, ids, positions) and does not depend on numpy's RNG.
* **Output.** ``output/mix-00000.jsonl.gz``, … Rows are dolma JSON ``{"id", "text", "source",
  "metadata"?}`` (`source` is the document's own, as `read_documents` gives it; `metadata` only
  when non-empty). A shard is closed before the row that would take it over ``shard_size_mb``
  of uncompressed JSONL (so shards are ≤ the size unless one document alone is larger).
  gzip is written with mtime=0 and no file name: same inputs and seed → byte-identical shards.
* **Bad input.** A bad line (invalid UTF-8, bad JSON, no string `text`) is skipped and listed in
  ``output/rejects.jsonl`` ({file, line, reason}); a file that cannot be read on (not gzip,
  truncated) is one row with line null after its documents before the damage, and one warning
  line. Positions count only the documents kept. ``strict: true`` stops at the first instead.
* **Report.** ``output/mix.json``: per source documents/tokens available, target, selected,
  achieved proportion, repeat factor (selected / available tokens), whole copies; totals; shards
  (documents, uncompressed and compressed bytes); the config. A table is printed too.
* **Atomicity.** Everything is written into a hidden staging folder beside `output`, which
  replaces `output` only when complete (`fsutil.staged_folder`); on an exception the staging
  folder is deleted and any previous `output` is left as it was. (A process killed with SIGKILL
  may leave a hidden ``.output.*`` folder behind, never a half `output`.)

Memory and I/O
--------------
Two reading passes over the inputs, each file read sequentially (gz/zst are fine):

1. Count: per document we keep 3 × 8 bytes (tokens, an estimate of its row size, its hash) —
   no text, no ids. ~24 MB per million documents.
2. Gather: the output order is decided first as references (global document index, copy),
   16 bytes per output row plus a few int64 arrays of the same length for the gather. Each input
   file is then scanned once (files with no selected document are skipped) and every selected
   copy's finished row is appended to a temporary *bucket* file for its slice of the output order
   (buckets ≈ shard_size_mb each, inside the staging folder).
3. Write: buckets are read one at a time, put in output order and written to shards, so peak
   memory is about one bucket (≈ shard_size_mb) of rows. Disk: the output uncompressed once
   more, transiently (each bucket is deleted once written).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
import sys
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from lmforge.config import Config, require
from lmforge.data.documents import (
    READ_ERRORS,
    TEXT_SUFFIXES,
    BadInput,
    Document,
    decode_line,
    expand_paths,
    file_problem,
    open_bytes_counted,
    parse_document,
)
from lmforge.curate.shards import ShardWriter
from lmforge.data.tokenizer import TokenCounter
from lmforge.errors import ConfigError, LmforgeError
from lmforge.fsutil import staged_folder

log = logging.getLogger(__name__)

REPORT_FILE = "mix.json"
REJECTS_FILE = "rejects.jsonl"
SHARD_NAME = "mix-{:05d}.jsonl.gz"
PROPORTION_TOLERANCE = 1e-6
_BATCH = 256  # documents per tokenizer call while counting
_MAX_OPEN_BUCKETS = 64
_RECORD = struct.Struct("<QI")  # bucket record header: output position, row length


@dataclass(kw_only=True)
class MixSource(Config):
    """One input of the mix."""

    name: str
    """Name used in the report and in the selection hash (renaming a source reshuffles it)."""
    paths: list[str]
    """Files or folders of dolma JSONL (.jsonl, .jsonl.gz, .jsonl.zst; .txt = one document)."""
    proportion: float
    """Share of the output's tokens, in (0, 1]; all sources' proportions sum to 1."""

    def validate(self) -> None:
        require(bool(self.name.strip()), "name", "must not be empty")
        require(len(self.paths) > 0, "paths", f"source {self.name!r} names no files or folders")
        require(
            math.isfinite(self.proportion) and self.proportion > 0,
            "proportion",
            f"must be > 0 (got {self.proportion}) for source {self.name!r}; drop the source instead",
        )


@dataclass(kw_only=True)
class MixConfig(Config):
    """Mix several document sources into one corpus with given token proportions."""

    sources: list[MixSource]
    """The inputs and their shares of the output's tokens."""
    output: Path
    """Folder to write mix-NNNNN.jsonl.gz and mix.json into (replaced as a whole when done)."""
    total_tokens: int | None = None
    """Tokens in the output; None: the largest total reachable without upsampling any source."""
    max_repeats: float = 4.0
    """Refuse to upsample any source more than this many times."""
    shard_size_mb: float = 64.0
    """Uncompressed JSONL megabytes (10^6 bytes) per output shard, approximately."""
    seed: int = 0
    """Seeds which documents are selected and the order they are written in."""
    tokenizer: str | None = None
    """None: count whitespace-separated words; else a `load_tokenizer` spec ("olmo2", a path)."""
    strict: bool = False
    """Stop at the first bad input line (invalid UTF-8, bad JSON, no string `text`) or unreadable
    file (not gzip, truncated) with a one-line `file:line: reason` error. False: they are skipped,
    listed in `output/rejects.jsonl` ({file, line (null for a whole file), reason}), counted in
    mix.json (`rejected_lines`, `skipped_files`) and summed up in one warning line."""

    def validate(self) -> None:
        require(len(self.sources) > 0, "sources", "name at least one source")
        names = [s.name for s in self.sources]
        dup = next((n for n in names if names.count(n) > 1), None)
        require(dup is None, "sources", f"source name {dup!r} is used twice; names must be unique")
        bad = next((s for s in self.sources if not (math.isfinite(s.proportion) and s.proportion > 0)), None)
        require(bad is None, "sources", f"proportion of {bad.name if bad else ''!r} must be > 0")
        total = sum(s.proportion for s in self.sources)
        require(
            abs(total - 1.0) <= PROPORTION_TOLERANCE,
            "sources",
            f"proportions sum to {total:.6g}, not 1 ("
            + ", ".join(f"{s.name}={s.proportion:g}" for s in self.sources)
            + "); rescale them",
        )
        require(self.total_tokens is None or self.total_tokens > 0, "total_tokens", "must be > 0 (or null)")
        require(math.isfinite(self.max_repeats) and self.max_repeats >= 1, "max_repeats", "must be >= 1")
        require(math.isfinite(self.shard_size_mb) and self.shard_size_mb > 0, "shard_size_mb", "must be > 0")

    @property
    def shard_bytes(self) -> int:
        return max(1, int(self.shard_size_mb * 1_000_000))


# -- reading ------------------------------------------------------------------------------------


def _iter_records(
    path: Path,
    on_progress: Callable[[int], None],
    rejects: list[BadInput] | None = None,
    skip: frozenset[int] | None = None,
) -> Iterator[tuple[int, str]]:
    """(line number, decoded line) of each document of a JSONL file, blank lines skipped — the
    same documents in the same order as `read_documents`; a .txt file is one record (0, its text).
    `on_progress(raw_bytes_read_so_far)` is called now and then.

    Lines are decoded one by one. With `rejects` (the counting pass), a line that is not valid
    UTF-8 is appended to it and skipped, and so is a file that cannot be read on (not gzip,
    truncated), after the lines before the damage; without (`strict`), those raise BadInput.
    `skip` (the gathering pass): line numbers the counting pass rejected, passed over unread;
    then a file problem just ends the file (counting saw it and counted only the lines before)."""
    gathering = skip is not None
    skip = skip or frozenset()
    line_no = 0
    try:
        stream, raw = open_bytes_counted(path)
        with stream:
            if path.name.endswith(TEXT_SUFFIXES):
                data = stream.read()
                try:
                    yield 0, decode_line(data, path, None)
                except BadInput as e:
                    if rejects is None or gathering:
                        raise
                    rejects.append(e)
            else:
                for line_no, line in enumerate(stream, start=1):
                    if line_no % 1024 == 0:
                        on_progress(raw.tell())
                    if line_no in skip or not line.strip():
                        continue
                    try:
                        text = decode_line(line, path, line_no)
                    except BadInput as e:
                        if rejects is None or gathering:
                            raise
                        rejects.append(e)
                        continue
                    yield line_no, text
            on_progress(raw.tell())
    except READ_ERRORS as e:
        if gathering:
            return  # counting saw this and counted only the documents before it
        problem = file_problem(path, e, line_no)
        if rejects is None:
            raise problem from None
        rejects.append(problem)
        log.warning(f"skipped {problem}")  # one line per unreadable file, as it happens


def _parse(path: Path, line_no: int, payload: str) -> Document:
    if path.name.endswith(TEXT_SUFFIXES):
        return Document(id=path.name, text=payload, source=path.name.split(".")[0])
    return parse_document(payload, path, line_no)


def _doc_hash(seed_key: bytes, source: str, doc_id: str, position: int) -> int:
    h = hashlib.blake2b(digest_size=8, key=seed_key)
    h.update(f"{source}\x00{doc_id}\x00{position}".encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "little")


def _seed_key(seed: int) -> bytes:
    return seed.to_bytes(16, "little", signed=True)


# -- pass 1: count ------------------------------------------------------------------------------


@dataclass
class _SourceIndex:
    """What counting learned about one source: per-document arrays, no texts."""

    name: str
    files: list[Path]
    file_docs: list[int]  # documents per file
    tokens: np.ndarray  # int64, per document
    est_bytes: np.ndarray  # int64, per document: length of its input line (an output-size estimate)
    hashes: np.ndarray  # uint64, per document: the selection key
    offset: int = 0  # global index of its first document
    file_skips: list[frozenset[int]] = field(default_factory=list)  # per file: rejected line numbers

    @property
    def n_docs(self) -> int:
        return len(self.tokens)


def _count(
    config: MixConfig,
    files: list[list[Path]],
    counter: TokenCounter,
    progress: bool,
    rejects: list[BadInput] | None = None,
) -> list[_SourceIndex]:
    """Count every source's documents. Bad lines and unreadable files are appended to `rejects`
    (None, i.e. `strict`: they raise BadInput)."""
    seed_key = _seed_key(config.seed)
    total_bytes = sum(f.stat().st_size for fs in files for f in fs)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="mix: count", disable=not progress)
    indexes: list[_SourceIndex] = []
    offset = 0
    done = 0
    try:
        for source, source_files in zip(config.sources, files):
            tokens, est, hashes, file_docs, file_skips = array("q"), array("q"), array("Q"), [], []
            texts: list[str] = []
            for path in source_files:
                n_before = len(hashes)

                def report(pos: int, base: int = done) -> None:
                    bar.update(base + pos - bar.n)

                n_rejects = len(rejects) if rejects is not None else 0
                for line_no, payload in _iter_records(path, report, rejects):
                    try:
                        doc = _parse(path, line_no, payload)
                    except BadInput as e:
                        if rejects is None:
                            raise
                        rejects.append(e)
                        continue
                    hashes.append(_doc_hash(seed_key, source.name, doc.id, len(hashes)))
                    est.append(len(payload) + 1)
                    texts.append(doc.text)
                    if len(texts) >= _BATCH:
                        tokens.extend(counter.batch(texts))
                        texts.clear()
                file_docs.append(len(hashes) - n_before)
                bad_lines = [r.line for r in (rejects or [])[n_rejects:] if r.line is not None]
                file_skips.append(frozenset(bad_lines))
                done += path.stat().st_size
                bar.update(done - bar.n)
            if texts:
                tokens.extend(counter.batch(texts))
            index = _SourceIndex(
                name=source.name,
                files=source_files,
                file_docs=file_docs,
                file_skips=file_skips,
                tokens=np.frombuffer(tokens, dtype=np.int64).copy() if tokens else np.zeros(0, np.int64),
                est_bytes=np.frombuffer(est, dtype=np.int64).copy() if est else np.zeros(0, np.int64),
                hashes=np.frombuffer(hashes, dtype=np.uint64).copy() if hashes else np.zeros(0, np.uint64),
                offset=offset,
            )
            offset += index.n_docs
            indexes.append(index)
    finally:
        bar.close()
    return indexes


# -- selection ----------------------------------------------------------------------------------


@dataclass
class _Selection:
    target: int
    full_copies: int
    prefix: np.ndarray  # local document indices of the partial copy, in hashed order
    selected_tokens: int
    selected_docs: int


def _targets(config: MixConfig, indexes: list[_SourceIndex]) -> tuple[int, list[int]]:
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


def _select(index: _SourceIndex, target: int) -> _Selection:
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
    return _Selection(target, k, prefix, selected, k * index.n_docs + m)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised: a bijective 64-bit mix."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _output_order(indexes: list[_SourceIndex], selections: list[_Selection]) -> tuple[np.ndarray, np.ndarray]:
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
    key = _mix64(hashes[doc] ^ _mix64(rep.astype(np.uint64)))
    order = np.lexsort((rep, doc, key))  # by key; ties (never in practice) by document, copy
    return doc[order], rep[order]


# -- passes 2 and 3: gather and write -------------------------------------------------------------


def _row_bytes(doc: Document, rep: int) -> bytes:
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


class _Buckets:
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
            f = open(self.path(bucket), "ab")
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


class _ShardWriter:
    """Rows into consecutive shards of about `limit` bytes; each shard is a deterministic gzip
    written under a temp name and renamed when closed (`curate.shards.ShardWriter`)."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit = folder, limit
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
        self.shards.append({"name": out.path.name, "documents": out.rows, "bytes": self._bytes,
                            "compressed_bytes": out.path.stat().st_size})  # fmt: skip

    def abort(self) -> None:
        if self._out is not None:
            self._out.abort()
            self._out = None


def _gather(
    config: MixConfig,
    indexes: list[_SourceIndex],
    out_doc: np.ndarray,
    out_rep: np.ndarray,
    bucket_of: np.ndarray,
    buckets: _Buckets,
    progress: bool,
) -> None:
    """Scan each input file once, appending every selected copy's row to its bucket."""
    seed_key = _seed_key(config.seed)
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
            for line_no, payload in _iter_records(path, report, skip=skip):
                g += 1
                if g > last_needed:
                    break
                if sorted_doc[p] != g:
                    continue
                doc = _parse(path, line_no, payload)
                position = g - index.offset
                if _doc_hash(seed_key, index.name, doc.id, position) != int(index.hashes[position]):
                    raise LmforgeError(f"{path}:{line_no}: file changed while mixing (document id differs); rerun")
                while p < len(sorted_doc) and sorted_doc[p] == g:
                    o = int(by_doc[p])
                    buckets.append(int(bucket_of[o]), o, _row_bytes(doc, int(out_rep[o])))
                    p += 1
            if g < last_needed:
                raise LmforgeError(f"{path}: file changed while mixing (fewer documents than counted); rerun")
            done += path.stat().st_size
            bar.update(done - bar.n)
    finally:
        bar.close()
        buckets.close()


def _write_output(
    config: MixConfig,
    indexes: list[_SourceIndex],
    out_doc: np.ndarray,
    out_rep: np.ndarray,
    stage: Path,
    progress: bool,
) -> list[dict[str, Any]]:
    est = np.concatenate([ix.est_bytes for ix in indexes])[out_doc] if len(out_doc) else np.zeros(0, np.int64)
    starts = np.cumsum(est) - est
    bucket_of = starts // config.shard_bytes  # slices of ≈ shard_size_mb of (estimated) rows
    n_buckets = int(bucket_of[-1]) + 1 if len(bucket_of) else 0
    buckets = _Buckets(stage)
    _gather(config, indexes, out_doc, out_rep, bucket_of, buckets, progress)

    writer = _ShardWriter(stage, config.shard_bytes)
    bar = tqdm(total=len(out_doc), unit="doc", unit_scale=True, desc="mix: write", disable=not progress)
    expected = 0
    try:
        for b in range(n_buckets):
            records = sorted(buckets.read(b))
            for position, row in records:
                if position != expected:
                    raise LmforgeError(f"output row {expected} was not gathered (an input changed?); rerun")
                writer.write(row)
                expected += 1
            bar.update(len(records))
            buckets.path(b).unlink(missing_ok=True)
        writer.close_shard()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    if expected != len(out_doc):
        raise LmforgeError(f"only {expected} of {len(out_doc)} output rows were gathered (an input changed?); rerun")
    return writer.shards


# -- the whole thing ----------------------------------------------------------------------------


def mix(config: MixConfig, *, progress: bool = True) -> dict:
    """Select documents from `config.sources` to their token proportions and write shuffled
    shards plus `mix.json` into `config.output` (see the module docstring). Returns the report."""
    config.validate()
    files: list[list[Path]] = []
    out = config.output.resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output: {config.output} exists and is not a folder")
    for i, source in enumerate(config.sources):
        try:
            found = expand_paths(list(source.paths))
        except LmforgeError as e:
            raise ConfigError(f"sources[{i}] ({source.name}).paths: {e}") from None
        for f in found:
            if out == f.resolve() or out in f.resolve().parents:
                raise ConfigError(f"output: {config.output} holds input {f} of source {source.name!r}; "
                                  "mix into a new folder (the output folder is replaced as a whole)")
        files.append(found)
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_FILE).exists():
        # The output folder is replaced as a whole: only ever replace an earlier mix.
        raise ConfigError(f"output: {config.output} is a non-empty folder that no mix wrote; name a new folder")

    counter = TokenCounter(config.tokenizer)
    rejects: list[BadInput] | None = None if config.strict else []
    indexes = _count(config, files, counter, progress, rejects)
    rejects = rejects or []
    total, targets = _targets(config, indexes)
    selections = [_select(ix, t) for ix, t in zip(indexes, targets)]
    out_doc, out_rep = _output_order(indexes, selections)

    with staged_folder(config.output) as stage:
        shards = _write_output(config, indexes, out_doc, out_rep, stage, progress)
        report = _report(config, indexes, selections, total, counter.describe(), shards)
        skipped_files = sum(r.line is None for r in rejects)
        report["rejected_lines"], report["skipped_files"] = len(rejects) - skipped_files, skipped_files
        if rejects:
            with open(stage / REJECTS_FILE, "w") as f:
                f.writelines(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rejects)
        (stage / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report), file=sys.stdout)
    if rejects:
        files_, lines_ = _plural(skipped_files, "file"), _plural(len(rejects) - skipped_files, "line")
        log.warning(f"skipped {files_} and {lines_}; see {config.output / REJECTS_FILE}")
    return report


def _plural(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def _report(
    config: MixConfig,
    indexes: list[_SourceIndex],
    selections: list[_Selection],
    total: int,
    counting: dict[str, Any],
    shards: list[dict[str, Any]],
) -> dict[str, Any]:
    selected_total = sum(s.selected_tokens for s in selections)
    sources = []
    for source, index, sel in zip(config.sources, indexes, selections):
        available = int(index.tokens.sum())
        sources.append(
            {
                "name": source.name,
                "files": len(index.files),
                "documents_available": index.n_docs,
                "tokens_available": available,
                "proportion": source.proportion,
                "target_tokens": sel.target,
                "selected_tokens": sel.selected_tokens,
                "selected_documents": sel.selected_docs,
                "achieved_proportion": sel.selected_tokens / selected_total if selected_total else 0.0,
                "repeat_factor": sel.selected_tokens / available,
                "full_copies": sel.full_copies,
            }
        )
    return {
        "counting": counting,
        "total_tokens": total,
        "sources": sources,
        "totals": {
            "documents_available": sum(ix.n_docs for ix in indexes),
            "tokens_available": sum(s["tokens_available"] for s in sources),
            "target_tokens": sum(s.target for s in selections),
            "selected_tokens": selected_total,
            "selected_documents": sum(s.selected_docs for s in selections),
            "shards": len(shards),
            "bytes": sum(s["bytes"] for s in shards),
            "compressed_bytes": sum(s["compressed_bytes"] for s in shards),
        },
        "shards": shards,
        "config": config.to_dict(),
    }


def format_table(report: dict[str, Any]) -> str:
    """The report's per-source numbers as a small fixed-width table."""
    header = ("source", "available", "target", "selected", "achieved %", "repeats")
    rows = [
        (
            s["name"],
            f"{s['tokens_available']:,}",
            f"{s['target_tokens']:,}",
            f"{s['selected_tokens']:,}",
            f"{100 * s['achieved_proportion']:.2f} ({100 * s['proportion']:.2f})",
            f"{s['repeat_factor']:.2f}x",
        )
        for s in report["sources"]
    ]
    t = report["totals"]
    rows.append(("total", f"{t['tokens_available']:,}", f"{t['target_tokens']:,}", f"{t['selected_tokens']:,}",
                 "100.00", ""))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    unit = report["counting"]["unit"]
    lines.append(f"{t['selected_documents']:,} documents, {t['shards']} shard(s), counted in {unit}")
    return "\n".join(lines)
