"""`tokenize:` as a curate pipeline's last step: the kept documents become training token files
(`data tokenize`'s format: memmap parts, document indexes, meta.json) shard by shard, inside the
last stage's tasks, so a web-scale run never re-reads its curated JSONL to tokenize it.

Each task writes its shard's part beside the documents file with `data tokenize`'s own encoder
and part writer (`ShardTokens`), before the task's marker, so a killed run redoes only the
shards without one. After all shards the parent assembles the token folder (`write_tokens`):
the same bytes `lmforge data tokenize OUTPUT/documents` writes.

With a held-out split (`validation: 0.01` or `validation_docs: N`) the tasks write the same
unsplit shard parts, and the parent routes their documents into `out/train` and `out/val` with
`data tokenize --validation`'s own router (`lmforge.data.split_tokens`): a count needs every
document's split key, which only the parent sees; the texts are not read again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.curate.config import CurateConfig, TokenizeConfig
from lmforge.curate.layout import Layout
from lmforge.curate.steps import CurateDocument
from lmforge.data.split import ValidationSplit
from lmforge.data.split_tokens import SourcePart, route, warn_split, write_split_meta
from lmforge.data.token_files import token_dtype
from lmforge.data.token_parts import PartWriter, id_hash, warn_duplicates, write_meta
from lmforge.data.tokenize import CHUNK_BYTES, encode_texts
from lmforge.data.tokenizer import Tokenizer, load_tokenizer
from lmforge.errors import ConfigError
from lmforge.fsutil import staged_folder

log = logging.getLogger(__name__)


@lru_cache(maxsize=2)
def token_tokenizer(spec: str) -> Tokenizer:
    """The `tokenize:` tokenizer, loaded once per worker process."""
    return load_tokenizer(spec)


class ShardTokens:
    """One shard's token part, written by the last stage's task beside its documents: documents
    are encoded about `CHUNK_BYTES` of JSONL at a time with `data tokenize`'s encoder and part
    writer, so the part's bytes are those `data tokenize` writes for the shard's documents file."""

    def __init__(self, config: CurateConfig, layout: Layout, shard: int):
        assert config.tokenize is not None
        self.tok = token_tokenizer(config.tokenize.tokenizer)
        self.base = layout.token_part(shard)
        self.base.parent.mkdir(parents=True, exist_ok=True)
        dtype = token_dtype(self.tok.vocab_size)
        self.writer = PartWriter(self.base.parent, self.base.name, dtype, str(layout.documents(shard)), suffix=".tmp")
        self.documents_path = layout.documents(shard)
        self.texts: list[str] = []
        self.ids: list[str] = []
        self.sources: list[str] = []
        self.pending = self.text_bytes = 0
        self.id_hashes: list[int] = []
        self.seconds = 0.0
        cores = os.cpu_count() or 1
        self.threads = max(1, cores // (config.workers or cores))  # the fast path's threads, per task

    def add(self, doc: CurateDocument, line_bytes: int) -> None:
        self.texts.append(doc.text)
        self.ids.append(doc.id)
        self.sources.append(doc.source)
        self.pending += line_bytes
        self.text_bytes += line_bytes
        if self.pending >= CHUNK_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self.texts:
            started = time.perf_counter()
            tokens, lengths = encode_texts(self.tok, self.texts, threads=self.threads)
            self.writer.add(tokens, lengths, self.ids, self.sources)
            self.id_hashes.extend(id_hash(i) for i in self.ids)
            self.seconds += time.perf_counter() - started
        self.texts, self.ids, self.sources, self.pending = [], [], [], 0

    def commit(self) -> dict[str, Any]:
        """Finish the part, rename its files into place; returns its entry for the marker."""
        self._flush()
        entry = self.writer.close(fsync=True)
        ids_tmp = self.base.with_name(self.base.name + ".ids.tmp")
        with open(ids_tmp, "wb") as f:
            np.array(self.id_hashes, dtype=np.uint64).tofile(f)
            f.flush()
            os.fsync(f.fileno())
        for ext in ("npy", "csv.gz", "ids"):
            os.replace(
                self.base.with_name(f"{self.base.name}.{ext}.tmp"), self.base.with_name(f"{self.base.name}.{ext}")
            )
        return entry | {"text_bytes": self.text_bytes, "documents_bytes": self.documents_path.stat().st_size,
                        "seconds": self.seconds}  # fmt: skip

    def abort(self) -> None:
        self.writer.abort()
        self.base.with_name(self.base.name + ".ids.tmp").unlink(missing_ok=True)


def check_tokenize(tokenize: TokenizeConfig, output: Path) -> TokenizeConfig:
    """`tokenize:` with an absolute `out`, after checking that its tokenizer loads and that its
    folder is not one the pipeline (writing to `output`) writes documents to."""
    spec = tokenize.tokenizer
    try:
        token_tokenizer(spec)
    except Exception as e:  # noqa: BLE001 - any failure to load is the field's problem
        raise ConfigError(f"tokenize.tokenizer: cannot load {spec!r} ({e})") from None
    out = (tokenize.out or output / "tokens").absolute()
    written = [output / d for d in ("documents", "attributes", "removed", "rejects", "work")]
    if out == output or any(out == w or w in out.parents for w in written):
        raise ConfigError(f"tokenize.out: {out} is a folder the pipeline writes other files to; choose another")
    return tokenize.replace(out=out)


def write_tokens(config: CurateConfig, layout: Layout, last_stage: int, n_shards: int, progress: bool) -> None:
    """Assemble the token folder from the last stage's per-shard parts: non-empty shards become
    `part-NNNNN` in shard order (as `data tokenize` numbers the files it finds documents in),
    hard-linked (copied where links fail) into a staged folder that replaces `tokenize.out`
    whole, with `data tokenize`'s meta.json. Redone in full on a rerun, so a kill here is safe."""
    assert config.tokenize is not None and config.tokenize.out is not None
    out = config.tokenize.out
    tok = token_tokenizer(config.tokenize.tokenizer)
    entries = [json.loads(layout.marker(last_stage, i).read_text())["tokens"] for i in range(n_shards)]
    if not any(e["num_documents"] for e in entries):
        log.warning(f"tokenize: no documents were kept; {out} not written")
        return
    split = config.tokenize.split
    if split is not None:
        _write_split_tokens(config, layout, entries, split, progress)
        return
    parts: list[dict[str, Any]] = []
    id_hashes: list[np.ndarray] = []
    with staged_folder(out) as staging:
        for i, entry in enumerate(entries):
            if not entry["num_documents"]:
                continue
            name, base = f"part-{len(parts):05d}", layout.token_part(i)
            for ext in ("npy", "csv.gz"):
                _link_or_copy(base.with_name(f"{base.name}.{ext}"), staging / f"{name}.{ext}")
            id_hashes.append(np.fromfile(base.with_name(base.name + ".ids"), dtype=np.uint64))
            parts.append({"tokens": f"{name}.npy", "documents": f"{name}.csv.gz",
                          **{k: entry[k] for k in ("num_tokens", "num_documents", "source_file", "hash")}})  # fmt: skip
        meta, examples = write_meta(
            staging,
            tok,
            parts,
            np.concatenate(id_hashes),
            **_run_facts(entries),
        )
    warn_duplicates(out, meta, examples)
    if progress:
        print(f"tokenize: {meta['num_tokens']:,} tokens of {meta['num_documents']:,} documents in {out}")


