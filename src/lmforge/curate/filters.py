"""Quality filters with their published thresholds: Gopher quality and repetition (Rae et al.
2021, table A1), C4 (Raffel et al. 2020), FineWeb (Penedo et al. 2024), plus length bounds and
a URL/domain blocklist.

The rules and their order follow datatrove's implementations, so that the same thresholds keep
the same documents (tests/test_curate_parity.py checks every decision on a 2,400-document
corpus). Config fields are named like datatrove's constructor arguments. Differences on
purpose: a threshold set to `None` disables its rule, as in datatrove; a document without any
word is removed as `no_words` where datatrove would divide by zero.

Each filter reports what it measured (`Verdict.values`, stored as attributes). Measurements stop
at the first failing rule, as the decision does: the cost of a rejected document stays small.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import accumulate, compress
from operator import itemgetter
from pathlib import Path
from urllib.parse import urlsplit

from lmforge.config import Config, require
from lmforge.curate.steps import CurateDocument, DocumentStep, Verdict, register_step
from lmforge.curate.text import PUNCTUATION_SET, TERMINAL_PUNCTUATION

# -- Gopher quality -----------------------------------------------------------------------------

GOPHER_STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]


@dataclass(kw_only=True)
class GopherQualityConfig(Config):
    """Gopher's quality rules. Words are spaCy English words that are not only punctuation."""

    min_doc_words: int | None = 50
    """Fewer words than this: removed (`gopher_short_doc`)."""
    max_doc_words: int | None = 100_000
    """More words than this: removed (`gopher_long_doc`)."""
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    """Most '#' per word, and most '...'/'…' per word."""
    max_bullet_lines_ratio: float | None = 0.9
    """Most lines starting with a bullet ('•' or '-')."""
    max_ellipsis_lines_ratio: float | None = 0.3
    """Most lines ending in an ellipsis."""
    max_non_alpha_words_ratio: float | None = 0.8
    """Despite the name (kept from Gopher's code), the *least* share of words with a letter."""
    min_stop_words: int | None = 2
    """Least number of distinct stop words present."""
    stop_words: list[str] = field(default_factory=lambda: list(GOPHER_STOP_WORDS))


@register_step("gopher_quality")
class GopherQuality(DocumentStep[GopherQualityConfig]):
    Config = GopherQualityConfig

    def __call__(self, doc: CurateDocument) -> Verdict:
        c = self.config
        text, words = doc.text, doc.words
        n_words = len(words)
        content_words = [w for w in words if not PUNCTUATION_SET.issuperset(w)]
        n = len(content_words)
        values: dict = {"n_words": n}
        if c.min_doc_words and n < c.min_doc_words:
            return Verdict.remove("gopher_short_doc", **values)
        if c.max_doc_words and n > c.max_doc_words:
            return Verdict.remove("gopher_long_doc", **values)

        mean_len = sum(map(len, content_words)) / n if n else float("nan")
        values["mean_word_length"] = mean_len
        if c.min_avg_word_length and mean_len < c.min_avg_word_length:
            return Verdict.remove("gopher_below_avg_threshold", **values)
        if c.max_avg_word_length and mean_len > c.max_avg_word_length:
            return Verdict.remove("gopher_above_avg_threshold", **values)

        if n_words == 0:  # only reachable with min_doc_words disabled
            return Verdict.remove("no_words", **values)
        values["hash_ratio"] = text.count("#") / n_words
        if c.max_symbol_word_ratio and values["hash_ratio"] > c.max_symbol_word_ratio:
            return Verdict.remove("gopher_too_many_hashes", **values)
        values["ellipsis_ratio"] = (text.count("...") + text.count("…")) / n_words
        if c.max_symbol_word_ratio and values["ellipsis_ratio"] > c.max_symbol_word_ratio:
            return Verdict.remove("gopher_too_many_ellipsis", **values)

        lines = text.splitlines()
        n_lines = len(lines)  # > 0: the text has words
        values["bullet_lines_ratio"] = sum(s.lstrip().startswith(("•", "-")) for s in lines) / n_lines
        if c.max_bullet_lines_ratio and values["bullet_lines_ratio"] > c.max_bullet_lines_ratio:
            return Verdict.remove("gopher_too_many_bullets", **values)
        values["ellipsis_lines_ratio"] = sum(s.rstrip().endswith(("...", "…")) for s in lines) / n_lines
        if c.max_ellipsis_lines_ratio and values["ellipsis_lines_ratio"] > c.max_ellipsis_lines_ratio:
            return Verdict.remove("gopher_too_many_end_ellipsis", **values)

        values["alpha_words_ratio"] = sum(_has_alpha(w) for w in words) / n_words
        if c.max_non_alpha_words_ratio and values["alpha_words_ratio"] < c.max_non_alpha_words_ratio:
            return Verdict.remove("gopher_below_alpha_threshold", **values)

        values["stop_words"] = len(set(c.stop_words).intersection(words))
        if c.min_stop_words and values["stop_words"] < c.min_stop_words:
            return Verdict.remove("gopher_enough_stop_words", **values)
        return Verdict.keep(**values)


