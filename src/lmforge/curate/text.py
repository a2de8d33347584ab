"""Splitting text into words and sentences the way the published filters count them.

The Gopher, C4 and FineWeb heuristics were defined (and are implemented by datatrove) on the
words of spaCy's English tokenizer. Thresholds such as "at least 50 words" only reproduce the
published decisions if words are counted the same way, so we use spaCy's rules, not a regex
of our own. What we change is the cost:

* spaCy's tokenizer splits text on whitespace and then tokenizes each whitespace-free chunk
  on its own (prefixes, suffixes, infixes, exceptions like "cannot" → "can", "not"). A
  chunk's tokens therefore do not depend on its neighbours, and we can memoise them: a
  dictionary lookup per chunk instead of building a spaCy `Doc` per document. Unseen chunks
  of a document go to spaCy in one call. On English text this is ~50× faster, and the test
  suite checks the words are identical to spaCy's on the whole test corpus.
* Sentence counts (C4's "at least 5 sentences") replay spaCy's rule-based `Sentencizer` on
  the same memoised tokens, including the whitespace tokens it sees between runs of spaces.

The memo is per process and bounded, and spaCy is only called inside memory zones (it forgets
what it learnt afterwards), so memory stays flat on a long run.
"""

from __future__ import annotations

import re
import string
import sys
from functools import cached_property
from itertools import chain

# Characters that make a "word" a symbol in Gopher's rules, and that are turned into spaces
# before MinHash shingling: ASCII punctuation, C0/C1 control characters except tab and newline,
# and a set of typographic and CJK marks. This is exactly the set datatrove's filters use
# (tests/test_curate_parity.py checks it), so that the same documents are kept.
_EXTRA_PUNCTUATION = (
    0x00AB, 0x00B4, 0x00BB, 0x2013, 0x2014, 0x2019, 0x201C, 0x201D, 0x201E, 0x2026, 0x2236, 0x2501,
    0x25BA, 0x3001, 0x3002, 0x3008, 0x3009, 0x300A, 0x300B, 0x300C, 0x300D, 0x3010, 0x3011, 0xFF01,
    0xFF05, 0xFF08, 0xFF09, 0xFF0C, 0xFF0E, 0xFF11, 0xFF1A, 0xFF1B, 0xFF1F, 0xFF5E,
)  # fmt: skip
_CONTROL = [c for c in range(160) if (c < 32 or c >= 127) and c not in (9, 10)]
PUNCTUATION = string.punctuation + "".join(map(chr, _EXTRA_PUNCTUATION + tuple(_CONTROL)))

