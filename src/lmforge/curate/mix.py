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
    validation: null              # e.g. 0.01: hold out 1 % of the documents into output/val/
    validation_docs: null         # or exactly N documents
    validation_seed: 0

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
* **Held-out split.** With ``validation`` (a fraction) or ``validation_docs`` (a count), the
  documents the mix selected are split by ``lmforge.data.split`` (the rule of ``data tokenize
  --validation``: a seeded hash of each document's *original* id; a count takes the N smallest,
  equal keys by global document index) and each output row goes, in output order, to the side of
  its document: ``output/train/mix-NNNNN.jsonl.gz`` and ``output/val/mix-NNNNN.jsonl.gz`` instead
  of ``output/mix-*``. Every copy of a document, and every document with its id, is on one side;
  the two sides together are exactly the rows the mix writes without a split, in the same order,
  so the val side keeps the mix's proportions and repeats (a count is of distinct documents, its
  rows include their copies). ``mix.json`` gains ``validation`` (the options; per side rows,
  documents, tokens, shards, per-source proportions); shard names there carry the side.
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

Modules
-------
This file holds the entry point; the work is split by job:
`mix_config` (MixSource, MixConfig), `mix_select` (hashing, targets, selection and output
order over counts and arrays; no file access), `mix_read` (reading records, pass 1),
`mix_write` (buckets and shards, passes 2 and 3) and `mix_report` (mix.json and its table).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from lmforge.curate.mix_config import PROPORTION_TOLERANCE, MixConfig, MixSource
from lmforge.curate.mix_read import count_sources
from lmforge.curate.mix_report import build_report, format_table, validation_report
from lmforge.curate.mix_select import held_out_rows, output_order, select_documents, token_targets
from lmforge.curate.mix_write import SHARD_NAME, RollingShardWriter, write_output
from lmforge.data.documents import BadInput, expand_paths
from lmforge.data.split import SIDES, VAL
from lmforge.data.tokenizer import TokenCounter
from lmforge.errors import ConfigError, LmforgeError
from lmforge.fsutil import staged_folder

__all__ = [
    "PROPORTION_TOLERANCE",
    "REJECTS_FILE",
    "REPORT_FILE",
    "SHARD_NAME",
    "MixConfig",
    "MixSource",
    "format_table",
    "mix",
]

log = logging.getLogger(__name__)

REPORT_FILE = "mix.json"
REJECTS_FILE = "rejects.jsonl"

# The writer's old name here: tests patch its `close_shard` through this module.
_ShardWriter = RollingShardWriter


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
                raise ConfigError(
                    f"output: {config.output} holds input {f} of source {source.name!r}; "
                    "mix into a new folder (the output folder is replaced as a whole)"
                )
        files.append(found)
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_FILE).exists():
        # The output folder is replaced as a whole: only ever replace an earlier mix.
        raise ConfigError(f"output: {config.output} is a non-empty folder that no mix wrote; name a new folder")

    counter = TokenCounter(config.tokenizer)
    rejects: list[BadInput] | None = None if config.strict else []
    indexes = count_sources(config, files, counter, progress, rejects)
    rejects = rejects or []
    total, targets = token_targets(config, indexes)
    selections = [select_documents(ix, t) for ix, t in zip(indexes, targets)]
    out_doc, out_rep = output_order(indexes, selections)
    split = config.split
    held = held_out_rows(indexes, out_doc, split) if split is not None else None

    with staged_folder(config.output) as stage:
        shards = write_output(config, indexes, out_doc, out_rep, stage, progress, held)
        report = build_report(config, indexes, selections, total, counter.describe(), shards)
        if split is not None:
            assert held is not None
            report["validation"] = validation_report(split, indexes, out_doc, held, shards)
        skipped_files = sum(r.line is None for r in rejects)
        report["rejected_lines"], report["skipped_files"] = len(rejects) - skipped_files, skipped_files
        if rejects:
            with open(stage / REJECTS_FILE, "w") as f:
                f.writelines(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rejects)
        (stage / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report), file=sys.stdout)
    if split is not None:
        for side in SIDES:
            if not report["validation"][side]["rows"]:
                log.warning(f"{config.output / side} has no documents; "
                            + ("hold out more (validation / validation_docs)" if side == VAL else "hold out fewer"))  # fmt: skip
    if rejects:
        files_, lines_ = _plural(skipped_files, "file"), _plural(len(rejects) - skipped_files, "line")
        log.warning(f"skipped {files_} and {lines_}; see {config.output / REJECTS_FILE}")
    return report


def _plural(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")