def _has_alpha(word: str) -> bool:
    return word.isalpha() or any(ch.isalpha() for ch in word)


# -- Gopher repetition ----------------------------------------------------------------------------


@dataclass(kw_only=True)
class GopherRepetitionConfig(Config):
    """Gopher's repetition rules: duplicated lines and paragraphs, the most frequent n-gram's
    share of characters, and the share of characters in repeated n-grams."""

    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_n_grams: list[tuple[int, float]] = field(default_factory=lambda: [(2, 0.2), (3, 0.18), (4, 0.16)])
    """(n, most characters in the most frequent n-gram, as a share of the text)."""
    dup_n_grams: list[tuple[int, float]] = field(
        default_factory=lambda: [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)]
    )
    """(n, most characters in n-grams seen before, as a share of the text)."""

    def validate(self) -> None:
        for name in ("top_n_grams", "dup_n_grams"):
            for n, _ in getattr(self, name):
                require(n >= 1, name, f"n-gram sizes must be >= 1, got {n}")


_PARAGRAPH_BREAK = re.compile(r"\n{2,}")
_LINE_BREAK = re.compile(r"\n+")


def duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items equal to an earlier one, their total length in characters)."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


class WordOffsets:
    """A document's words joined with and without spaces, and where each word starts, so an
    n-gram is one slice of a string instead of a join of n words."""

    def __init__(self, words: list[str]):
        self.n_words = len(words)
        self.flat = "".join(words)
        self.spaced = " ".join(words)
        self.starts = list(accumulate(map(len, words), initial=0))
        self.spaced_starts = [s + i for i, s in enumerate(self.starts)]

    def spaced_ngrams(self, n: int) -> list[str]:
        text, s = self.spaced, self.spaced_starts
        return [text[a : b - 1] for a, b in zip(s, s[n:])]

    def flat_ngrams(self, n: int) -> list[str]:
        text, s = self.flat, self.starts
        return [text[a:b] for a, b in zip(s, s[n:])]


def top_ngram_chars(words: WordOffsets, n: int) -> int:
    """Characters covered by the most frequent n-gram (words joined by a space) times its count;
    among equally frequent n-grams the first seen counts."""
    grams = words.spaced_ngrams(n)
    if not grams:
        return 0
    gram, count = max(Counter(grams).items(), key=itemgetter(1))  # first of the most frequent
    return len(gram) * count


def repeated_ngram_chars(words: WordOffsets, n: int) -> int:
    """Characters in n-grams (words concatenated) that repeat an earlier one, scanning left to
    right and jumping over a repeat so overlapping repeats are not counted twice.

    Only n-grams occurring more than once can ever be a repeat, so the scan visits just their
    positions: the result is that of the full left-to-right scan, at a fraction of its cost."""
    grams = words.flat_ngrams(n)
    if len(set(grams)) == len(grams):  # no repeats: the common case
        return 0
    multi = {g for g, k in Counter(grams).items() if k > 1}
    seen: set[str] = set()
    chars = next_free = 0
    for pos in compress(range(len(grams)), map(multi.__contains__, grams)):
        if pos < next_free:
            continue  # jumped over by an earlier repeat
        gram = grams[pos]
        if gram in seen:
            chars += len(gram)
            next_free = pos + n
        else:
            seen.add(gram)
            next_free = pos + 1
    return chars