# Unicode sentence terminators (the Sentence_Terminal property as of Unicode 14, plus three
# Khmer signs), used by FineWeb's "lines ending in punctuation" rule.
_TERMINAL_CODEPOINTS = (
    0x0021, 0x002E, 0x003F, 0x0589, 0x061D, 0x061E, 0x061F, 0x06D4, 0x0700, 0x0701, 0x0702, 0x07F9,
    0x0837, 0x0839, 0x083D, 0x083E, 0x0964, 0x0965, 0x104A, 0x104B, 0x1362, 0x1367, 0x1368, 0x166E,
    0x1735, 0x1736, 0x17D4, 0x17D5, 0x17D6, 0x17D9, 0x17DA, 0x1803, 0x1809, 0x1944, 0x1945, 0x1AA8,
    0x1AA9, 0x1AAA, 0x1AAB, 0x1B5A, 0x1B5B, 0x1B5E, 0x1B5F, 0x1B7D, 0x1B7E, 0x1C3B, 0x1C3C, 0x1C7E,
    0x1C7F, 0x203C, 0x203D, 0x2047, 0x2048, 0x2049, 0x2E2E, 0x2E3C, 0x2E53, 0x2E54, 0x3002, 0xA4FF,
    0xA60E, 0xA60F, 0xA6F3, 0xA6F7, 0xA876, 0xA877, 0xA8CE, 0xA8CF, 0xA92F, 0xA9C8, 0xA9C9, 0xAA5D,
    0xAA5E, 0xAA5F, 0xAAF0, 0xAAF1, 0xABEB, 0xFE52, 0xFE56, 0xFE57, 0xFF01, 0xFF0E, 0xFF1F, 0xFF61,
    0x10A56, 0x10A57, 0x10F55, 0x10F56, 0x10F57, 0x10F58, 0x10F59, 0x10F86, 0x10F87, 0x10F88,
    0x10F89, 0x11047, 0x11048, 0x110BE, 0x110BF, 0x110C0, 0x110C1, 0x11141, 0x11142, 0x11143,
    0x111C5, 0x111C6, 0x111CD, 0x111DE, 0x111DF, 0x11238, 0x11239, 0x1123B, 0x1123C, 0x112A9,
    0x1144B, 0x1144C, 0x115C2, 0x115C3, 0x115C9, 0x115CA, 0x115CB, 0x115CC, 0x115CD, 0x115CE,
    0x115CF, 0x115D0, 0x115D1, 0x115D2, 0x115D3, 0x115D4, 0x115D5, 0x115D6, 0x115D7, 0x11641,
    0x11642, 0x1173C, 0x1173D, 0x1173E, 0x11944, 0x11946, 0x11A42, 0x11A43, 0x11A9B, 0x11A9C,
    0x11C41, 0x11C42, 0x11EF7, 0x11EF8, 0x11F43, 0x11F44, 0x16A6E, 0x16A6F, 0x16AF5, 0x16B37,
    0x16B38, 0x16B44, 0x16E98, 0x1BC9F, 0x1DA88,
)  # fmt: skip
TERMINAL_PUNCTUATION = frozenset(map(chr, _TERMINAL_CODEPOINTS))
PUNCTUATION_SET = frozenset(PUNCTUATION) | TERMINAL_PUNCTUATION

# Whitespace other than single spaces: spaCy makes tokens of it, which the Sentencizer sees.
_UNUSUAL_SPACE = re.compile(r"[^\S ]|  ")
_RUNS = re.compile(r"\S+|\s+")
_MEMO_LIMIT = 2_000_000  # chunks; cleared when full (~200 MB at worst)


def _import_spacy_without_torch():
    """Import spaCy. Its model library (thinc) imports torch when it is installed, which takes
    seconds and is never used by the tokenizer; unless torch is already loaded, hide it while
    spaCy loads (later `import torch` works as usual)."""
    if "spacy" in sys.modules or "torch" in sys.modules:
        import spacy

        return spacy
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
    try:
        import spacy
    finally:
        del sys.modules["torch"]
    return spacy