def _run_facts(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The meta.json numbers of the whole run, as `data tokenize` counts them on OUTPUT/documents."""
    return {"seconds": sum(e["seconds"] for e in entries), "input_bytes": sum(e["documents_bytes"] for e in entries),
            "text_bytes": sum(e["text_bytes"] for e in entries), "rejected_lines": 0, "skipped_files": 0}  # fmt: skip


def _write_split_tokens(
    config: CurateConfig, layout: Layout, entries: list[dict[str, Any]], split: ValidationSplit, progress: bool
) -> None:
    """`tokenize.out/train` and `/val` from the shard parts, routed as `data tokenize --validation`
    routes its own parts (the shards in order, as it finds OUTPUT/documents' files), so both write
    the same bytes."""
    assert config.tokenize is not None and config.tokenize.out is not None
    out = config.tokenize.out
    tok = token_tokenizer(config.tokenize.tokenizer)
    sources = []
    for i, entry in enumerate(entries):
        if entry["num_documents"]:
            base = layout.token_part(i)
            sources.append(SourcePart(base.with_name(base.name + ".npy"), base.with_name(base.name + ".csv.gz"),
                                      entry["num_tokens"], entry["source_file"]))  # fmt: skip
    with staged_folder(out) as staging:
        sides = route(sources, split, staging, token_dtype(tok.vocab_size))
        written = write_split_meta(sides, split, tok, _run_facts(entries))
    warn_split(out, written)
    if progress:
        for side, (meta, _) in written.items():
            print(f"tokenize: {meta['num_tokens']:,} tokens of {meta['num_documents']:,} documents in {out / side}")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