@register_step("gopher_repetition")
class GopherRepetition(DocumentStep[GopherRepetitionConfig]):
    Config = GopherRepetitionConfig

    def __call__(self, doc: CurateDocument) -> Verdict:
        c = self.config
        text = doc.text
        if not text:
            return Verdict.remove("empty")
        size = len(text)
        values: dict = {}

        # Paragraphs, then lines (split only if paragraphs pass): the share of duplicated ones,
        # then the share of characters in them. Each measurement is named like its reason.
        splits = (("para", lambda: _PARAGRAPH_BREAK.split(text.strip())), ("line", lambda: _LINE_BREAK.split(text)))
        for unit, split in splits:
            parts = split()
            dup, dup_chars = duplicates(parts)
            for name, value in ((f"dup_{unit}_frac", dup / len(parts)), (f"dup_{unit}_char_frac", dup_chars / size)):
                values[name] = value
                limit = getattr(c, name)
                if limit and value > limit:
                    return Verdict.remove(name, **values)

        words = WordOffsets(doc.words)
        for n, limit in c.top_n_grams:
            if words.n_words < n:
                continue
            frac = values[f"top_{n}_gram_frac"] = top_ngram_chars(words, n) / size
            if frac > limit:
                return Verdict.remove(f"top_{n}_gram", **values)
        for n, limit in c.dup_n_grams:
            frac = values[f"dup_{n}_gram_frac"] = repeated_ngram_chars(words, n) / size
            if frac > limit:
                return Verdict.remove(f"duplicated_{n}_n_grams", **values)
        return Verdict.keep(**values)


# -- C4 -----------------------------------------------------------------------------------------

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_C4_END_PUNCTUATION = (".", "?", "!", '"', "'")
_POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


@dataclass(kw_only=True)
class C4QualityConfig(Config):
    """C4's line and page rules. Lines that fail a line rule are dropped from the text; the
    document is removed if it contains lorem ipsum or a curly bracket, or keeps too few
    sentences."""

    split_paragraph: bool = True
    """Apply the line rules to lines (C4). False (sentences) is not supported."""
    remove_citations: bool = True
    """Delete Wikipedia-style markers: [1], [edit], [citation needed]."""
    filter_no_terminal_punct: bool = True
    """Drop lines not ending in . ? ! " ' (or ending in '...'). FineWeb turns this off."""
    min_num_sentences: int = 5
    """Remove documents with fewer sentences left (-1: no limit)."""
    min_words_per_line: int = 3
    """Drop lines with fewer whitespace-separated words (-1: no limit)."""
    max_word_length: int = 1000
    """Drop lines with a longer word (-1: no limit)."""
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    """Drop lines mentioning javascript."""
    filter_curly_bracket: bool = True
    filter_policy: bool = True
    """Drop lines about cookies, privacy policy or terms of use."""

    def validate(self) -> None:
        require(self.split_paragraph, "split_paragraph", "only line splitting (true) is supported")


