"""Reading and writing the JSONL shards of a curation run.

Outputs are gzip with no file name and mtime 0 in the header, so a resumed run writes the same
bytes as an uninterrupted one. Every file is written under a temporary name and renamed into
place, so a file that exists is complete.

Input shards. A task reads one shard: a whole input file, or a piece of one, so that one big
file does not run on one core. Before the first stage, one pass over each JSONL file (`cut_file`,
decompressing .gz/.zst) cuts it into pieces of `shard_docs` lines (ending a piece early after
the line that takes it past `shard_mb` MB of JSONL) and records each piece's first line, line
count and byte range in the decompressed content. The cut depends on the file and those two
settings only, never on the number of workers, so 1 worker, 2 or a Ray cluster read the same
pieces and write the same bytes; pipeline.json records them, and a resumed run must cut alike.

An uncompressed piece is entered by seeking to its first byte. gzip and zstd streams cannot be
entered in the middle, so a compressed piece's task decompresses the file from its start and
drops the bytes before its piece (reading, not splitting lines or parsing: ~240 MB/s of
decompressed JSONL on one core here), then reads its own lines; line numbers (in rejects, and in
the ids of documents without one) are those of the whole file. Measured costs, on 20,000
generated web documents in one 5 MB .jsonl.gz (15 MB of JSONL), one core:

* the first pass: one decompression of the file, 0.07 s, once per run (and on every rerun);
  several files are counted in parallel on the run's workers;
* skipping: piece k of n decompresses k pieces' worth first, so a file cut into n pieces costs
  (n - 1) / 2 extra decompressions of itself, quadratic in n. Against the web chain's
  ~0.55 MB/s per core that is ~(n - 1) / 900 of the curation work: 0.3 % for the 4 pieces of
  this file, 3.5 % for 32. It bites for cheap chains (only dedup, ~3-4 MB/s with the output
  written) on big files: there 32 pieces cost ~20 % extra. So a compressed file is cut into at
  most `MAX_COMPRESSED_PIECES` (neighbouring pieces joined evenly, so pieces grow past
  `shard_docs`); to go wider, store a big input as several files, or decompressed (no skipping).

A file that cannot be read to its end (not gzip, truncated) is not cut: its one task reads what
it can and reports the damage, as for any unreadable file.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lmforge.data.documents import (
    JSONL_SUFFIXES,
    READ_ERRORS,
    TEXT_SUFFIXES,
    BadInput,
    Document,
    decode_line,
    file_problem,
    open_bytes_counted,
    open_text,
    parse_document,
    read_documents,
)

GZIP_LEVEL = 3  # ~3× faster than level 9 for a few % more bytes
UNCOMPRESSED_SUFFIXES = (".jsonl", ".json")
MAX_COMPRESSED_PIECES = 32
"""Most pieces a compressed file is cut into: each piece's task decompresses the file from its
start, so the cost of skipping grows with the square of the pieces (see the module doc)."""


def dumps(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


class ShardWriter:
    """Writes JSONL rows to `path` (gzip if it ends in .gz) via a temporary file; `commit()`
    renames it into place. Not committing (an exception, a kill) leaves only the temp file."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._raw: BinaryIO = open(self.tmp, "wb")
        self._out: BinaryIO = (
            gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0, compresslevel=GZIP_LEVEL)  # type: ignore[assignment]
            if path.name.endswith(".gz")
            else self._raw
        )
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        self.write_line(dumps(row).encode("utf-8") + b"\n")

    def write_line(self, line: bytes) -> None:
        """One already-serialised row, newline included."""
        self._out.write(line)
        self.rows += 1

    def close(self) -> None:
        if self._out is not self._raw:
            self._out.close()
        self._raw.close()

    def commit(self) -> None:
        if self._out is not self._raw:
            self._out.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())  # on disk before the rename makes it look complete
        self._raw.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.close()
        self.tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class InputShard:
    """What one task reads: a whole input file, or the `lines` lines from `first_line` on, which
    fill bytes [start, end) of the file's content (decompressed, for .gz and .zst)."""

    path: str
    start: int = 0
    end: int | None = None
    """None: to the end of the file."""
    first_line: int = 1
    lines: int | None = None
    """Lines in the shard, blank and bad ones included; None: not counted (a .txt file, a file
    that cannot be read to its end, or no `shard_docs`/`shard_mb` limit)."""

    def describe(self) -> dict[str, Any]:
        """The shard as pipeline.json records it: file, and for a counted file its line range and
        byte range (a resumed run must cut its input the same way)."""
        if self.lines is None:
            return {"file": self.path}
        return {"file": self.path, "lines": [self.first_line, self.first_line + self.lines - 1],
                "bytes": [self.start, self.end]}  # fmt: skip


