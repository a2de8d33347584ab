"""Reading and writing the JSONL shards of a curation run.

Outputs are gzip with no file name and mtime 0 in the header, so a resumed run writes the same
bytes as an uninterrupted one. Every file is written under a temporary name and renamed into
place, so a file that exists is complete.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from lmforge.data.documents import (
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
    """A whole input file, or lines [first_line, ...) in bytes [start, end) of an uncompressed one."""

    path: str
    start: int = 0
    end: int | None = None
    first_line: int = 1

    def __str__(self) -> str:
        return self.path if self.end is None else f"{self.path}@{self.start}-{self.end}"


def split_inputs(files: list[Path], shard_mb: float | None) -> list[InputShard]:
    """One shard per file, except that uncompressed JSONL files larger than `shard_mb` are cut
    at line boundaries into pieces of about that size (compressed files cannot be entered in
    the middle, so they stay whole: store big inputs as several files)."""
    shards: list[InputShard] = []
    limit = int(shard_mb * 1_000_000) if shard_mb else None
    for f in files:
        size = f.stat().st_size
        if limit is None or size <= limit or not f.name.endswith((".jsonl", ".json")):
            shards.append(InputShard(str(f)))
            continue
        with open(f, "rb") as fh:
            start, line = 0, 1
            while start < size:
                fh.seek(min(start + limit, size))
                fh.readline()  # finish the line the cut fell in
                end = min(fh.tell(), size) if start + limit < size else size
                shards.append(InputShard(str(f), start, end, line))
                fh.seek(start)
                line += fh.read(end - start).count(b"\n")
                start = end
    return shards


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
    """(line number, raw bytes) of the shard's lines; may raise one of READ_ERRORS."""
    if shard.end is None:
        stream, _ = open_bytes_counted(Path(shard.path))
        with stream:
            yield from enumerate(stream, start=1)
        return
    with open(shard.path, "rb") as f:
        f.seek(shard.start)
        pos, line_no = shard.start, shard.first_line
        while pos < shard.end:
            raw = f.readline()
            if not raw:
                break
            pos += len(raw)
            yield line_no, raw
            line_no += 1


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a shard this package wrote (trusted: no per-line error handling)."""
    with open_text(path) as f:
        for line in f:
            yield json.loads(line)
