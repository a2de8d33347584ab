"""Per-source selection by score in `lmforge data mix` (a source's `select:` conditions).

Dolmino's DCLM part is "DCLM's top 7 % that also scores >= 2 with the FineWeb-Edu classifier":

    sources:
      - name: dclm
        paths: [curated/dclm/documents]
        proportion: 0.5
        select:
          - {attribute: hq_score, top_fraction: 0.07}
          - {attribute: fineweb_edu_score, min_score: 2}

Each condition is a `select` step's (`lmforge.curate.select`: the same ranking, ties and exact
fractions), computed over the whole source; a document must meet all of them. The documents that
fail are left out as if they were not in the source, before token targets are computed.

Where a document's scores are found, in this order (the first that has the attribute wins):

* the row's own `attributes` object (rows of a curate run's `removed/` or a user's corpus);
* dolma attribute files beside its file: for `ROOT/documents/REL`, `ROOT/attributes/REL` (what
  `lmforge data curate` writes) and every `ROOT/attributes/<name>/REL` (dolma's layout). Their
  rows line up with the document file's lines, and their `id`s must match.

An attribute is named in full (`classifier__hq_score`) or by its last part (`hq_score` finds the
one key that ends in `__hq_score`). A dolma value is a list of spans `[[start, end, score]]`; the
first span's score is the document's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.curate.select import SelectConfig, take_top
from lmforge.data.documents import Document, open_bytes_counted
from lmforge.errors import ConfigError, LmforgeError


def attribute_files(path: Path) -> list[Path]:
    """The dolma attribute files of the document file `path` (none unless it lies under a
    `documents/` folder)."""
    parts = path.parts
    if "documents" not in parts:
        return []
    i = len(parts) - 1 - parts[::-1].index("documents")
    root, rel = Path(*parts[:i]), Path(*parts[i + 1 :])
    found = [root / "attributes" / rel] if (root / "attributes" / rel).is_file() else []
    if (root / "attributes").is_dir():
        found += sorted(p / rel for p in (root / "attributes").iterdir() if p.is_dir() and (p / rel).is_file())
    return found


class AttributeRows:
    """The attribute files of one document file, read along with it line by line."""

    def __init__(self, path: Path):
        self.files = attribute_files(path)
        self._rows = [self._lines(f) for f in self.files]
        self._next: list[tuple[int, str] | None] = [next(r, None) for r in self._rows]

    @staticmethod
    def _lines(path: Path) -> Iterator[tuple[int, str]]:
        stream, _ = open_bytes_counted(path)
        with stream:
            for line_no, line in enumerate(stream, start=1):
                if line.strip():
                    yield line_no, line.decode("utf-8")

    def at(self, line_no: int, doc_id: str) -> dict[str, Any]:
        """The attributes the files hold for the document on line `line_no` (empty if none)."""
        found: dict[str, Any] = {}
        for k, path in enumerate(self.files):
            current = self._next[k]
            while current is not None and current[0] < line_no:
                current = self._next[k] = next(self._rows[k], None)
            if current is None or current[0] != line_no:
                continue
            try:
                row = json.loads(current[1])
            except json.JSONDecodeError as e:
                raise LmforgeError(f"{path}:{line_no}: invalid JSON ({e.msg})") from None
            if str(row.get("id", doc_id)) != doc_id:
                raise LmforgeError(f"{path}:{line_no}: attribute row of id {row.get('id')!r}, but the document on "
                                   f"that line is {doc_id!r}; the attribute file does not belong to its documents")  # fmt: skip
            for key, value in (row.get("attributes") or {}).items():
                found.setdefault(key, value)
        return found


def score_of(attributes: dict[str, Any], name: str) -> float | None:
    """The document's value of attribute `name` (full key or its last part); None if absent."""
    if name in attributes:
        value = attributes[name]
    else:
        keys = [k for k in attributes if k.endswith(f"__{name}")]
        if not keys:
            return None
        if len(keys) > 1:
            raise ConfigError(f"attribute: {name!r} matches {', '.join(keys)}; name one in full")
        value = attributes[keys[0]]
    if isinstance(value, list):  # dolma spans [[start, end, score], ...]
        value = value[0][2] if value and isinstance(value[0], list) and len(value[0]) == 3 else None
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def document_attributes(doc: Document, rows: AttributeRows | None, line_no: int) -> dict[str, Any]:
    """A document's attributes: its row's own, then its attribute files'."""
    own = doc.metadata.get("attributes")
    found = dict(own) if isinstance(own, dict) else {}
    if rows is not None and rows.files:
        for key, value in rows.at(line_no, doc.id).items():
            found.setdefault(key, value)
    return found


def eligible(conditions: list[SelectConfig], scores: list[np.ndarray], ids: np.ndarray, tokens: np.ndarray,
             where: str) -> tuple[np.ndarray, list[dict[str, Any]]]:  # fmt: skip
    """(mask of the documents meeting every condition, one report entry per condition)."""
    keep = np.ones(len(ids), dtype=bool)
    report = []
    for j, (cond, values) in enumerate(zip(conditions, scores)):
        if len(ids) and np.isnan(values).all():
            raise ConfigError(f"{where}.select[{j}].attribute: no document has {cond.attribute!r} (in its row's "
                              "attributes or attribute files beside its documents/ folder); check the name")  # fmt: skip
        ranked = take_top(values, ids, tokens, cond)
        mask = np.zeros(len(ids), dtype=bool)
        mask[ranked] = True
        keep &= mask
        threshold = float(values[ranked[-1]]) if len(ranked) else None
        rule = {"top_fraction": cond.top_fraction, "by": cond.by} if cond.top_fraction is not None else {
            "min_score": cond.min_score}  # fmt: skip
        report.append({"attribute": cond.attribute, **rule, "threshold": threshold,
                       "documents_passing": int(mask.sum()), "missing_scores": int(np.isnan(values).sum())})  # fmt: skip
    return keep, report


def selection_summary(keep: np.ndarray, tokens: np.ndarray, conditions: list[dict[str, Any]]) -> dict[str, Any]:
    total = int(tokens.sum())
    kept_tokens = int(tokens[keep].sum())
    return {"conditions": conditions, "documents_in": len(keep), "documents_kept": int(keep.sum()),
            "tokens_in": total, "tokens_kept": kept_tokens,
            "kept_share_documents": float(keep.mean()) if len(keep) else None,
            "kept_share_tokens": kept_tokens / total if total else None}  # fmt: skip


def nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value