def split_inputs(files: list[Path], shard_docs: int | None, shard_mb: float | None,
                 map_files: Callable[[Callable, list[Path]], list] | None = None) -> list[InputShard]:  # fmt: skip
    """The shards of the input, in file order: each JSONL file cut by `cut_file` (`map_files`,
    e.g. an executor's `map`, runs those first passes in parallel; default: here, in turn)."""
    max_bytes = int(shard_mb * 1_000_000) if shard_mb else None
    cut = partial(cut_file, max_lines=shard_docs, max_bytes=max_bytes)
    per_file = map_files(cut, files) if map_files is not None else [cut(f) for f in files]
    return [shard for shards in per_file for shard in shards]


def cut_file(path: Path, max_lines: int | None, max_bytes: int | None,
             max_pieces: int = MAX_COMPRESSED_PIECES) -> list[InputShard]:  # fmt: skip
    """One pass over a JSONL file (decompressing it) that cuts it into pieces of `max_lines`
    lines, ending a piece early after the line that takes it past `max_bytes`; a compressed file
    cut into more than `max_pieces` has neighbouring pieces joined, evenly, into `max_pieces`.
    The pieces are a function of the file's content and the limits alone. A .txt file, a file
    that cannot be read to its end (its reader reports the damage) and no limits: the whole file."""
    path = Path(path)
    whole = [InputShard(str(path))]
    if not path.name.endswith(JSONL_SUFFIXES) or (max_lines is None and max_bytes is None):
        return whole
    cutter = _Cutter(max_lines, max_bytes)
    try:
        stream, _ = open_bytes_counted(path)
        with stream:
            while chunk := stream.read(_CHUNK):
                cutter.feed(chunk)
    except READ_ERRORS:
        return whole
    pieces = cutter.finish()
    if not path.name.endswith(UNCOMPRESSED_SUFFIXES) and len(pieces) > max_pieces:
        pieces = _join_evenly(pieces, max_pieces)
    return [InputShard(str(path), start, end, first, lines) for start, end, first, lines in pieces]


_CHUNK = 1 << 20
Piece = tuple[int, int, int, int]  # (start byte, end byte, first line, lines)


class _Cutter:
    """Finds where pieces end in a stream of chunks: after the `max_lines`-th line of a piece, or
    after the line holding its byte `start + max_bytes` (the first piece line to go past
    `max_bytes`), whichever comes first."""

    def __init__(self, max_lines: int | None, max_bytes: int | None):
        self.max_lines, self.max_bytes = max_lines, max_bytes
        self.pieces: list[Piece] = []
        self.offset = 0  # bytes seen
        self.start, self.first_line, self.lines = 0, 1, 0  # the open piece
        self.last_byte = b"\n"

    def feed(self, chunk: bytes) -> None:
        ends = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10) + self.offset  # newline offsets
        i = 0
        while i < len(ends):
            cut = len(ends)
            if self.max_lines is not None:
                cut = min(cut, i + self.max_lines - self.lines - 1)
            if self.max_bytes is not None:
                cut = min(cut, i + int(np.searchsorted(ends[i:], self.start + self.max_bytes)))
            if cut >= len(ends):
                break
            end = int(ends[cut]) + 1
            lines = self.lines + cut - i + 1
            self.pieces.append((self.start, end, self.first_line, lines))
            self.start, self.first_line, self.lines = end, self.first_line + lines, 0
            i = cut + 1
        self.lines += len(ends) - i
        self.offset += len(chunk)
        self.last_byte = chunk[-1:]

    def finish(self) -> list[Piece]:
        if self.offset > self.start:  # the rest (a last line without a newline counts as one)
            lines = self.lines + (self.last_byte != b"\n")
            self.pieces.append((self.start, self.offset, self.first_line, lines))
        return self.pieces or [(0, 0, 1, 0)]  # an empty file


