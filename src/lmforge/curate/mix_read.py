"""Pass 1 of `lmforge data mix`: read every source's documents once, in `expand_paths` order,
and keep per document only its token count, an output-size estimate and its selection hash
(`mix_select.SourceIndex`). Also the line reader that the gathering pass reads the same
documents back with (`iter_records`, `parse_record`)."""

from __future__ import annotations

import dataclasses
import logging
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lmforge.curate.mix_attributes import (
    AttributeRows,
    document_attributes,
    eligible,
    nan_if_none,
    score_of,
    selection_summary,
)
from lmforge.curate.mix_config import MixConfig
from lmforge.curate.mix_select import SourceIndex, doc_hash, seed_key
from lmforge.curate.select import SelectConfig
from lmforge.data.documents import (
    READ_ERRORS,
    TEXT_SUFFIXES,
    BadInput,
    Document,
    decode_line,
    file_problem,
    open_bytes_counted,
    parse_document,
    text_document,
)
from lmforge.data.split import split_key
from lmforge.data.tokenizer import TokenCounter

log = logging.getLogger(__name__)

_BATCH = 256  # documents per tokenizer call while counting


# -- reading ------------------------------------------------------------------------------------


def iter_records(
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


def parse_record(path: Path, line_no: int, payload: str) -> Document:
    """The document of one `iter_records` record (a .txt file's is named after the file)."""
    if path.name.endswith(TEXT_SUFFIXES):
        return text_document(payload, path)
    return parse_document(payload, path, line_no)


# -- pass 1: count ------------------------------------------------------------------------------


def count_sources(
    config: MixConfig,
    files: list[list[Path]],
    counter: TokenCounter,
    progress: bool,
    rejects: list[BadInput] | None = None,
) -> list[SourceIndex]:
    """Count every source's documents. Bad lines and unreadable files are appended to `rejects`
    (None, i.e. `strict`: they raise BadInput)."""
    key = seed_key(config.seed)
    split = config.split
    total_bytes = sum(f.stat().st_size for fs in files for f in fs)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="mix: count", disable=not progress)
    indexes: list[SourceIndex] = []
    offset = 0
    done = 0
    try:
        for source, source_files in zip(config.sources, files):
            tokens, est, hashes, file_docs, file_skips = array("q"), array("q"), array("Q"), [], []
            keys = array("Q")  # split keys, with a held-out split
            texts: list[str] = []
            scoring = _Scores(source.select) if source.select else None
            for path in source_files:
                n_before = len(hashes)
                rows = AttributeRows(path) if scoring is not None else None

                def report(pos: int, base: int = done) -> None:
                    bar.update(base + pos - bar.n)

                n_rejects = len(rejects) if rejects is not None else 0
                for line_no, payload in iter_records(path, report, rejects):
                    try:
                        doc = parse_record(path, line_no, payload)
                    except BadInput as e:
                        if rejects is None:
                            raise
                        rejects.append(e)
                        continue
                    hashes.append(doc_hash(key, source.name, doc.id, len(hashes)))
                    if split is not None:
                        keys.append(split_key(doc.id, split.seed))
                    est.append(len(payload) + 1)
                    texts.append(doc.text)
                    if scoring is not None:
                        scoring.add(doc, line_no, document_attributes(doc, rows, line_no))
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
            index = SourceIndex(
                name=source.name,
                files=source_files,
                file_docs=file_docs,
                file_skips=file_skips,
                tokens=np.frombuffer(tokens, dtype=np.int64).copy() if tokens else np.zeros(0, np.int64),
                est_bytes=np.frombuffer(est, dtype=np.int64).copy() if est else np.zeros(0, np.int64),
                hashes=np.frombuffer(hashes, dtype=np.uint64).copy() if hashes else np.zeros(0, np.uint64),
                offset=offset,
                split_keys=np.array(keys, dtype=np.uint64) if split is not None else None,
            )
            if scoring is not None:
                index = scoring.apply(index, key, f"sources[{len(indexes)}] ({source.name})")
            offset += index.n_docs
            indexes.append(index)
    finally:
        bar.close()
    return indexes


class _Scores:
    """What counting keeps of a source with `select:` conditions, per document: its id, line
    number and each condition's score; `apply` then leaves out the documents that fail."""

    def __init__(self, conditions: list[SelectConfig]):
        self.conditions = conditions
        self.ids: list[str] = []
        self.lines = array("q")
        self.values = [array("d") for _ in conditions]

    def add(self, doc: Document, line_no: int, attributes: dict) -> None:
        self.ids.append(doc.id)
        self.lines.append(line_no)
        for cond, values in zip(self.conditions, self.values):
            values.append(nan_if_none(score_of(attributes, cond.attribute)))

    def apply(self, index: SourceIndex, key: bytes, where: str) -> SourceIndex:
        """The source without the documents that fail a condition: they join its files' skipped
        lines (so gathering passes them over) and positions, hence hashes, count the rest only."""
        ids = np.array(self.ids, dtype=np.str_)
        scores = [np.frombuffer(v, dtype=np.float64) for v in self.values]
        keep, conditions = eligible(self.conditions, scores, ids, index.tokens, where)
        lines = np.frombuffer(self.lines, dtype=np.int64)
        skips, docs, start = [], [], 0
        for n, skip in zip(index.file_docs, index.file_skips):
            part = slice(start, start + n)
            skips.append(skip | frozenset(lines[part][~keep[part]].tolist()))
            docs.append(int(keep[part].sum()))
            start += n
        kept_ids = [self.ids[i] for i in np.flatnonzero(keep)]
        hashes = np.fromiter((doc_hash(key, index.name, d, i) for i, d in enumerate(kept_ids)), dtype=np.uint64,
                             count=len(kept_ids))  # fmt: skip
        return dataclasses.replace(
            index, file_docs=docs, file_skips=skips, tokens=index.tokens[keep], est_bytes=index.est_bytes[keep],
            hashes=hashes, split_keys=index.split_keys[keep] if index.split_keys is not None else None,
            selection=selection_summary(keep, index.tokens, conditions))  # fmt: skip
