"""The files one (stage, shard) task writes, and how they are finished.

Every file is written under a temporary name and renamed into place once complete; the task's
completion marker comes last. A rerun redoes every task without a marker from scratch, so a
kill at any point leaves nothing that a resumed run would count as done.

    stage before a global step: work/stage-K/shard-N.jsonl (kept rows, with attributes so far),
                                work/stage-K/shard-N.sig (the global step's signatures)
    last stage:                 documents/, attributes/, and with `tokenize:` the shard's token part
    any stage:                  removed/shard-N.sK.jsonl.gz; stage 0 also rejects/shard-N.jsonl
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lmforge.curate import shards as io
from lmforge.curate.config import CurateConfig
from lmforge.curate.layout import Layout
from lmforge.curate.stages import Stage
from lmforge.curate.steps import CurateDocument
from lmforge.curate.tokens import ShardTokens
from lmforge.data.documents import BadInput
from lmforge.fsutil import atomic_write


class TaskOutputs:
    """Owns the output files of one task: opens them, writes a kept, removed or rejected row as
    the documents come, then either `commit`s them all (and `write_marker`) or `abort`s."""

    def __init__(self, config: CurateConfig, stage: Stage, shard: int):
        self.layout = layout = Layout(config.output)
        self.stage, self.shard = stage, shard
        self.last = last = stage.collect is None
        self.file_problems: list[str] = []  # one line per input file that could not be read
        self.rejected_lines = 0
        self.signatures: list[Any] = []
        self.tokens: ShardTokens | None = None
        self._writers: list[io.ShardWriter] = []
        try:
            self.out = self._open(layout.documents(shard) if last else layout.intermediate(stage.index, shard))
            self.attributes = self._open(layout.attributes(shard)) if last and config.write_attributes else None
            self.removed = self._open(layout.removed(shard, stage.index)) if config.write_removed else None
            self.rejects = self._open(layout.rejects(shard)) if stage.index == 0 else None
            if last and config.tokenize is not None:
                self.tokens = ShardTokens(config, layout, shard)
        except BaseException:
            self.abort()
            raise

    def _open(self, path: Path) -> io.ShardWriter:
        w = io.ShardWriter(path)
        self._writers.append(w)
        return w

    @property
    def written(self) -> int:
        """Rows in the task's main output (documents, or the work file of a later stage)."""
        return self.out.rows

    def keep(self, doc: CurateDocument, signature: Any = None) -> None:
        """A document the stage kept; `signature` is the global step's, in a stage that ends in one."""
        if not self.last:
            self.signatures.append(signature)
            self.out.write(_row(doc) | {"attributes": doc.attributes})
            return
        line = io.dumps(_row(doc)).encode("utf-8") + b"\n"
        self.out.write_line(line)
        if self.tokens is not None:
            self.tokens.add(doc, len(line))  # the line's bytes: `data tokenize` reads in chunks of them
        if self.attributes is not None:
            self.attributes.write({"id": doc.id, "source": doc.source, "attributes": _dolma_attributes(doc)})

    def remove(self, doc: CurateDocument, removed_by: str, reason: str) -> None:
        if self.removed is not None:
            self.removed.write(_row(doc) | {"removed_by": removed_by, "reason": reason, "attributes": doc.attributes})

    def reject(self, problem: BadInput, line_no: int | None, raw: str) -> None:
        """A bad input line, or with `line_no` None a file that cannot be read (stage 0 only)."""
        assert self.rejects is not None, "only stage 0 reads input files"
        row: dict[str, Any] = {"file": problem.file, "line": line_no, "reason": problem.reason, "error": str(problem)}
        if raw:
            row["raw"] = raw.rstrip("\n")
        self.rejects.write(row)
        if line_no is None:
            self.file_problems.append(str(problem))
        else:
            self.rejected_lines += 1

    def commit(self) -> dict[str, Any] | None:
        """Rename every file into place; returns the token part's entry for the marker, if any."""
        collect = self.stage.collect
        if collect is not None:
            sig_path = self.layout.signatures(self.stage.index, self.shard)
            tmp = sig_path.with_name(sig_path.name + ".tmp")
            collect.save_signatures(self.signatures, tmp)
            os.replace(tmp, sig_path)
        for w in self._writers:
            if w is self.rejects and w.rows == 0:
                w.abort()
            else:
                w.commit()
        if self.tokens is not None:  # after the documents file: its size goes in the entry
            return self.tokens.commit()
        return None

    def abort(self) -> None:
        """Remove every temporary file (a failed task leaves nothing a rerun could mistake)."""
        for w in self._writers:
            w.abort()
        if self.tokens is not None:
            self.tokens.abort()

    def write_marker(self, stats: dict[str, Any]) -> None:
        """The task's completion marker, holding its statistics: written last, atomically."""
        marker = self.layout.marker(self.stage.index, self.shard)
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(marker, json.dumps(stats))


def _row(doc: CurateDocument) -> dict[str, Any]:
    row: dict[str, Any] = {"id": doc.id, "text": doc.text, "source": doc.source}
    if doc.metadata:
        row["metadata"] = doc.metadata
    return row


def _dolma_attributes(doc: CurateDocument) -> dict[str, Any]:
    """dolma's attribute layout: each value as a span over the whole document."""
    end = len(doc.text)
    return {k: [[0, end, v]] for k, v in doc.attributes.items()}