def _join_evenly(pieces: list[Piece], n: int) -> list[Piece]:
    """`pieces` joined into `n` runs of neighbours, as even in count as they can be."""
    runs = [pieces[len(pieces) * k // n : len(pieces) * (k + 1) // n] for k in range(n)]
    return [(run[0][0], run[-1][1], run[0][2], sum(p[3] for p in run)) for run in runs]


def read_input(shard: InputShard) -> Iterator[tuple[int | None, Document | None, BadInput | None, str]]:
    """(line number, document or None, problem or None, raw line) for each non-blank line of a
    dolma JSONL shard. Lines are decoded one by one, so a bad line (invalid UTF-8, bad JSON, no
    string `text`) is one problem and reading goes on; a file that cannot be opened or
    decompressed (not gzip, truncated, corrupt) ends with one problem whose line is None, after
    the documents before the damage. The caller records problems as rejects (or stops)."""
    path = Path(shard.path)
    if path.name.endswith(TEXT_SUFFIXES):  # a plain text file is one document
        rejects: list[BadInput] = []
        for doc in read_documents(path, rejects=rejects):
            yield 1, doc, None, ""
        for problem in rejects:
            yield problem.line, None, problem, ""
        return
    line_no = shard.first_line - 1
    try:
        for line_no, raw in _lines(shard):
            if not raw.strip():
                continue
            try:
                line = decode_line(raw, path, line_no)
            except BadInput as e:
                yield line_no, None, e, raw.decode("utf-8", errors="replace")
                continue
            try:
                doc = parse_document(line, path, line_no)
                _check_encodable(doc, path, line_no)
            except BadInput as e:
                yield line_no, None, e, line
                continue
            yield line_no, doc, None, line
    except READ_ERRORS as e:
        yield None, None, file_problem(path, e, line_no), ""


def _check_encodable(doc: Document, path: Path, line_no: int) -> None:
    """JSON may escape lone surrogates (\\ud800) that no UTF-8 output can hold: reject them here
    rather than fail the whole shard when the document is written."""
    try:
        doc.text.encode("utf-8")
        doc.id.encode("utf-8")
        doc.source.encode("utf-8")
        if doc.metadata:
            dumps(doc.metadata).encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadInput(path, line_no, f"document holds a lone surrogate ({e.reason}); not valid Unicode") from None


def _lines(shard: InputShard) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of the shard's lines; may raise one of READ_ERRORS. A piece that
    starts inside a compressed file is reached by decompressing up to it (see the module doc)."""
    stream, raw = open_bytes_counted(Path(shard.path))
    with stream:
        if shard.start and stream is raw:
            raw.seek(shard.start)
        elif shard.start:
            _skip(stream, shard.start)
        pos, end = shard.start, shard.end
        for line_no, line in enumerate(stream, start=shard.first_line):
            if end is not None and pos >= end:
                break
            pos += len(line)
            yield line_no, line


def _skip(stream: BinaryIO, n: int) -> None:
    """Read and drop `n` bytes (without splitting them into lines)."""
    while n > 0:
        chunk = stream.read(min(n, _CHUNK))
        if not chunk:
            raise EOFError(f"the stream ends {n:,} bytes before a piece counted in it starts: did the file change?")
        n -= len(chunk)


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a shard this package wrote (trusted: no per-line error handling)."""
    with open_text(path) as f:
        for line in f:
            yield json.loads(line)
