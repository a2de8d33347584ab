"""Held-out validation splits: which documents are held out, decided once for every writer.

`lmforge data tokenize --validation`, a curate pipeline's `tokenize: {validation: …}` and
`lmforge data mix` (`validation:`) all ask this module, so a document lands on the same side
whichever of them wrote it. No file is opened here.

The rule is a pure function of the document's id and a seed: `split_key(id, seed)` is a 64-bit
keyed BLAKE2b of the id (the seed is the key), so the split does not depend on file order,
sharding or the number of workers, and documents that share an id share a key and so a side.

* A fraction f (`validation: 0.01`) holds out every document whose key is < f·2⁶⁴: decided
  per document, with no global view, so the share is f in expectation (binomial around it).
* A count N (`validation_docs: N`) holds out exactly the N documents with the smallest keys
  (all of them if there are fewer); equal keys (in practice: a repeated id) are ordered by
  position, which callers make canonical (sorted input files, shard order). This needs every
  key before anything is routed; the writers get them without reading any text twice (see
  `lmforge.data.split_tokens` and `lmforge.curate.mix`). The one way two documents with one id
  can end on different sides: they straddle the N-th place; that is logged as a warning.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmforge.config import Config
from lmforge.errors import ConfigError

log = logging.getLogger(__name__)

TRAIN, VAL = "train", "val"
SIDES = (TRAIN, VAL)
"""The split's two sides, which are also the names of the folders they are written to."""

RULE = "blake2b-64 of the document id, keyed by the seed; val: key < fraction·2^64, or the N smallest keys"


def split_key(doc_id: str, seed: int) -> int:
    """The document's 64-bit split key: keyed BLAKE2b of its id (a domain prefix keeps it
    independent of the other id hashes lmforge takes, such as the mix's selection hash)."""
    h = hashlib.blake2b(digest_size=8, key=seed.to_bytes(16, "little", signed=True))
    h.update(b"lmforge.split\x00" + doc_id.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "little")


def split_keys(ids: list[str], seed: int) -> np.ndarray:
    """`split_key` of each id, as uint64."""
    return np.fromiter((split_key(i, seed) for i in ids), dtype=np.uint64, count=len(ids))


SPLIT_FIELDS = {"validation": None, "validation_docs": None, "validation_seed": 0}
"""The split options of a config (`tokenize:`, a mix) and their defaults (no split)."""


def without_unset_split(d: dict[str, Any]) -> dict[str, Any]:
    """A config's `to_dict()` without the split options when they are all at their defaults, so
    configs written before the options existed (pipeline.json, mix.json) read back unchanged and
    a run started then still resumes."""
    if all(d.get(k) == v for k, v in SPLIT_FIELDS.items()):
        return {k: v for k, v in d.items() if k not in SPLIT_FIELDS}
    return d


def check_split_options(fraction: float | None, docs: int | None, names: tuple[str, str]) -> None:
    """ConfigError naming the option (`names`: the fraction's and the count's) when the two are
    given together or one is out of range."""
    f_name, n_name = names
    if fraction is not None and docs is not None:
        raise ConfigError(f"{f_name} and {n_name}: give one of them (a fraction or a count of documents), not both")
    if fraction is not None and not 0 < fraction < 1:
        raise ConfigError(f"{f_name}: {fraction} is not a fraction in (0, 1); e.g. 0.01 holds out 1 % of documents")
    if docs is not None and docs < 1:
        raise ConfigError(f"{n_name}: {docs} must be >= 1 (documents to hold out); or drop it for no split")


@dataclass(frozen=True)
class ValidationSplit:
    """A held-out split: a `fraction` of documents or exactly `docs` of them, keyed by `seed`."""

    fraction: float | None = None
    docs: int | None = None
    seed: int = 0

    @classmethod
    def of(
        cls, fraction: float | None, docs: int | None, seed: int = 0,
        names: tuple[str, str] = ("validation", "validation_docs"),
    ) -> ValidationSplit | None:  # fmt: skip
        """The split the options ask for, or None for no split (neither given)."""
        check_split_options(fraction, docs, names)
        if fraction is None and docs is None:
            return None
        return cls(fraction=fraction, docs=docs, seed=seed)

    @property
    def needs_every_key(self) -> bool:
        """A count is decided over all documents at once; a fraction per document."""
        return self.docs is not None

    @property
    def threshold(self) -> int:
        """A fraction's cut: keys below it are held out."""
        assert self.fraction is not None, "a count has no per-document threshold"
        return min(int(self.fraction * 2.0**64), 2**64 - 1)

    def holds(self, key: int) -> bool:
        """Whether a fraction holds out the document with this key (no global view needed)."""
        return key < self.threshold

    def mask(self, keys: np.ndarray) -> np.ndarray:
        """True where a document (by its key, in canonical order) is held out. For a count,
        `keys` must be every document's."""
        keys = np.asarray(keys, dtype=np.uint64)
        if self.fraction is not None:
            return keys < np.uint64(self.threshold)
        assert self.docs is not None
        order = np.argsort(keys, kind="stable")  # ties by position
        held = np.zeros(len(keys), dtype=bool)
        held[order[: self.docs]] = True
        n = self.docs
        if n < len(keys) and keys[order[n - 1]] == keys[order[n]]:
            log.warning(
                f"validation_docs={n}: documents sharing one id (one split key) fall on both sides of the cut; "
                "give them distinct ids, or choose another count or seed, to keep them together"
            )
        return held

    def describe(self) -> dict[str, Any]:
        """The options, by their config names, and the rule they were applied with."""
        return {"validation": self.fraction, "validation_docs": self.docs, "validation_seed": self.seed, "rule": RULE}

    def record(self, side: str, documents: dict[str, int], tokens: dict[str, int]) -> dict[str, Any]:
        """The `split` entry of a side's token meta.json: which side it is, the options, and both
        sides' counts (so either folder tells the whole split)."""
        return {"side": side, **self.describe(), "documents": documents, "tokens": tokens}


@dataclass(kw_only=True)
class SplitOptions(Config):
    """The split options of a config that writes data (curate's `tokenize:`, a mix): a base
    class, so each writer has the same fields, checks and saved form. Where the held-out
    documents go is the writer's to say in its own docstring."""

    validation: float | None = None
    """Hold out this fraction of the documents, by a seeded hash of each id (`lmforge.data.split`,
    the rule `data tokenize --validation` uses)."""
    validation_docs: int | None = None
    """Hold out exactly this many documents (the smallest seeded id hashes) instead of a fraction."""
    validation_seed: int = 0
    """Seed of the split's id hash."""

    def check_split(self) -> None:
        """Called from the subclass's `validate()`."""
        check_split_options(self.validation, self.validation_docs, ("validation", "validation_docs"))

    @property
    def split(self) -> ValidationSplit | None:
        return ValidationSplit.of(self.validation, self.validation_docs, self.validation_seed)

    def to_dict(self) -> dict[str, Any]:
        """As `Config.to_dict`, leaving out the split options when unset (`without_unset_split`)."""
        return without_unset_split(super().to_dict())
