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

A held-out split (`validation`: a fraction or a count, `lmforge.data.split`) writes OUT/train and
OUT/val instead. Every document is tokenized once, into a scratch folder inside the staging
folder, exactly as without a split; then `split_tokens.route` copies each document's ids to its
side. Tokenizing first and routing after is what lets a count (the N smallest split keys) be
exact without reading any text twice; a fraction goes the same way so that both give one layout.
The input files are sorted first (by absolute path): the split's bytes do not depend on the
order inputs are named in, on sharding of the work or on the number of workers.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

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
from lmforge.data.split import SIDES, TRAIN, ValidationSplit
from lmforge.data.split_tokens import SourcePart, route, warn_split, write_split_meta
from lmforge.data.token_files import META_FILE, token_dtype
from lmforge.data.token_parts import PartWriter, id_hash, warn_duplicates, write_meta
from lmforge.data.tokenizer import Tokenizer, load_tokenizer
from lmforge.errors import LmforgeError
from lmforge.fsutil import staged_folder

log = logging.getLogger(__name__)

REJECTS_FILE = "rejects.jsonl"
SPLIT_SCRATCH = ".unsplit"
"""With a validation split: the folder inside the staging folder every document is tokenized
into before it is routed to train/ or val/ (deleted before the output is renamed into place)."""

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


