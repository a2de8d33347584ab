"""`lmforge data tokenize`: documents → token files (see `token_files` for the layout).

Work is split into chunks of raw lines that worker processes parse and encode; the parent
only writes, in input order, so the output is the same for any number of workers. The
result is built in a hidden sibling folder and renamed into place at the end: an
interrupted run leaves nothing that looks finished.

Bad input does not stop a run unless `strict`: a bad line (invalid UTF-8, bad JSON, no string
`text`) and a file that cannot be read (not gzip/zstd, truncated: the lines before the cut are
kept) become rows of `rejects.jsonl` in the output folder (file, line — null for a whole file —
and reason), counted in meta.json; workers hand them back with their chunk, so they arrive in
input order whatever the number of workers. Duplicate document ids are counted and reported.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lmforge import __version__
from lmforge.data.documents import (
    READ_ERRORS,
    TEXT_SUFFIXES,
    BadInput,
    decode_line,
    expand_paths,
    file_problem,
    open_bytes_counted,
    parse_line,
    text_document,
)
from lmforge.data.token_files import FORMAT, META_FILE, token_dtype
from lmforge.data.tokenizer import Tokenizer, load_tokenizer
from lmforge.errors import LmforgeError
from lmforge.fsutil import staged_folder

log = logging.getLogger(__name__)

REJECTS_FILE = "rejects.jsonl"

CHUNK_BYTES = 1 << 20
"""Raw text per work item: big enough to amortise process hand-off, small enough to balance."""


@dataclass
class WorkItem:
    path: str  # the input file
    first_line: int  # line number of lines[0]
    lines: list[bytes]  # raw lines (a .txt file: its whole content, one item)
    input_pos: int  # bytes of the input files consumed once this chunk is done (for progress)
    strict: bool  # raise at the first bad line instead of rejecting it
    problem: BadInput | None = None  # the file could not be read (on) from here


@dataclass
class EncodedChunk:
    path: str  # the input file it came from
    tokens: np.ndarray  # every document's ids followed by EOS, concatenated
    lengths: np.ndarray  # ids per document, EOS excluded
    ids: list[str]
    sources: list[str]
    text_bytes: int  # uncompressed UTF-8 bytes of the chunk's lines
    input_pos: int  # bytes of the input files consumed once this chunk is done (for progress)
    id_hashes: np.ndarray  # 64-bit hash of each id, to count duplicates without holding the ids
    rejects: list[BadInput]  # bad lines (and the unreadable file) of this chunk, in order


def _id_hash(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


# -- worker side ------------------------------------------------------------------------------

_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_json: str, eos_token: str) -> None:
    global _worker_tokenizer  # one tokenizer per worker process, built once
    # Each worker encodes single-threaded: the parallelism is across processes. Set before the
    # tokenizers thread pool first runs in this (fresh, spawned) process.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import tokenizers

    _worker_tokenizer = Tokenizer(tokenizers.Tokenizer.from_str(tokenizer_json), eos_token=eos_token)


def _encode_chunk(item: WorkItem) -> EncodedChunk:
    assert _worker_tokenizer is not None, "worker started without _init_worker"
    return encode_chunk(_worker_tokenizer, item, threads=1)


def encode_chunk(tok: Tokenizer, item: WorkItem, threads: int | None = None) -> EncodedChunk:
    """Parse and encode one chunk of raw lines. A bad line is a reject (or, `strict`, raises
    BadInput naming file and line)."""
    path, lines = Path(item.path), item.lines
    rejects: list[BadInput] = []
    docs = []
    for i, raw in enumerate(lines):
        try:
            if path.name.endswith(TEXT_SUFFIXES):
                docs.append(text_document(decode_line(raw, path, None), path))
            elif raw.strip():
                docs.append(parse_line(raw, path, item.first_line + i))
        except BadInput as e:
            if item.strict:
                raise
            rejects.append(e)
    if item.problem is not None:
        if item.strict:
            raise item.problem
        rejects.append(item.problem)
    encoded = tok.encode_batch([d.text for d in docs], threads=threads)
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    flat = np.empty(int(lengths.sum()) + len(docs), dtype=np.int64)
    pos = 0
    for ids in encoded:
        flat[pos : pos + len(ids)] = ids
        flat[pos + len(ids)] = tok.eos_token_id
        pos += len(ids) + 1
    return EncodedChunk(
        path=item.path,
        tokens=flat,
        lengths=lengths,
        ids=[d.id for d in docs],
        sources=[d.source for d in docs],
        text_bytes=sum(map(len, lines)),
        input_pos=item.input_pos,
        id_hashes=np.array([_id_hash(d.id) for d in docs], dtype=np.uint64),
        rejects=rejects,
    )


# -- parent side ------------------------------------------------------------------------------


def _chunks(files: list[Path], strict: bool) -> Iterator[WorkItem]:
    """Work items in input order. A .txt file is one document, so it is one item whatever its
    size. A file that fails to open or decompress ends with an item carrying the problem, after
    the lines read before it (a truncated .gz keeps the lines before the cut)."""
    done = 0
    for path in files:
        size_on_disk = path.stat().st_size
        lines: list[bytes] = []
        size, first, line_no = 0, 1, 0
        problem = None
        try:
            stream, raw = open_bytes_counted(path)
            with stream:
                if path.name.endswith(TEXT_SUFFIXES):
                    lines = [stream.read()]
                else:
                    for line_no, line in enumerate(stream, start=1):
                        lines.append(line)
                        size += len(line)
                        if size >= CHUNK_BYTES:
                            yield WorkItem(str(path), first, lines, done + raw.tell(), strict)
                            lines, size, first = [], 0, line_no + 1
        except READ_ERRORS as e:
            problem = file_problem(path, e, line_no)
            if path.name.endswith(TEXT_SUFFIXES):
                lines = []
        if lines or problem is not None:
            yield WorkItem(str(path), first, lines, done + size_on_disk, strict, problem)
        done += size_on_disk


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
    strict: bool = True,
) -> dict:
    """Tokenize every document under `inputs` into `out_dir`; returns the written meta.json.

    `strict` (the default here; the CLI's is off) raises BadInput at the first bad line or
    unreadable file. Otherwise those are skipped, written to `out_dir/rejects.jsonl`, counted in
    meta.json (`rejected_lines`, `skipped_files`) and summed up in one warning line."""
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
        parts, text_bytes, rejects, id_hashes = _run(files, tok, staging, dtype, workers, total_bytes, progress, strict)
        num_tokens = sum(p["num_tokens"] for p in parts)
        num_documents = sum(p["num_documents"] for p in parts)
        skipped_files = sum(r.line is None for r in rejects)
        rejected_lines = len(rejects) - skipped_files
        if num_documents == 0:
            why = f" ({len(rejects)} bad lines or files; the first: {rejects[0]})" if rejects else ""
            raise LmforgeError(f"the corpus is empty: no documents in {', '.join(map(str, files))}{why}")
        if rejects:
            with open(staging / REJECTS_FILE, "w") as f:
                f.writelines(json.dumps(r.to_json()) + "\n" for r in rejects)
        duplicates, examples = _duplicate_ids(staging, parts, id_hashes)
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
            "rejected_lines": rejected_lines,
            "skipped_files": skipped_files,
            "duplicate_ids": duplicates,
        }
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if duplicates:
        shown = ", ".join(map(repr, examples)) + (", …" if len(examples) < duplicates else "")
        log.warning(
            f"{out_dir}: {duplicates} documents reuse an id already seen in this folder ({shown}); "
            "which documents a step saw will be ambiguous for those ids"
        )
    if rejects:
        files_, lines_ = _plural(skipped_files, "file"), _plural(rejected_lines, "line")
        log.warning(f"skipped {files_} and {lines_}; see {out_dir / REJECTS_FILE}")
    return meta


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


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
                if _id_hash(row["id"]) in candidates:
                    counts[row["id"]] = counts.get(row["id"], 0) + 1
    repeated = [doc_id for doc_id, n in counts.items() if n > 1]
    return sum(counts[i] - 1 for i in repeated), repeated[:show]


def _run(
    files: list[Path], tok: Tokenizer, staging: Path, dtype: np.dtype, workers: int, total_bytes: int, progress: bool,
    strict: bool,
) -> tuple[list[dict], int, list[BadInput], np.ndarray]:
    parts: list[dict] = []
    text_bytes = 0
    rejects: list[BadInput] = []
    id_hashes: list[np.ndarray] = []
    writer: _PartWriter | None = None
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenize", disable=not progress)
    pool = None
    if workers > 1:
        # 'spawn' because forking a parent whose tokenizers thread pool has run can deadlock.
        pool = mp.get_context("spawn").Pool(workers, _init_worker, (tok.hf.to_str(), tok.eos_token))
    try:
        if pool is None:
            results = (encode_chunk(tok, item) for item in _chunks(files, strict))
        else:
            results = pool.imap(_encode_chunk, _chunks(files, strict), chunksize=1)
        # imap keeps input order: chunks of one file arrive consecutively, file by file.
        for chunk in results:
            for r in chunk.rejects:
                if r.line is None:
                    log.warning(f"skipped {r}")  # one line per unreadable file, as it happens
            rejects.extend(chunk.rejects)
            id_hashes.append(chunk.id_hashes)
            if chunk.ids and (writer is None or chunk.path != writer.source_file):
                if writer is not None:
                    parts.append(writer.close())
                writer = _PartWriter(staging, len(parts), dtype, chunk.path)
            if chunk.ids:
                writer.write(chunk)
            bar.update(chunk.input_pos - bar.n)
            text_bytes += chunk.text_bytes
        if writer is not None:
            parts.append(writer.close())
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    all_hashes = np.concatenate(id_hashes) if id_hashes else np.zeros(0, dtype=np.uint64)
    return parts, text_bytes, rejects, all_hashes