@register_step("c4_quality")
class C4Quality(DocumentStep[C4QualityConfig]):
    Config = C4QualityConfig

    def __call__(self, doc: CurateDocument) -> Verdict:
        c = self.config
        sentences = 0
        kept: list[str] = []
        dropped = 0
        for line in doc.text.splitlines():
            line = line.strip()
            words = line.split()
            if c.max_word_length != -1 and any(len(w) > c.max_word_length for w in words):
                dropped += 1
                continue
            if c.remove_citations:
                line = _CITATION.sub("", line)
            if c.filter_no_terminal_punct and (not line.endswith(_C4_END_PUNCTUATION) or line.endswith("...")):
                dropped += 1
                continue
            if len(words) < c.min_words_per_line:
                dropped += 1
                continue
            lower = line.lower()
            if c.filter_lorem_ipsum and "lorem ipsum" in lower:
                return Verdict.remove("lorem_ipsum")
            if c.filter_javascript and "javascript" in lower:
                dropped += 1
                continue
            if c.filter_curly_bracket and "{" in line:
                return Verdict.remove("curly_bracket")
            if c.filter_policy and any(p in lower for p in _POLICY_PHRASES):
                dropped += 1
                continue
            if c.min_num_sentences != -1:
                sentences += doc.count_sentences(line)
            kept.append(line)
        if sentences < c.min_num_sentences:
            return Verdict.remove("too_few_sentences", sentences=sentences, lines_dropped=dropped)
        doc.text = "\n".join(kept).strip()
        return Verdict.keep(sentences=sentences, lines_dropped=dropped)


# -- FineWeb ------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class FineWebQualityConfig(Config):
    """FineWeb's extra rules on lines: terminal punctuation, short lines, duplicated lines, and
    newlines per word (lists)."""

    line_punct_thr: float = 0.12
    """Least share of lines ending in a sentence terminator."""
    line_punct_exclude_zero: bool = False
    """Keep documents where no line ends in one (instead of removing them)."""
    stop_chars: list[str] | None = None
    """Line endings that count as terminal punctuation (default: Unicode sentence terminators)."""
    short_line_thr: float = 0.67
    """Most share of lines with at most `short_line_length` characters."""
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    """Most characters in duplicated lines, as a share of the text without newlines."""
    new_line_ratio: float = 0.3
    """Most newlines per word."""


@register_step("fineweb_quality")
class FineWebQuality(DocumentStep[FineWebQualityConfig]):
    Config = FineWebQualityConfig

    def __init__(self, config: Config, *, label: str | None = None):
        super().__init__(config, label=label)
        stop = self.config.stop_chars
        self._stop_chars = tuple(TERMINAL_PUNCTUATION if stop is None else stop)

    def __call__(self, doc: CurateDocument) -> Verdict:
        c = self.config
        text = doc.text
        lines = [line for line in text.split("\n") if line.strip() != ""]
        if not lines:
            return Verdict.remove("empty")
        values: dict = {}
        ratio = values["line_punct_ratio"] = sum(line.endswith(self._stop_chars) for line in lines) / len(lines)
        if ratio < c.line_punct_thr and not (ratio == 0 and c.line_punct_exclude_zero):
            return Verdict.remove("line_punct_ratio", **values)
        ratio = values["short_line_ratio"] = sum(len(line) <= c.short_line_length for line in lines) / len(lines)
        if ratio > c.short_line_thr:
            return Verdict.remove("short_line_ratio", **values)
        ratio = values["char_dup_ratio"] = duplicates(lines)[1] / len(text.replace("\n", ""))
        if ratio > c.char_duplicates_ratio:
            return Verdict.remove("char_dup_ratio", **values)
        n_words = len(doc.words)
        if n_words == 0:
            return Verdict.remove("no_words", **values)
        ratio = values["new_line_ratio"] = text.count("\n") / n_words
        if ratio > c.new_line_ratio:
            return Verdict.remove("list_ratio", **values)
        return Verdict.keep(**values)


# -- length and URL -----------------------------------------------------------------------------


@dataclass(kw_only=True)
class LengthConfig(Config):
    """Bounds on size; `None` disables a bound. Words are whitespace-separated."""

    min_chars: int | None = None
    max_chars: int | None = None
    min_words: int | None = None
    max_words: int | None = None


@register_step("length")
class Length(DocumentStep[LengthConfig]):
    Config = LengthConfig

    def __call__(self, doc: CurateDocument) -> Verdict:
        c = self.config
        chars = len(doc.text)
        words = len(doc.text.split())
        if c.min_chars is not None and chars < c.min_chars:
            return Verdict.remove("too_few_chars", chars=chars, words=words)
        if c.max_chars is not None and chars > c.max_chars:
            return Verdict.remove("too_many_chars", chars=chars, words=words)
        if c.min_words is not None and words < c.min_words:
            return Verdict.remove("too_few_words", chars=chars, words=words)
        if c.max_words is not None and words > c.max_words:
            return Verdict.remove("too_many_words", chars=chars, words=words)
        return Verdict.keep(chars=chars, words=words)