class SpacyWords:
    """spaCy English tokenization, memoised per whitespace-free chunk (see module doc)."""

    def __init__(self, language: str = "en"):
        self.language = language
        self._chunks: dict[str, tuple[str, ...]] = {}
        self._punct: dict[str, bool] = {}

    @cached_property
    def _nlp(self):
        spacy = _import_spacy_without_torch()
        from spacy.pipeline import Sentencizer

        nlp = spacy.blank(self.language)
        self._sentence_punct = frozenset(Sentencizer.default_punct_chars)
        self._sentence_punct_re = re.compile("|".join(map(re.escape, sorted(self._sentence_punct, key=len, reverse=True))))
        # Chunks of letters only are one token unless they are a tokenizer exception ("cannot",
        # "gonna"): every prefix, suffix and infix rule needs a non-letter to match.
        self._exceptions = frozenset(nlp.tokenizer.rules)
        # spaCy's own symbol names (IS_ALPHA, ORTH, ...) break its vocabulary when first seen
        # inside a memory zone; give them permanent lexemes now, outside one.
        from spacy.symbols import IDS

        for name in IDS:
            if name:
                nlp.vocab[name]  # noqa: B018
        return nlp

    def _learn(self, chunks: list[str]) -> None:
        """Tokenize unseen chunks with spaCy in one call and remember their tokens."""
        nlp = self._nlp
        if len(self._chunks) + len(chunks) > _MEMO_LIMIT:
            self._chunks.clear()
            self._punct.clear()
        hard = []
        for chunk in chunks:
            if chunk.isalpha() and chunk not in self._exceptions:
                self._chunks[chunk] = (chunk,)
            else:
                hard.append(chunk)
        if not hard:
            return
        # In a memory zone spaCy forgets the strings and lexemes it made for this call afterwards;
        # without it its vocabulary grows with every new word of a long run.
        with nlp.memory_zone():
            doc = nlp.tokenizer(" ".join(hard))
            i = 0
            pieces: list[str] = []
            for token in doc:
                pieces.append(token.text)
                if token.whitespace_ or token.i == len(doc) - 1:
                    self._chunks[hard[i]] = tuple(pieces)
                    pieces = []
                    i += 1

    def words(self, text: str) -> list[str]:
        """spaCy's non-whitespace tokens of `text`, as datatrove's `split_into_words` gives."""
        chunks = text.split()
        try:
            return list(chain.from_iterable(map(self._chunks.__getitem__, chunks)))
        except KeyError:
            self._learn([c for c in dict.fromkeys(chunks) if c not in self._chunks])
            try:
                return list(chain.from_iterable(map(self._chunks.__getitem__, chunks)))
            except KeyError:  # the memo was cleared while learning: learn this text's chunks again
                self._learn(list(dict.fromkeys(chunks)))
                return list(chain.from_iterable(map(self._chunks.__getitem__, chunks)))

    def _tokens_with_spaces(self, line: str) -> list[str]:
        """spaCy's token texts for `line`, including the whitespace tokens it makes for runs of
        whitespace other than a single space after a token (the Sentencizer sees those)."""
        if not _UNUSUAL_SPACE.search(line):
            return self.words(line)
        tokens: list[str] = []
        for m in _RUNS.finditer(line):
            run = m.group()
            if not run[0].isspace():
                tokens.extend(self.words(run))
                continue
            # A run that starts with ' ' after a token: that space belongs to the token.
            if m.start() > 0 and run[0] == " ":
                run = run[1:]
            if run:
                tokens.append(run)
        return tokens

    def count_sentences(self, line: str) -> int:
        """Sentences spaCy's Sentencizer finds in `line` (as datatrove's C4 filter counts them:
        an empty line counts as one)."""
        self._nlp  # noqa: B018  (loads the sentence punctuation)
        if not self._sentence_punct_re.search(line):
            return 1  # no sentence-ending character: one sentence (or an empty line)
        tokens = self._tokens_with_spaces(line)
        if not tokens:
            return 1
        punct_chars = self._sentence_punct
        sentences = 1
        seen_period = False
        for token in tokens:
            in_punct_chars = token in punct_chars
            if seen_period and not in_punct_chars and not self._is_punct(token):
                sentences += 1
                seen_period = False
            elif in_punct_chars:
                seen_period = True
        return sentences

    @cached_property
    def _sentence_nlp(self):
        """spaCy's blank pipeline with its rule-based Sentencizer: how datatrove cuts sentences
        (`split_into_parts(..., SENTENCE)`). Run on whole texts: used where exact sentence
        spans matter more than speed (the classifier's sentence mode)."""
        spacy = _import_spacy_without_torch()
        from spacy.symbols import IDS

        nlp = spacy.blank(self.language)
        nlp.add_pipe("sentencizer")
        for name in IDS:  # as in `_nlp`: symbol names first seen in a memory zone break the vocabulary
            if name:
                nlp.vocab[name]  # noqa: B018
        return nlp

    def sentence_ends(self, text: str) -> list[int]:
        """Where each sentence of `text` ends (character offsets), as spaCy's Sentencizer finds them."""
        nlp = self._sentence_nlp
        nlp.max_length = len(text) + 10
        with nlp.memory_zone():
            return [sentence.end_char for sentence in nlp(text).sents]

    def _is_punct(self, token: str) -> bool:
        known = self._punct.get(token)
        if known is None:
            with self._nlp.memory_zone():
                known = self._punct[token] = bool(self._nlp.vocab[token].is_punct)
        return known
