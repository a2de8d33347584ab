"""Exact deduplication: by normalised text and by URL. The first document in corpus order
(shard order, then position) survives, so results do not depend on the number of workers."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from lmforge.config import Config
from lmforge.curate.steps import CurateDocument, GlobalStep, Verdict, register_step

_WHITESPACE = re.compile(r"\s+")


@dataclass(kw_only=True)
class ExactDedupConfig(Config):
    """Remove documents whose normalised text equals an earlier document's."""

    lowercase: bool = True
    collapse_whitespace: bool = True
    """Treat any run of whitespace as one space and ignore leading/trailing whitespace."""
    unicode_nfkc: bool = True
    """Fold compatibility characters (ﬁ → fi, full-width → ASCII) before comparing."""


@register_step("exact_dedup")
class ExactDedup(GlobalStep[ExactDedupConfig]):
    Config = ExactDedupConfig

    def signature(self, doc: CurateDocument, tokens: int) -> Any:
        c = self.config
        text = doc.text
        if c.unicode_nfkc:
            text = unicodedata.normalize("NFKC", text)
        if c.lowercase:
            text = text.lower()
        if c.collapse_whitespace:
            text = _WHITESPACE.sub(" ", text).strip()
        return doc.id, hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()

    def resolve(self, shards: Iterable[list[Any]]) -> list[dict[int, Any]]:
        return _first_holder(shards)

    def apply(self, doc: CurateDocument, action: Any) -> Verdict:
        return Verdict.remove("exact_duplicate", **action)


@dataclass(kw_only=True)
class UrlDedupConfig(Config):
    """Remove documents whose normalised URL (from `metadata.<url_field>`) an earlier document
    has. Scheme, 'www.', a trailing slash and the #fragment are ignored; the host is lowercased."""

    url_field: str = "url"


_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def normalise_url(url: str) -> str | None:
    """The dedup key of a URL; None for a URL that cannot be parsed (never a duplicate)."""
    url = url.strip()
    try:
        parts = urlsplit(url if _SCHEME.match(url) else f"//{url}")
        host = (parts.hostname or "").lower().removeprefix("www.")
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:  # a bad port or bracketed host: crawls have them
        return None
    path = parts.path.rstrip("/")
    return urlunsplit(("", host, path, parts.query, ""))


@register_step("url_dedup")
class UrlDedup(GlobalStep[UrlDedupConfig]):
    Config = UrlDedupConfig

    def signature(self, doc: CurateDocument, tokens: int) -> Any:
        url = doc.metadata.get(self.config.url_field)
        return doc.id, normalise_url(url) if isinstance(url, str) and url.strip() else None

    def resolve(self, shards: Iterable[list[Any]]) -> list[dict[int, Any]]:
        return _first_holder(shards)

    def apply(self, doc: CurateDocument, action: Any) -> Verdict:
        return Verdict.remove("url_duplicate", **action)


def _first_holder(shards: Iterable[list[Any]]) -> list[dict[int, Any]]:
    """For each key seen before (in shard order, then position): remove the later document,
    naming the first one. Key None is never a duplicate."""
    first: dict[Any, str] = {}
    actions: list[dict[int, Any]] = []
    for shard in shards:
        acts: dict[int, Any] = {}
        for pos, (doc_id, key) in enumerate(shard):
            if key is None:
                continue
            if key in first:
                acts[pos] = {"duplicate_of": first[key]}
            else:
                first[key] = doc_id
        actions.append(acts)
    return actions
