"""Running one document through a stage's steps, and counting what each step did.

This module decides and counts; `lmforge.curate.task_outputs` writes. `StageRunner.run` returns
an `Outcome` (kept, or removed by which step and why) and adds to per-step counts of documents
and tokens in and out, overall and per source, which go into the task's marker.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmforge.curate.stages import Stage
from lmforge.curate.steps import CurateDocument, Verdict


@dataclass
class Outcome:
    """What a stage did to one document."""

    kept: bool
    removed_by: str = ""
    """Label of the step that removed it."""
    reason: str = ""
    """That step's reason (`Verdict.reason`)."""
    signature: Any = None
    """Kept, in a stage that ends in a global step: that step's signature of the document."""


class StepCounts:
    """Documents and tokens in and out of each step, overall and per source."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def _entry(self, label: str) -> dict[str, Any]:
        e = self.data.get(label)
        if e is None:
            e = self.data[label] = {"docs_in": 0, "docs_out": 0, "tokens_in": 0, "tokens_out": 0,
                                    "removed": Counter(), "sources": defaultdict(lambda: [0, 0, 0, 0]),
                                    "counted": Counter()}  # fmt: skip
        return e

    def add(self, label: str, source: str, *, docs_in: int = 0, docs_out: int = 0, tokens_in: int = 0,
            tokens_out: int = 0, reason: str | None = None) -> None:  # fmt: skip
        e = self._entry(label)
        e["docs_in"] += docs_in
        e["docs_out"] += docs_out
        e["tokens_in"] += tokens_in
        e["tokens_out"] += tokens_out
        s = e["sources"][source]
        s[0] += docs_in
        s[1] += docs_out
        s[2] += tokens_in
        s[3] += tokens_out
        if reason:
            e["removed"][reason] += 1

    def add_values(self, label: str, values: dict[str, Any], keys: tuple[str, ...]) -> None:
        """Sum a step's counted verdict values (`Step.counted_values`)."""
        counted = self._entry(label)["counted"]
        for key in keys:
            counted[key] += values.get(key) or 0

    def to_json(self) -> dict[str, Any]:
        return {k: {**v, "removed": dict(v["removed"]), "sources": dict(v["sources"]), "counted": dict(v["counted"])}
                for k, v in self.data.items()}  # fmt: skip


class StageRunner:
    """Runs documents through one stage: the previous global step's decisions (`actions`, by
    position in the shard), the document steps in order until one removes the document, then
    the next global step's signature. Each step's measurements go into `doc.attributes`."""

    def __init__(self, stage: Stage, actions: dict[int, Any], count_tokens: Callable[[str], int]):
        self.stage = stage
        self.actions = actions
        self.count_tokens = count_tokens
        self.counts = StepCounts()

    def run(self, pos: int, doc: CurateDocument) -> Outcome:
        """Run the document at position `pos` of the shard through the stage."""
        stage = self.stage
        tokens = self.count_tokens(doc.text)
        if stage.apply is not None:
            action = self.actions.get(pos)
            before = doc.text
            # A document `resolve` said nothing about passes untouched: a verdict with no values.
            verdict = stage.apply.apply(doc, action) if action is not None else Verdict.keep()
            _record(doc, stage.apply.label, verdict)
            # The global step's documents in were counted when its signatures were taken.
            tokens = self._count(stage.apply.label, doc, before, tokens, verdict, count_in=False)
            if not verdict.kept:
                return Outcome(False, stage.apply.label, verdict.reason)
        for step in stage.steps:
            before = doc.text
            verdict = step(doc)
            _record(doc, step.label, verdict)
            if step.counted_values:
                self.counts.add_values(step.label, verdict.values, step.counted_values)
            tokens = self._count(step.label, doc, before, tokens, verdict)
            if not verdict.kept:
                return Outcome(False, step.label, verdict.reason)
        if stage.collect is None:
            return Outcome(True)
        self.counts.add(stage.collect.label, doc.source, docs_in=1, tokens_in=tokens)
        return Outcome(True, signature=stage.collect.signature(doc, tokens))

    def _count(self, label: str, doc: CurateDocument, text_before: str, tokens_in: int, verdict: Verdict, *,
               count_in: bool = True) -> int:  # fmt: skip
        """Count a document through a step; returns its tokens after the step (0 if removed)."""
        kept = verdict.kept
        # Recount only a changed text (`doc.text` keeps its old object when set to an equal one).
        tokens_out = 0 if not kept else tokens_in if doc.text is text_before else self.count_tokens(doc.text)
        self.counts.add(label, doc.source, docs_in=int(count_in), docs_out=int(kept),
                        tokens_in=tokens_in if count_in else 0, tokens_out=tokens_out,
                        reason=None if kept else verdict.reason)  # fmt: skip
        return tokens_out


def _record(doc: CurateDocument, label: str, verdict: Verdict) -> None:
    for key, value in verdict.values.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None  # NaN/inf are not JSON (e.g. the mean word length of a wordless text)
        doc.attributes[f"{label}__{key}"] = value
