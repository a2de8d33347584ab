"""Reading documents in dolma's format: JSONL (optionally .gz or .zst), one object a line with
`id`, `text`, `source`; other fields are kept in `metadata`. A plain .txt file is one document.

Errors name the file and line, so a corrupt shard can be found and fixed.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from lmforge.errors import LmforgeError

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst")


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
    """One JSONL line → Document, or LmforgeError naming file:line and what is wrong."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise LmforgeError(f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict):
        raise LmforgeError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
    text = row.pop("text", None)
    if not isinstance(text, str):
        problem = "has no 'text' field" if text is None else f"'text' is {type(text).__name__}, not a string"
        raise LmforgeError(f"{path}:{line_no}: document {problem}")
    doc_id = row.pop("id", None)
    source = row.pop("source", None)
    metadata = row.pop("metadata", None) or {}
    if not isinstance(metadata, dict):
        raise LmforgeError(f"{path}:{line_no}: 'metadata' must be a JSON object, got {type(metadata).__name__}")
    metadata.update(row)
    return Document(
        id=str(doc_id) if doc_id is not None else f"{path.name}:{line_no}",
        text=text,
        source=str(source) if source is not None else path.name.split(".")[0],
        metadata=metadata,
    )


def read_documents(path: str | Path) -> Iterator[Document]:
    """Documents of one file, in order. Blank lines are skipped."""
    path = Path(path)
    if path.name.endswith(TEXT_SUFFIXES):
        with open_text(path) as f:
            yield Document(id=path.name, text=f.read(), source=path.name.split(".")[0])
        return
    with open_text(path) as f:
        try:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    yield parse_document(line, path, line_no)
        except (UnicodeDecodeError, EOFError, OSError) as e:
            raise LmforgeError(f"{path}: cannot be read as UTF-8 text ({e})") from None