def encode_texts(tok: Tokenizer, texts: list[str], threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The token stream of `texts` (each document's ids followed by EOS, concatenated, int64)
    and each document's length (EOS excluded). The one encoder of every token folder writer
    (`data tokenize` and a curate pipeline's `tokenize:`), so both write the same bytes."""
    encoded = tok.encode_batch(texts, threads=threads)
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    flat = np.empty(int(lengths.sum()) + len(texts), dtype=np.int64)
    pos = 0
    for ids in encoded:
        flat[pos : pos + len(ids)] = ids
        flat[pos + len(ids)] = tok.eos_token_id
        pos += len(ids) + 1
    return flat, lengths


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
    flat, lengths = encode_texts(tok, [d.text for d in docs], threads=threads)
    return EncodedChunk(
        path=item.path,
        tokens=flat,
        lengths=lengths,
        ids=[d.id for d in docs],
        sources=[d.source for d in docs],
        text_bytes=sum(map(len, lines)),
        input_pos=item.input_pos,
        id_hashes=np.array([id_hash(d.id) for d in docs], dtype=np.uint64),
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


def tokenize(
    inputs: list[str | Path],
    tokenizer: str | Path | Tokenizer,
    out_dir: str | Path,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    strict: bool = True,
    validation: ValidationSplit | None = None,
) -> dict:
    """Tokenize every document under `inputs` into `out_dir`; returns the written meta.json.

    `strict` (the default here; the CLI's is off) raises BadInput at the first bad line or
    unreadable file. Otherwise those are skipped, written to `out_dir/rejects.jsonl`, counted in
    meta.json (`rejected_lines`, `skipped_files`) and summed up in one warning line.

    With `validation`, `out_dir/train` and `out_dir/val` are written instead (each a token
    folder with the run's rejects.jsonl) and {"train": meta, "val": meta} is returned. The input
    files are then taken in sorted order (by absolute path), so the bytes of both sides do not
    depend on the order the inputs are given in; without a split the order given is kept."""
    out_dir = Path(out_dir)
    if _holds_tokens(out_dir) and not overwrite:
        raise LmforgeError(f"{out_dir} already holds tokenized data; choose a new folder or pass --overwrite")
    files = expand_paths(list(inputs))
    if not files:
        raise LmforgeError(f"no document files found in {', '.join(map(str, inputs))}")
    if validation is not None:
        files = sorted(files, key=lambda f: Path(os.path.abspath(f)))
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    dtype = token_dtype(tok.vocab_size)
    if workers is None:
        # The tiktoken fast path is already multi-threaded (and releases the GIL): one process
        # avoids spawning workers that would each rebuild it. HF encodes one process per core.
        workers = 1 if tok.fast_encoder is not None else os.cpu_count() or 1
    total_bytes = sum(f.stat().st_size for f in files)

    start_time = time.perf_counter()
    with staged_folder(out_dir) as staging:
        # With a split every document is first tokenized into a scratch folder, then routed.
        work = staging / SPLIT_SCRATCH if validation is not None else staging
        work.mkdir(exist_ok=True)
        parts, text_bytes, rejects, id_hashes = _run(files, tok, work, dtype, workers, total_bytes, progress, strict)
        num_documents = sum(p["num_documents"] for p in parts)
        skipped_files = sum(r.line is None for r in rejects)
        rejected_lines = len(rejects) - skipped_files
        if num_documents == 0:
            why = f" ({len(rejects)} bad lines or files; the first: {rejects[0]})" if rejects else ""
            raise LmforgeError(f"the corpus is empty: no documents in {', '.join(map(str, files))}{why}")
        facts = {"input_bytes": total_bytes, "text_bytes": text_bytes, "rejected_lines": rejected_lines,
                 "skipped_files": skipped_files}  # fmt: skip
        if validation is not None:
            written = _split(work, parts, validation, staging, tok, rejects, facts, start_time)
        else:
            _write_rejects(staging, rejects)
            meta, examples = write_meta(staging, tok, parts, id_hashes, seconds=time.perf_counter() - start_time,
                                        **facts)  # fmt: skip
    if validation is not None:
        warn_split(out_dir, written)
    else:
        warn_duplicates(out_dir, meta, examples)
    if rejects:
        files_, lines_ = _plural(skipped_files, "file"), _plural(rejected_lines, "line")
        where = out_dir / TRAIN if validation is not None else out_dir
        log.warning(f"skipped {files_} and {lines_}; see {where / REJECTS_FILE}")
    if validation is not None:
        return {side: meta for side, (meta, _) in written.items()}
    return meta


def _holds_tokens(folder: Path) -> bool:
    """A token folder, or a split of two, is there already."""
    return any((f / META_FILE).exists() for f in (folder, *(folder / side for side in SIDES)))


def _write_rejects(folder: Path, rejects: list[BadInput]) -> None:
    if rejects:
        with open(folder / REJECTS_FILE, "w") as f:
            f.writelines(json.dumps(r.to_json()) + "\n" for r in rejects)


def _split(
    work: Path,
    parts: list[dict],
    validation: ValidationSplit,
    staging: Path,
    tok: Tokenizer,
    rejects: list[BadInput],
    facts: dict,
    start_time: float,
) -> dict[str, tuple[dict, list[str]]]:
    """Route the scratch folder's parts into staging/train and staging/val, each with the run's
    rejects and meta.json (`facts`: the run's input counts, the same on both sides); the scratch
    folder is deleted."""

    sources = [SourcePart(work / p["tokens"], work / p["documents"], p["num_tokens"], p["source_file"]) for p in parts]
    sides = route(sources, validation, staging, token_dtype(tok.vocab_size))
    shutil.rmtree(work)
    for side in sides.values():
        _write_rejects(side.folder, rejects)
    facts = {"seconds": time.perf_counter() - start_time, **facts}
    return write_split_meta(sides, validation, tok, facts)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _run(
    files: list[Path], tok: Tokenizer, staging: Path, dtype: np.dtype, workers: int, total_bytes: int, progress: bool,
    strict: bool,
) -> tuple[list[dict], int, list[BadInput], np.ndarray]:
    parts: list[dict] = []
    text_bytes = 0
    rejects: list[BadInput] = []
    id_hashes: list[np.ndarray] = []
    writer: PartWriter | None = None
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
                writer = PartWriter(staging, f"part-{len(parts):05d}", dtype, chunk.path)
            if chunk.ids:
                writer.add(chunk.tokens, chunk.lengths, chunk.ids, chunk.sources)
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

