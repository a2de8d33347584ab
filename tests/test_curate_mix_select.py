"""`lmforge.curate.mix_select` alone: targets, selection and output order over hand-made counts,
no files. Expected values are worked out by hand from the rules in `lmforge.curate.mix`."""

from pathlib import Path

import numpy as np
import pytest

from lmforge.curate.mix_config import MixConfig, MixSource
from lmforge.curate.mix_select import (
    Selection,
    SourceIndex,
    doc_hash,
    mix64,
    output_order,
    seed_key,
    select_documents,
    token_targets,
)
from lmforge.errors import ConfigError

MASK64 = (1 << 64) - 1


def index(tokens: list[int], hashes: list[int] | None = None, name: str = "s", offset: int = 0) -> SourceIndex:
    """A source of len(tokens) documents; hashes default to a seed-0 doc_hash of ids d0, d1, …"""
    if hashes is None:
        hashes = [doc_hash(seed_key(0), name, f"d{i}", i) for i in range(len(tokens))]
    return SourceIndex(
        name=name,
        files=[],
        file_docs=[len(tokens)],
        tokens=np.array(tokens, dtype=np.int64),
        est_bytes=np.ones(len(tokens), dtype=np.int64),
        hashes=np.array(hashes, dtype=np.uint64),
        offset=offset,
    )


def config(proportions: list[float], total_tokens: int | None = None, max_repeats: float = 4.0) -> MixConfig:
    sources = [MixSource(name=n, paths=["unused"], proportion=p) for n, p in zip("abc", proportions)]
    return MixConfig(sources=sources, output=Path("unused"), total_tokens=total_tokens, max_repeats=max_repeats)


# -- targets --------------------------------------------------------------------------------------


def test_derived_total_is_the_largest_without_repeats():
    # a/p: 100/0.5 = 200, 30/0.5 = 60 → total 60; each source gets half.
    assert token_targets(config([0.5, 0.5]), [index([50, 50]), index([10, 20])]) == (60, [30, 30])
    # a/p: 90/0.75 = 120, 40/0.25 = 160 → total 120 → 90 (all of a) and 30.
    assert token_targets(config([0.75, 0.25]), [index([90]), index([40])]) == (120, [90, 30])


def test_given_total_upsamples_within_max_repeats():
    indexes = [index([50, 50]), index([10, 20])]
    # b's 100-token target is 3.33x its 30 tokens: allowed at 4, refused at 3.
    assert token_targets(config([0.5, 0.5], total_tokens=200), indexes) == (200, [100, 100])
    with pytest.raises(ConfigError, match=r"sources\[1\] \(b\).*3\.33x.*max_repeats=3"):
        token_targets(config([0.5, 0.5], total_tokens=200, max_repeats=3), indexes)


def test_targets_round_each_share():
    total, targets = token_targets(config([0.333333, 0.666667], total_tokens=1000), [index([200]), index([400])])
    assert (total, targets) == (1000, [333, 667])  # 333.333 → 333, 666.667 → 667


def test_sources_without_documents_or_tokens_are_refused():
    with pytest.raises(ConfigError, match=r"sources\[0\] \(a\): no documents found"):
        token_targets(config([0.5, 0.5]), [index([]), index([5])])
    with pytest.raises(ConfigError, match=r"sources\[1\] \(b\): its 2 documents have no tokens"):
        token_targets(config([0.5, 0.5]), [index([5]), index([0, 0])])


# -- selection ------------------------------------------------------------------------------------

# Three 10-token documents whose hashes put them in the order 1, 2, 0.
THREE = {"tokens": [10, 10, 10], "hashes": [3, 1, 2]}


@pytest.mark.parametrize(
    "target, copies, prefix, tokens, docs",
    [
        (60, 2, [], 60, 6),  # exactly two copies: no partial copy
        (45, 1, [1, 2], 50, 5),  # r=15: 10 undershoots by 5, 20 overshoots by 5 → take the overshoot
        (44, 1, [1], 40, 4),  # r=14: 10 undershoots by 4, 20 overshoots by 6 → stop at 10
        (5, 0, [1], 10, 1),  # r=5: a tie between 0 and 10 → the document is taken
        (4, 0, [], 0, 0),  # r=4: 0 is closer than 10
    ],
)
def test_select_takes_whole_copies_then_the_closest_hashed_prefix(target, copies, prefix, tokens, docs):
    sel = select_documents(index(**THREE), target)
    assert (sel.target, sel.full_copies, sel.prefix.tolist()) == (target, copies, prefix)
    assert (sel.selected_tokens, sel.selected_docs) == (tokens, docs)


