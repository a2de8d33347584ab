"""Reading documents in dolma's format: JSONL (optionally .gz or .zst), one object a line with
`id`, `text`, `source`; other fields are kept in `metadata`. A plain .txt file is one document.

Errors name the file and line, so a corrupt shard can be found and fixed. Lines are read as
bytes and decoded one by one, so a reader that tolerates bad input (`read_documents(path,
rejects=[...])`, `tokenize`) loses one line to an invalid byte, not the file; a file that cannot
be opened or decompressed at all (not gzip, not zstd, cut short) is one `BadInput` with no line,
after the lines before the damage.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from lmforge.errors import LmforgeError

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst")


READ_ERRORS = (OSError, EOFError, zlib.error)
"""What opening or decompressing a file raises when the file itself is bad (gzip.BadGzipFile and
our zstd errors are OSErrors; a truncated stream is an EOFError)."""


class BadInput(LmforgeError):
    """A line (`line` set) or a whole file (`line` None) of input that cannot be used. `str()` is
    the one-line error, `file:line: reason`; tolerant readers collect these as rejects."""

    def __init__(self, file: str | Path, line: int | None, reason: str):
        self.file, self.line, self.reason = str(file), line, reason
        super().__init__(f"{file}:{line}: {reason}" if line is not None else f"{file}: {reason}")

    def __reduce__(self):  # crosses process boundaries with its fields (worker → parent)
        return (BadInput, (self.file, self.line, self.reason))

    def to_json(self) -> dict:
        return {"file": self.file, "line": self.line, "reason": self.reason}


@dataclass
class Document:
    id: str
    text: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)


def open_text(path: str | Path) -> TextIO:
    """Open a text file for reading, decompressing .gz and .zst by suffix."""
    return open_text_counted(Path(path))[0]


def open_text_counted(path: Path) -> tuple[TextIO, BinaryIO]:
    """A text reader over `path` plus the raw file under it, whose `tell()` says how far into
    the (possibly compressed) file reading has got: progress bars use it."""
    raw = open(path, "rb")
    if path.suffix == ".gz":
        stream: BinaryIO = gzip.GzipFile(fileobj=raw)  # type: ignore[assignment]
    elif path.suffix == ".zst":
        stream = io.BufferedReader(_ZstdFrames(raw))  # type: ignore[assignment]
    else:
        stream = raw
    # newline="\n": JSONL lines end at \n only (a raw \r cannot occur inside a JSON string), so a
    # file reads the same whole or from a byte offset.
    return io.TextIOWrapper(stream, encoding="utf-8", newline="\n"), raw


def open_bytes_counted(path: Path) -> tuple[io.BufferedIOBase, io.BufferedReader]:
    """A binary reader over `path` (decompressed by suffix; iterate it for lines ending at b"\\n")
    plus the raw file under it, for `tell()`. Reading may raise one of READ_ERRORS."""
    raw = open(path, "rb")
    if path.suffix == ".gz":
        return gzip.GzipFile(fileobj=raw), raw
    if path.suffix == ".zst":
        return io.BufferedReader(_ZstdFrames(raw)), raw
    return raw, raw


def file_problem(path: Path, error: BaseException, lines_read: int) -> BadInput:
    """The one-line report for a file that failed to open or decompress after `lines_read` lines."""
    if isinstance(error, EOFError):
        return BadInput(path, None, f"truncated: the stream ends after line {lines_read} ({error})")
    if isinstance(error, gzip.BadGzipFile):
        return BadInput(path, None, f"not a gzip file ({error})")
    if isinstance(error, zlib.error):
        return BadInput(path, None, f"corrupt compressed data ({error}) after line {lines_read}")
    return BadInput(path, None, f"cannot be read ({error})")


def decode_line(raw: bytes, path: Path, line_no: int | None) -> str:
    """UTF-8 bytes → str, or BadInput naming the first invalid byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(path, line_no, f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None


def parse_line(raw: bytes, path: Path, line_no: int) -> Document:
    """One raw JSONL line → Document, or BadInput naming file:line and what is wrong."""
    return parse_document(decode_line(raw, path, line_no), path, line_no)


def text_document(text: str, path: Path) -> Document:
    """A whole .txt file as one document."""
    return Document(id=path.name, text=text, source=path.name.split(".")[0])


class _ZstdFrames(io.RawIOBase):
    """Decompresses every zstd frame of a file in turn (files made by concatenating streams
    are read whole) and raises if the file ends inside a frame: a truncated download must fail
    like a truncated .gz does, not silently yield the documents before the cut."""

    def __init__(self, raw: BinaryIO):
        import zstandard

        self._raw, self._zstd = raw, zstandard
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._in_frame = False  # bytes of the current frame have been consumed
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while not self._pending:
            chunk = self._raw.read(1 << 16)
            if not chunk:
                if self._in_frame:
                    raise EOFError("the zstd stream ends in the middle of a frame: truncated file?")
                return 0
            out = []
            while chunk:
                self._in_frame = True
                try:
                    out.append(self._frame.decompress(chunk))
                except self._zstd.ZstdError as e:
                    raise OSError(f"not valid zstd data ({e})") from None
                if not self._frame.eof:
                    break
                chunk = self._frame.unused_data  # the next frame starts in this chunk
                self._frame = self._zstd.ZstdDecompressor().decompressobj()
                self._in_frame = False
            self._pending = b"".join(out)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def is_document_file(path: Path) -> bool:
    return path.name.endswith(JSONL_SUFFIXES + TEXT_SUFFIXES)


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files named directly, plus every document file under named folders, sorted per folder."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_document_file(f)))
        elif p.exists():
            files.append(p)
        else:
            raise LmforgeError(f"{p}: no such file or folder")
    return files


def parse_document(line: str, path: Path, line_no: int) -> Document:
    """One JSONL line → Document, or BadInput naming file:line and what is wrong."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadInput(path, line_no, f"invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict):
        raise BadInput(path, line_no, f"expected a JSON object, got {type(row).__name__}")
    text = row.pop("text", None)
    if not isinstance(text, str):
        problem = "has no 'text' field" if text is None else f"'text' is {type(text).__name__}, not a string"
        raise BadInput(path, line_no, f"document {problem}")
    doc_id = row.pop("id", None)
    source = row.pop("source", None)
    metadata = row.pop("metadata", None) or {}
    if not isinstance(metadata, dict):
        raise BadInput(path, line_no, f"'metadata' must be a JSON object, got {type(metadata).__name__}")
    metadata.update(row)
    return Document(
        id=str(doc_id) if doc_id is not None else f"{path.name}:{line_no}",
        text=text,
        source=str(source) if source is not None else path.name.split(".")[0],
        metadata=metadata,
    )


def read_documents(path: str | Path, *, rejects: list[BadInput] | None = None) -> Iterator[Document]:
    """Documents of one file, in order. Blank lines are skipped.

    Without `rejects` the first bad line or unreadable file raises `BadInput` (file:line:
    reason). With a list, each bad line (invalid UTF-8, bad JSON, no string `text`) is
    appended to it and reading goes on with the next line; a file that cannot be opened or
    decompressed is appended once (line None) after the documents before the damage."""
    path = Path(path)

    def bad(error: BadInput) -> None:
        if rejects is None:
            raise error
        rejects.append(error)

    line_no = 0
    try:
        stream, _ = open_bytes_counted(path)
        with stream:
            if path.name.endswith(TEXT_SUFFIXES):
                data = stream.read()
                try:
                    text = decode_line(data, path, None)
                except BadInput as e:
                    bad(e)
                    return
                yield text_document(text, path)
                return
            for line_no, raw in enumerate(stream, start=1):
                if raw.strip():
                    try:
                        doc = parse_line(raw, path, line_no)
                    except BadInput as e:
                        bad(e)
                        continue
                    yield doc
    except READ_ERRORS as e:
        bad(file_problem(path, e, line_no))