@dataclass(kw_only=True)
class UrlBlocklistConfig(Config):
    """Remove documents whose URL (from `metadata.<url_field>`) is on a domain in the list, or
    contains a banned substring. A domain also blocks its subdomains."""

    domains: list[str] = field(default_factory=list)
    domain_files: list[str] = field(default_factory=list)
    """Text files with one domain a line ('#' starts a comment)."""
    banned_substrings: list[str] = field(default_factory=list)
    url_field: str = "url"
    remove_missing_url: bool = False
    """Remove documents that have no URL (otherwise they pass)."""

    def validate(self) -> None:
        for i, path in enumerate(self.domain_files):
            require(Path(path).is_file(), f"domain_files[{i}]", f"{path}: no such file")


@register_step("url_blocklist")
class UrlBlocklist(DocumentStep[UrlBlocklistConfig]):
    Config = UrlBlocklistConfig

    def input_files(self) -> list[str]:
        return list(self.config.domain_files)

    def setup(self) -> None:
        c = self.config
        domains = {d.strip().lower().lstrip(".") for d in c.domains}
        for path in c.domain_files:
            with open(path, encoding="utf-8") as f:
                domains.update(line.split("#")[0].strip().lower().lstrip(".") for line in f)
        self._domains = {d for d in domains if d}
        self._banned = [s.lower() for s in c.banned_substrings]

    def __call__(self, doc: CurateDocument) -> Verdict:
        c = self.config
        url = doc.metadata.get(c.url_field)
        if not isinstance(url, str) or not url:
            return Verdict.remove("no_url") if c.remove_missing_url else Verdict.keep()
        try:
            host = (urlsplit(url if _SCHEME.match(url) else f"//{url}").hostname or "").lower()
        except ValueError:  # unparseable URL: judged by the substring rules only
            host = ""
        parts = host.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in self._domains:
                return Verdict.remove("blocked_domain", domain=".".join(parts[i:]))
        lowered = url.lower()
        for s in self._banned:
            if s in lowered:
                return Verdict.remove("banned_url_substring", substring=s)
        return Verdict.keep()


# -- OLMo 2 periodic repetition on token ids -----------------------------------------------------


@dataclass(kw_only=True)
class TokenRepetitionConfig(Config):
    """OLMo 2's spike fix applied to documents: remove those in which a pattern of 1..max_period
    tokens repeats back to back min_repeats times or more."""

    tokenizer: str = "olmo2"
    """A known name (olmo2) or a tokenizer.json / folder."""
    max_period: int = 13
    min_repeats: int = 32

    def validate(self) -> None:
        require(self.max_period >= 1, "max_period", f"must be >= 1, got {self.max_period}")
        require(self.min_repeats >= 2, "min_repeats", f"must be >= 2, got {self.min_repeats}")


@register_step("token_repetition")
class TokenRepetition(DocumentStep[TokenRepetitionConfig]):
    Config = TokenRepetitionConfig

    def input_files(self) -> list[str]:
        path = Path(self.config.tokenizer)
        return [str(path / "tokenizer.json" if path.is_dir() else path)] if path.exists() else []

    def setup(self) -> None:
        from lmforge.data.tokenizer import load_tokenizer

        self._tokenizer = load_tokenizer(self.config.tokenizer)

    def __call__(self, doc: CurateDocument) -> Verdict:
        import numpy as np

        from lmforge.data.repetition import longest_repetition

        c = self.config
        ids = np.asarray(self._tokenizer.encode(doc.text), dtype=np.int64)
        period, times = longest_repetition(ids, c.max_period)
        if times >= c.min_repeats:
            return Verdict.remove("periodic_repetition", period=period, repeats=times)
        return Verdict.keep(period=period, repeats=times)