def test_select_misses_by_at_most_half_a_document():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 50, size=200).tolist()
    ix = index(tokens)
    order = np.argsort(ix.hashes, kind="stable")
    available = sum(tokens)
    for target in [1, 17, available // 3, available - 1, available, 2 * available + 123, int(3.7 * available)]:
        sel = select_documents(ix, target)
        assert sel.full_copies == target // available
        assert sel.prefix.tolist() == order[: len(sel.prefix)].tolist()  # a prefix of the hashed order
        assert sel.selected_tokens == sel.full_copies * available + sum(tokens[i] for i in sel.prefix)
        assert sel.selected_docs == sel.full_copies * len(tokens) + len(sel.prefix)
        assert abs(sel.selected_tokens - target) <= max(tokens) / 2


def test_selection_is_fixed_by_the_seed():
    def chosen(seed: int) -> list[int]:
        hashes = [doc_hash(seed_key(seed), "web", f"doc-{i}", i) for i in range(100)]
        return sorted(select_documents(index([10] * 100, hashes), 500).prefix.tolist())

    assert len(chosen(0)) == 50
    assert chosen(0) == chosen(0)
    assert chosen(0) != chosen(1)


def test_doc_hash_separates_seed_source_and_position():
    key = seed_key(7)
    h = doc_hash(key, "web", "x", 0)
    assert h == doc_hash(seed_key(7), "web", "x", 0)
    assert 0 <= h <= MASK64
    others = [doc_hash(seed_key(8), "web", "x", 0), doc_hash(key, "books", "x", 0), doc_hash(key, "web", "x", 1)]
    assert len({h, *others}) == 4  # duplicate ids at other positions still get their own keys
    assert seed_key(-1) == b"\xff" * 16 and seed_key(1) == b"\x01" + b"\x00" * 15


# -- output order ---------------------------------------------------------------------------------


def splitmix64(x: int) -> int:
    """The reference finaliser on Python ints."""
    z = (x + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def test_mix64_is_splitmix64():
    assert int(mix64(np.array([0], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF  # splitmix64's first output, seed 0
    xs = [1, 2, 12345, MASK64, 1 << 63]
    assert mix64(np.array(xs, dtype=np.uint64)).tolist() == [splitmix64(x) for x in xs]


def test_output_order_is_a_permutation_of_the_selected_copies():
    a = index([5] * 5, name="a")
    b = index([5] * 4, name="b", offset=5)
    sel_a = Selection(target=0, full_copies=2, prefix=np.array([3, 1]), selected_tokens=0, selected_docs=12)
    sel_b = Selection(target=0, full_copies=0, prefix=np.array([2]), selected_tokens=0, selected_docs=1)
    doc, rep = output_order([a, b], [sel_a, sel_b])
    expected = [(d, j) for j in (0, 1) for d in range(5)] + [(3, 2), (1, 2), (5 + 2, 0)]
    assert len(doc) == len(rep) == 13
    assert sorted(zip(doc.tolist(), rep.tolist())) == sorted(expected)
    again = output_order([a, b], [sel_a, sel_b])
    assert doc.tolist() == again[0].tolist() and rep.tolist() == again[1].tolist()


def test_output_order_interleaves_sources_and_copies_by_seed():
    def order(seed: int) -> list[tuple[int, int]]:
        hashes = [doc_hash(seed_key(seed), "s", f"d{i}", i) for i in range(300)]
        ix = index([1] * 300, hashes)
        doc, rep = output_order([ix], [select_documents(ix, 750)])  # 2 copies + 150 documents
        return list(zip(doc.tolist(), rep.tolist()))

    rows = order(0)
    assert len(rows) == 750 and len(set(rows)) == 750
    reps = [r for _, r in rows]
    assert reps.count(0) == reps.count(1) == 300 and reps.count(2) == 150
    assert reps != sorted(reps)  # copies are interleaved, not written one after another
    assert [d for d, _ in rows] != sorted(d for d, _ in rows)
    assert rows == order(0) and rows != order(1)
