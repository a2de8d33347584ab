"""`lmforge data tokenize`: documents → token files (see `token_files` for the layout).

Work is split into chunks of raw lines that worker processes parse and encode; the parent
only writes, in input order, so the output is the same for any number of workers. The
result is built in a hidden sibling folder and renamed into place at the end: an
interrupted run leaves nothing that looks finished.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lmforge import __version__
from lmforge.data.documents import TEXT_SUFFIXES, expand_paths, open_text_counted, parse_document
from lmforge.data.token_files import FORMAT, META_FILE, token_dtype
from lmforge.data.tokenizer import Tokenizer, load_tokenizer
from lmforge.errors import LmforgeError
from lmforge.fsutil import staged_folder

CHUNK_BYTES = 1 << 20
"""Raw text per work item: big enough to amortise process hand-off, small enough to balance."""


@dataclass
class EncodedChunk:
    path: str  # the input file it came from
    tokens: np.ndarray  # every document's ids followed by EOS, concatenated
    lengths: np.ndarray  # ids per document, EOS excluded
    ids: list[str]
    sources: list[str]
    text_bytes: int  # uncompressed UTF-8 bytes of the chunk's lines
    input_pos: int  # bytes of the input files consumed once this chunk is done (for progress)


# -- worker side ------------------------------------------------------------------------------

_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_json: str, eos_token: str) -> None:
    global _worker_tokenizer  # one tokenizer per worker process, built once
    # Each worker encodes single-threaded: the parallelism is across processes. Set before the
    # tokenizers thread pool first runs in this (fresh, spawned) process.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import tokenizers

    _worker_tokenizer = Tokenizer(tokenizers.Tokenizer.from_str(tokenizer_json), eos_token=eos_token)


def _encode_chunk(item: tuple[str, int, list[str], int]) -> EncodedChunk:
    assert _worker_tokenizer is not None, "worker started without _init_worker"
    return encode_chunk(_worker_tokenizer, item, threads=1)


def encode_chunk(tok: Tokenizer, item: tuple[str, int, list[str], int], threads: int | None = None) -> EncodedChunk:
    """Parse and encode one chunk of raw lines (errors name file and line)."""
    path_str, first_line, lines, input_pos = item
    path = Path(path_str)
    if path.name.endswith(TEXT_SUFFIXES):
        docs = [parse_document(json.dumps({"id": path.name, "text": "".join(lines)}), path, 1)]
    else:
        docs = [parse_document(line, path, first_line + i) for i, line in enumerate(lines) if line.strip()]
    encoded = tok.encode_batch([d.text for d in docs], threads=threads)
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    flat = np.empty(int(lengths.sum()) + len(docs), dtype=np.int64)
    pos = 0
    for ids in encoded:
        flat[pos : pos + len(ids)] = ids
        flat[pos + len(ids)] = tok.eos_token_id
        pos += len(ids) + 1
    return EncodedChunk(
        path=path_str,
        tokens=flat,
        lengths=lengths,
        ids=[d.id for d in docs],
        sources=[d.source for d in docs],
        text_bytes=sum(len(line.encode()) for line in lines),
        input_pos=input_pos,
    )


# -- parent side ------------------------------------------------------------------------------


def _chunks(files: list[Path]) -> Iterator[tuple[str, int, list[str], int]]:
    """(file, first line number, raw lines, input bytes consumed so far) in input order.
    A .txt file is one document, so it is one chunk whatever its size."""
    done = 0
    for path in files:
        text, raw = open_text_counted(path)
        with text:
            if path.name.endswith(TEXT_SUFFIXES):
                yield str(path), 1, [text.read()], done + path.stat().st_size
            else:
                lines: list[str] = []
                size, first = 0, 1
                for line_no, line in enumerate(text, start=1):
                    lines.append(line)
                    size += len(line)
                    if size >= CHUNK_BYTES:
                        yield str(path), first, lines, done + raw.tell()
                        lines, size, first = [], 0, line_no + 1
                if lines:
                    yield str(path), first, lines, done + path.stat().st_size
        done += path.stat().st_size


@dataclass
class _PartWriter:
    """Appends chunks of one input file to its part files."""

    folder: Path
    index: int
    dtype: np.dtype
    source_file: str

    def __post_init__(self) -> None:
        self.name = f"part-{self.index:05d}"
        self.tokens = open(self.folder / f"{self.name}.npy", "wb")
        self.docs_raw = gzip.open(self.folder / f"{self.name}.csv.gz", "wt", newline="")
        self.docs = csv.writer(self.docs_raw)
        self.docs.writerow(["start", "end", "id", "source"])
        self.num_tokens = 0
        self.num_documents = 0
        self.hash = hashlib.blake2b(digest_size=16)

    def write(self, chunk: EncodedChunk) -> None:
        data = chunk.tokens.astype(self.dtype).tobytes()
        self.tokens.write(data)
        self.hash.update(data)
        start = self.num_tokens
        for doc_id, source, length in zip(chunk.ids, chunk.sources, chunk.lengths.tolist()):
            self.docs.writerow([start, start + length, doc_id, source])
            start += length + 1
        self.num_tokens += len(chunk.tokens)
        self.num_documents += len(chunk.ids)

    def close(self) -> dict:
        for f in (self.tokens, self.docs_raw):
            f.flush()
            f.close()
        return {
            "tokens": f"{self.name}.npy",
            "documents": f"{self.name}.csv.gz",
            "num_tokens": self.num_tokens,
            "num_documents": self.num_documents,
            "source_file": self.source_file,
            "hash": self.hash.hexdigest(),
        }


def tokenize(
    inputs: list[str | Path],
    tokenizer: str | Path | Tokenizer,
    out_dir: str | Path,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Tokenize every document under `inputs` into `out_dir`; returns the written meta.json."""
    out_dir = Path(out_dir)
    if (out_dir / META_FILE).exists() and not overwrite:
        raise LmforgeError(f"{out_dir} already holds tokenized data; choose a new folder or pass --overwrite")
    files = expand_paths(list(inputs))
    if not files:
        raise LmforgeError(f"no document files found in {', '.join(map(str, inputs))}")
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    dtype = token_dtype(tok.vocab_size)
    if workers is None:
        # The tiktoken fast path is already multi-threaded (and releases the GIL): one process
        # avoids spawning workers that would each rebuild it. HF encodes one process per core.
        workers = 1 if tok.fast_encoder is not None else os.cpu_count() or 1
    total_bytes = sum(f.stat().st_size for f in files)

    start_time = time.perf_counter()
    with staged_folder(out_dir) as staging:
        parts, text_bytes = _run(files, tok, staging, dtype, workers, total_bytes, progress)
        num_tokens = sum(p["num_tokens"] for p in parts)
        num_documents = sum(p["num_documents"] for p in parts)
        if num_documents == 0:
            raise LmforgeError(f"the corpus is empty: no documents in {', '.join(map(str, files))}")
        content_hash = hashlib.sha256("".join(p["hash"] for p in parts).encode()).hexdigest()[:16]
        meta = {
            "format": FORMAT,
            "dtype": dtype.name,
            "num_tokens": num_tokens,
            "num_documents": num_documents,
            "fingerprint": content_hash,
            "tokenizer": {
                "name": tok.name,
                "fingerprint": tok.fingerprint,
                "vocab_size": tok.vocab_size,
                "eos_token_id": tok.eos_token_id,
            },
            "parts": parts,
            "created_by": f"lmforge {__version__}",
            "seconds": round(time.perf_counter() - start_time, 3),
            "input_bytes": total_bytes,
            "text_bytes": text_bytes,
        }
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _run(
    files: list[Path], tok: Tokenizer, staging: Path, dtype: np.dtype, workers: int, total_bytes: int, progress: bool
) -> tuple[list[dict], int]:
    parts: list[dict] = []
    text_bytes = 0
    writer: _PartWriter | None = None
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenize", disable=not progress)
    pool = None
    if workers > 1:
        # 'spawn' because forking a parent whose tokenizers thread pool has run can deadlock.
        pool = mp.get_context("spawn").Pool(workers, _init_worker, (tok.hf.to_str(), tok.eos_token))
    try:
        if pool is None:
            results = (encode_chunk(tok, item) for item in _chunks(files))
        else:
            results = pool.imap(_encode_chunk, _chunks(files), chunksize=1)
        # imap keeps input order: chunks of one file arrive consecutively, file by file.
        for chunk in results:
            if writer is None or chunk.path != writer.source_file:
                if writer is not None:
                    parts.append(writer.close())
                writer = _PartWriter(staging, len(parts), dtype, chunk.path)
            writer.write(chunk)
            bar.update(chunk.input_pos - bar.n)
            text_bytes += chunk.text_bytes
        if writer is not None:
            parts.append(writer.close())
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return parts, text_bytes

