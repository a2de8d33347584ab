"""Selection by score over the whole corpus (`select`): keep the top share of a pool.

DCLM-baseline is the top 10 % of its pool by a fastText score: the cut is a share of the whole
corpus, not of each shard, so this is a global step. Each shard's task records every document's
score (an attribute an earlier step wrote, e.g. the `classifier` step's `hq_score`) and size;
`resolve` then sees all of them and decides once:

* `min_score`: keep every document scoring >= it;
* `top_fraction` f, `by: documents`: rank documents by score (highest first; equal scores by
  document id, then by position in the corpus) and keep the first ceil(f · N) of the N documents;
* `top_fraction` f, `by: tokens`: keep the shortest prefix of that ranking holding at least
  f · T of the corpus's T tokens (tokens as the pipeline counts them: its `tokenizer`, else words).

f is read as the decimal the config wrote (0.07 is 7/100, not the float just above it), so the
cut is exact. A document without the score (the attribute is null: the classifier had no text to
score) is ranked last and never kept. The threshold reached (the lowest kept score), the kept
share of documents and tokens and the ties left at the threshold go into stats.json under this
step's `resolve`. The ranking depends on the documents alone, never on shards or workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lmforge.config import Config, require
from lmforge.curate.steps import CurateDocument, GlobalStep, Step, Verdict, register_step
from lmforge.errors import ConfigError, LmforgeError


@dataclass(kw_only=True)
class SelectConfig(Config):
    """Keep the highest-scoring documents of the whole corpus."""

    attribute: str
    """The score: a value an earlier step writes, by its name (`hq_score`) or in full as
    `<step label>__<name>` (`classifier__hq_score`, or any number a step records, such as
    `gopher__word_count`)."""
    top_fraction: float | None = None
    """Keep this share of the corpus, in (0, 1] (DCLM-baseline: 0.1)."""
    min_score: float | None = None
    """Keep every document scoring >= this instead (Dolmino: FineWeb-Edu >= 2)."""
    by: Literal["documents", "tokens"] = "documents"
    """What `top_fraction` is a share of: documents, or tokens (a share of the text itself)."""

    def validate(self) -> None:
        require(bool(self.attribute.strip()), "attribute", "name the score to select on (e.g. hq_score)")
        require((self.top_fraction is None) != (self.min_score is None), "top_fraction",
                "give exactly one of top_fraction (a share of the corpus) or min_score (a threshold)")  # fmt: skip
        if self.top_fraction is not None:
            require(math.isfinite(self.top_fraction) and 0 < self.top_fraction <= 1, "top_fraction",
                    f"must be in (0, 1], got {self.top_fraction}")  # fmt: skip
        if self.min_score is not None:
            require(math.isfinite(self.min_score), "min_score", f"must be a finite number, got {self.min_score}")
            require(self.by == "documents", "by", "applies to top_fraction only; drop it with min_score")


def resolve_attribute(name: str, earlier: list[Step]) -> str:
    """The attribute key (`<label>__<value>`) that `name` means among the steps before a
    reader; ConfigError naming what earlier steps do write."""
    declared = {f"{s.label}__{v}": v for s in earlier for v in s.written_values()}
    if "__" in name:
        label = name.partition("__")[0]
        if any(s.label == label for s in earlier):
            return name
    else:
        matches = [key for key, value in declared.items() if value == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ConfigError(f"attribute: {name!r} is written by several earlier steps ({', '.join(matches)}); "
                              "name one in full")  # fmt: skip
    listed = ", ".join(declared) or "none"
    raise ConfigError(f"attribute: no earlier step writes {name!r} (scores written before this step: {listed}); "
                      "put a classifier step before it, or name a value as <step label>__<name>")  # fmt: skip


def take_top(scores: np.ndarray, ids: np.ndarray, tokens: np.ndarray, config: SelectConfig) -> np.ndarray:
    """Indices of the documents `config` keeps, ranked best first (the rule in the module doc).
    `scores` holds NaN where a document has none."""
    n = len(scores)
    has_score = ~np.isnan(scores)
    if config.min_score is not None:
        keep = np.flatnonzero(has_score & (scores >= config.min_score))
        return keep[np.lexsort((keep, ids[keep], -scores[keep]))]
    order = np.lexsort((np.arange(n), ids, np.where(has_score, -scores, np.inf)))
    share = Fraction(repr(config.top_fraction))  # the decimal written, exactly
    if config.by == "documents":
        k = math.ceil(share * n)
    else:
        target = math.ceil(share * int(tokens.sum()))
        k = int(np.searchsorted(np.cumsum(tokens[order]), target, side="left")) + 1
    return order[: min(k, int(has_score.sum()))]


@register_step("select")
class Select(GlobalStep[SelectConfig]):
    Config = SelectConfig

    def __init__(self, config: SelectConfig, *, label: str | None = None):
        super().__init__(config, label=label)
        self.key = config.attribute  # made exact by check_pipeline
        self.summary: dict[str, Any] = {}
        c = config
        self._reason = (f"{self.label}:{config.attribute}<{c.min_score:g}" if c.min_score is not None
                        else f"{self.label}:{config.attribute} not in top {c.top_fraction:g} of {c.by}")  # fmt: skip

    def check_pipeline(self, earlier: list[Step]) -> None:
        self.key = resolve_attribute(self.config.attribute, earlier)

    def signature(self, doc: CurateDocument, tokens: int) -> Any:
        value = doc.attributes.get(self.key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise LmforgeError(f"select: attribute {self.key} of document {doc.id!r} is {value!r}, not a number; "
                               "select on a score")  # fmt: skip
        return doc.id, math.nan if value is None else float(value), tokens

    def save_signatures(self, signatures: list[Any], path: Path) -> None:
        with open(path, "wb") as f:  # no pickled objects: ids as a unicode array
            np.savez(f, ids=np.array([s[0] for s in signatures], dtype=np.str_),
                     scores=np.array([s[1] for s in signatures], dtype=np.float64),
                     tokens=np.array([s[2] for s in signatures], dtype=np.int64))  # fmt: skip

    def load_signatures(self, path: Path) -> Any:
        with np.load(path, allow_pickle=False) as z:
            return z["ids"], z["scores"], z["tokens"]

    def resolve(self, shards: Iterable[Any]) -> list[dict[int, Any]]:
        shards = list(shards)
        sizes = [len(s[0]) for s in shards]
        ids = np.concatenate([s[0] for s in shards]) if shards else np.zeros(0, np.str_)
        scores = np.concatenate([s[1] for s in shards]) if shards else np.zeros(0)
        tokens = np.concatenate([s[2] for s in shards]) if shards else np.zeros(0, np.int64)
        ranked = take_top(scores, ids, tokens, self.config)
        kept = np.zeros(len(ids), dtype=bool)
        kept[ranked] = True
        threshold = float(scores[ranked[-1]]) if len(ranked) else None
        ties_left = int(np.sum(~kept & (scores == threshold))) if threshold is not None else 0
        total_tokens, kept_tokens = int(tokens.sum()), int(tokens[kept].sum())
        self.summary = {"attribute": self.key, "threshold": threshold, "documents": len(ids),
                        "documents_kept": int(kept.sum()), "tokens": total_tokens, "tokens_kept": kept_tokens,
                        "kept_share_documents": float(kept.mean()) if len(ids) else None,
                        "kept_share_tokens": kept_tokens / total_tokens if total_tokens else None,
                        "missing_scores": int(np.isnan(scores).sum()), "ties_left_at_threshold": ties_left}  # fmt: skip
        actions: list[dict[int, Any]] = []
        start = 0
        for size in sizes:
            removed = np.flatnonzero(~kept[start : start + size])
            actions.append({int(i): True for i in removed})  # True: remove (kept documents get no action)
            start += size
        return actions

    def apply(self, doc: CurateDocument, action: Any) -> Verdict:
        return Verdict.remove(self._reason)
