"""lmforge's curation text helpers and quality filters against datatrove's (the peer).

Everything runs on `build_sample_corpus()` (2,400 documents of real and generated text, built
to trip every rule of the Gopher, C4 and FineWeb filters some of the time):

* words: `SpacyWords().words(text)` is `datatrove.utils.text.split_into_words(text)` for
  every document; sentence counts are `len(split_into_sentences(line))` for every line;
* filters: for every document and several configurations (the defaults and others), our
  Gopher quality, Gopher repetition, C4 and FineWeb filters keep or remove exactly the
  documents datatrove's do, for the same reason, and C4 leaves the same text;
* the FineWeb chain (repetition → quality → C4 without the punctuation rule → FineWeb)
  keeps the same documents with the same text.

datatrove's spaCy tokenizer is slow (~30k words/s), so its side is computed once per module,
on up to two processes, with `split_into_parts`'s cache made unbounded inside the workers (a
pure function: the same text gives the same words, whichever filter asks).
"""

from __future__ import annotations

import collections
import functools
import multiprocessing
import os
import time

import pytest

pytest.importorskip("datatrove")
pytest.importorskip("spacy")

from sample_corpus import build_sample_corpus  # noqa: E402
from lmforge.curate.text import PUNCTUATION_SET, TERMINAL_PUNCTUATION, SpacyWords  # noqa: E402

# Configurations compared, per filter: the defaults first, then others (field names are the
# constructor arguments of datatrove's filters and of our configs alike).
FILTER_CONFIGS: dict[str, list[dict]] = {
    "gopher_quality": [
        {},
        {"min_doc_words": 20, "max_avg_word_length": 12, "max_doc_words": 500},
        # None disables a rule; without a word limit, datatrove divides by zero on texts without words
        {"min_doc_words": None, "min_avg_word_length": 4, "max_avg_word_length": None, "max_symbol_word_ratio": 0.03,
         "max_bullet_lines_ratio": 0.5, "max_ellipsis_lines_ratio": None, "max_non_alpha_words_ratio": 0.7,
         "min_stop_words": 4, "stop_words": ["the", "and", "of", "a", "in", "is", "to"]},
    ],
    "gopher_repetition": [
        {},
        {"dup_line_frac": 0.2, "dup_para_frac": 0.2, "dup_line_char_frac": 0.1, "dup_para_char_frac": 0.1,
         "top_n_grams": [[2, 0.1], [3, 0.09], [4, 0.08]], "dup_n_grams": [[5, 0.1], [8, 0.08], [10, 0.05]]},
        {"dup_line_frac": None, "dup_para_frac": 0.5, "dup_line_char_frac": None, "dup_para_char_frac": 0.4,
         "top_n_grams": [[1, 0.3], [2, 0.25]], "dup_n_grams": [[3, 0.2], [6, 0.14], [12, 0.08]]},
    ],
    "c4_quality": [
        {},
        {"filter_no_terminal_punct": False},
        {"remove_citations": False, "min_num_sentences": 3, "min_words_per_line": 5, "max_word_length": 40,
         "filter_lorem_ipsum": False, "filter_javascript": False, "filter_curly_bracket": False,
         "filter_policy": False},
        {"min_num_sentences": 2, "min_words_per_line": -1, "max_word_length": -1, "filter_no_terminal_punct": False},
    ],
    "fineweb_quality": [
        {},
        {"line_punct_thr": 0.2},
        {"line_punct_exclude_zero": True, "short_line_thr": 0.5, "short_line_length": 20,
         "char_duplicates_ratio": 0.05, "new_line_ratio": 0.2},
        {"stop_chars": [".", "!", "?", '"']},
    ],
}
# The order FineWeb applies them in; C4 without its terminal-punctuation rule.
CHAIN = [("gopher_repetition", {}), ("gopher_quality", {}), ("c4_quality", {"filter_no_terminal_punct": False}),
         ("fineweb_quality", {})]  # fmt: skip

# Removal reasons each filter must give at least MIN_FIRES times, summed over its configurations.
EXPECTED_REASONS = {
    "gopher_quality": ["gopher_short_doc", "gopher_long_doc", "gopher_below_avg_threshold",
                       "gopher_above_avg_threshold", "gopher_too_many_hashes", "gopher_too_many_ellipsis",
                       "gopher_too_many_bullets", "gopher_too_many_end_ellipsis", "gopher_below_alpha_threshold",
                       "gopher_enough_stop_words"],
    "gopher_repetition": ["empty", "dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac",
                          "top_2_gram", "top_3_gram", "top_4_gram", "duplicated_5_n_grams",
                          "duplicated_10_n_grams"],
    "c4_quality": ["lorem_ipsum", "curly_bracket", "too_few_sentences"],
    "fineweb_quality": ["empty", "line_punct_ratio", "short_line_ratio", "char_dup_ratio", "list_ratio"],
}  # fmt: skip
# C4's line rules (datatrove's stat names) that must drop lines under the default configuration.
EXPECTED_C4_LINE_RULES = ["line-filter-too_long_word", "line-filter-no_terminal_punc", "line-filter-too_few_words",
                          "line-filter-javascript", "line-filter-policy"]  # fmt: skip
MIN_FIRES = 3  # ("empty" fires once per configuration: the corpus has one empty text)
MAX_PEER_ERRORS = 20  # documents where datatrove raises (ZeroDivisionError on texts without words)

WORD_EDGE_CASES = [
    "", " ", "\n\n", "a  b", "a\tb", "a \t b", "\n\nfoo\n\nbar\n\n", "  lead and trail  ", "cannot", "Cannot stop",
    "don't", "I'm gonna go", "10km away", "5kg", "U.S. and N.Y.", "e.g. this", "https://example.com/a?b=c&d=1",
    "mail info@example.com now", "👩‍💻 hi 🇬🇧!", "emoji😀inside", "“quoted” — dash – en … ellipsis",
    "a\u00a0b", "a\u3000b", "a\u2009b", "zero\u200bwidth", "line\r\nbreak", "form\x0cfeed", "sep\u2028line",
    "$5.99 (50%)", "well-known e-mail", "...", "…", "--", "a-b-c", "hello,world", "end.)", "C++ and node.js",
    "'em y'all o'clock", "Ph.D. St. No. 5", "#hashtag #1", "3pm 9:30 24/7", "ﬁ ligature", "ÉCOLE café",
]  # fmt: skip
SENTENCE_EDGE_CASES = [
    "", "Hi.  !", "Hello . . . world", "Mr. Smith went.  Then he left!", "a\tb. c", "a.\tb.", "x.  \t  y",
    "Wait... what?! Really?", "One. Two. Three.", "“Quoted.” Next", "no punctuation here", "?!", ". . .",
    "end.)", "Dr. No. 5!", "So…  then。 And！ more", "a. (b) c", "Yes!!! No??? Maybe...", "\t.\t", "e.g. U.S. ok.",
    "One.\u00a0Two.", "One.\u3000Two.", "It is 3.14. Pi.", "'Hi.' 'Bye.'", "[1]. Next",
]  # fmt: skip


# -- the corpus and datatrove's answers on it ------------------------------------------------------


@pytest.fixture(scope="module")
def corpus():
    start = time.perf_counter()
    sample = build_sample_corpus()
    print(f"\nbuilt {len(sample.documents)} documents in {time.perf_counter() - start:.2f}s")
    assert len(sample.documents) >= 2000
    return sample.documents


def _peer_filter(name: str, config: dict):
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    cls = {"gopher_quality": GopherQualityFilter, "gopher_repetition": GopherRepetitionFilter,
           "c4_quality": C4QualityFilter, "fineweb_quality": FineWebQualityFilter}[name]  # fmt: skip
    if "stop_chars" in config:
        config = {**config, "stop_chars": tuple(config["stop_chars"])}
    return cls(**config)


def _peer_decide(filt, doc) -> tuple[bool, str]:
    """datatrove's filter(doc) as (kept, reason); raises what datatrove raises."""
    result = filt.filter(doc)
    if result is True:
        return True, ""
    if isinstance(result, tuple):
        return bool(result[0]), str(result[1])
    return bool(result), ""


def _peer_chunk(docs: list[tuple[str, str]]) -> dict:
    """datatrove's words, sentence counts, filter decisions and chain results for some documents."""
    import datatrove.utils.text as dt_text
    from datatrove.data import Document
    from datatrove.utils.text import split_into_sentences, split_into_words

    start, cpu_start = time.perf_counter(), time.process_time()
    original = dt_text.split_into_parts
    dt_text.split_into_parts = functools.lru_cache(maxsize=None)(original.__wrapped__)
    try:
        filters = {(name, i): _peer_filter(name, cfg) for name, cfgs in FILTER_CONFIGS.items()
                   for i, cfg in enumerate(cfgs)}  # fmt: skip
        chain = [_peer_filter(name, cfg) for name, cfg in CHAIN]
        out: dict = {"words": {}, "sentences": {}, "decisions": {key: {} for key in filters}, "chain": {}}
        for doc_id, text in docs:
            out["words"][doc_id] = split_into_words(text)
            for line in text.splitlines():
                line = line.strip()
                if line not in out["sentences"]:
                    out["sentences"][line] = len(split_into_sentences(line))
            for key, filt in filters.items():
                doc = Document(text=text, id=doc_id)
                try:
                    kept, reason = _peer_decide(filt, doc)
                except Exception as e:  # noqa: BLE001  (datatrove divides by zero on some texts)
                    out["decisions"][key][doc_id] = ("error", f"{type(e).__name__}: {e}", None)
                    continue
                out["decisions"][key][doc_id] = (kept, reason, doc.text if kept and doc.text != text else None)
            doc = Document(text=text, id=doc_id)
            result = (True, "", None)
            for (name, _), filt in zip(CHAIN, chain):
                try:
                    kept, reason = _peer_decide(filt, doc)
                except Exception as e:  # noqa: BLE001
                    result = ("error", f"{name}: {type(e).__name__}: {e}", None)
                    break
                if not kept:
                    result = (False, f"{name}: {reason}", None)
                    break
            else:
                result = (True, "", doc.text)
            out["chain"][doc_id] = result
        out["c4_line_stats"] = {
            i: {k: v.total for k, v in filters[("c4_quality", i)].stats.stats.items()}
            for i in range(len(FILTER_CONFIGS["c4_quality"]))
        }
        out["seconds"] = time.perf_counter() - start
        out["cpu_seconds"] = time.process_time() - cpu_start
        return out
    finally:
        dt_text.split_into_parts = original


@pytest.fixture(scope="module")
def peer(corpus):
    """datatrove's answers for the whole corpus, computed on up to two processes."""
    items = [(d["id"], d["text"]) for d in corpus]
    n_proc = min(2, os.cpu_count() or 1)
    start = time.perf_counter()
    if n_proc > 1 and "fork" in multiprocessing.get_all_start_methods():
        # equal texts in the same task (the worker's cache answers the copy); long texts first, in
        # 8 tasks per process that the pool hands out as workers free up
        by_text: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
        for item in items:
            by_text[item[1]].append(item)
        chunks: list[list[tuple[str, str]]] = [[] for _ in range(8 * n_proc)]
        loads = [0] * len(chunks)
        for text in sorted(by_text, key=len, reverse=True):
            k = loads.index(min(loads))
            chunks[k].extend(by_text[text])
            loads[k] += len(text) + 100 * text.count("\n") + 200
        with multiprocessing.get_context("fork").Pool(n_proc) as pool:
            parts = pool.map(_peer_chunk, chunks, chunksize=1)
    else:
        parts = [_peer_chunk(items)]
    merged: dict = {"words": {}, "sentences": {}, "decisions": collections.defaultdict(dict), "chain": {},
                    "c4_line_stats": collections.defaultdict(collections.Counter)}  # fmt: skip
    for part in parts:
        merged["words"].update(part["words"])
        merged["sentences"].update(part["sentences"])
        merged["chain"].update(part["chain"])
        for key, decisions in part["decisions"].items():
            merged["decisions"][key].update(decisions)
        for i, stats in part["c4_line_stats"].items():
            merged["c4_line_stats"][i].update(stats)
    cpu = sum(p["cpu_seconds"] for p in parts)
    print(f"\ndatatrove on {len(items)} documents: {time.perf_counter() - start:.1f}s on {n_proc} process(es), "
          f"{cpu:.1f}s CPU")
    return merged


# -- words, sentences, punctuation -------------------------------------------------------------------


def test_punctuation_sets_match_datatrove():
    from datatrove.utils import text as dt_text

    assert set(PUNCTUATION_SET) == set(dt_text.PUNCTUATION_SET)
    assert set(TERMINAL_PUNCTUATION) == set(dt_text.TERMINAL_PUNCTUATION)


def test_words_edge_cases():
    """Each case on a fresh memo, then all again on the memo the first pass filled."""
    from datatrove.utils.text import split_into_words

    splitter = SpacyWords()
    wrong = [t for t in WORD_EDGE_CASES + WORD_EDGE_CASES[::-1] if splitter.words(t) != split_into_words(t)]
    assert not wrong, [(t, splitter.words(t), split_into_words(t)) for t in wrong]


@pytest.mark.xfail(strict=True, reason="known difference: once spaCy has seen 'IS_ALPHA' (a spaCy symbol name) "
                   "inside a memory zone it raises on it, and datatrove then deletes 'IS_ALPHA' from the text; "
                   "we keep the word")
def test_words_is_alpha_quirk():
    from datatrove.utils.text import split_into_words

    split_into_words("IS_ALPHA")  # the first time in a process works
    assert SpacyWords().words("a IS_ALPHA b") == split_into_words("a IS_ALPHA b")


def test_sentences_edge_cases():
    from datatrove.utils.text import split_into_sentences

    splitter = SpacyWords()
    counts = [(line, splitter.count_sentences(line), len(split_into_sentences(line))) for line in SENTENCE_EDGE_CASES]
    assert all(ours == theirs for _, ours, theirs in counts), [c for c in counts if c[1] != c[2]]


@pytest.mark.slow
def test_words_match_datatrove_on_corpus(corpus, peer):
    splitter = SpacyWords()
    start = time.perf_counter()
    mismatches = [d["id"] for d in corpus if splitter.words(d["text"]) != peer["words"][d["id"]]]
    n_words = sum(len(w) for w in peer["words"].values())
    print(f"\nours: words of {len(corpus)} documents ({n_words} words) in {time.perf_counter() - start:.2f}s")
    if mismatches:
        doc = next(d for d in corpus if d["id"] == mismatches[0])
        ours, theirs = splitter.words(doc["text"]), peer["words"][doc["id"]]
        at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        pytest.fail(f"{len(mismatches)} documents split differently, first {doc['id']} at word {at}: "
                    f"ours {ours[max(0, at - 3) : at + 3]} vs datatrove {theirs[max(0, at - 3) : at + 3]}")  # fmt: skip


@pytest.mark.slow
def test_sentences_match_datatrove_on_corpus(corpus, peer):
    splitter = SpacyWords()
    start = time.perf_counter()
    lines = peer["sentences"]
    mismatches = [(line, splitter.count_sentences(line), n) for line, n in lines.items()
                  if splitter.count_sentences(line) != n]  # fmt: skip
    print(f"\nours: sentences of {len(lines)} distinct lines in {time.perf_counter() - start:.2f}s")
    assert not mismatches, f"{len(mismatches)} lines counted differently (line, ours, datatrove): {mismatches[:5]}"


# -- filters --------------------------------------------------------------------------------------------


def _ours(name: str, config: dict):
    from lmforge.curate import filters

    step, cfg = {"gopher_quality": (filters.GopherQuality, filters.GopherQualityConfig),
                 "gopher_repetition": (filters.GopherRepetition, filters.GopherRepetitionConfig),
                 "c4_quality": (filters.C4Quality, filters.C4QualityConfig),
                 "fineweb_quality": (filters.FineWebQuality, filters.FineWebQualityConfig)}[name]  # fmt: skip
    return step(cfg(**config))


@pytest.fixture(scope="module")
def splitter():
    """One splitter for the filter tests, so its memo is filled once (the word tests use fresh ones)."""
    return SpacyWords()


def _our_decisions(name: str, config: dict, corpus: list[dict], splitter: SpacyWords) -> dict:
    from lmforge.curate.steps import CurateDocument

    step = _ours(name, config)
    out = {}
    for d in corpus:
        doc = CurateDocument(d["id"], d["text"], d["source"], {}, splitter)
        verdict = step(doc)
        out[d["id"]] = (verdict.kept, verdict.reason, doc.text if verdict.kept and doc.text != d["text"] else None)
    return out


def _compare(ours: dict, theirs: dict, label: str) -> collections.Counter:
    """Assert equal decisions (skipping documents where datatrove raised); return reason counts."""
    errors = [i for i, t in theirs.items() if t[0] == "error"]
    assert len(errors) <= MAX_PEER_ERRORS, f"{label}: datatrove raised on {len(errors)} documents: {theirs[errors[0]]}"
    diffs = [(i, ours[i], theirs[i]) for i in theirs if theirs[i][0] != "error" and ours[i] != theirs[i]]
    if diffs:
        lines = [f"  {i}: ours {o[:2]} datatrove {t[:2]}" + (" (texts differ)" if o[:2] == t[:2] else "")
                 for i, o, t in diffs[:8]]  # fmt: skip
        pytest.fail(f"{label}: {len(diffs)} of {len(theirs)} documents decided differently:\n" + "\n".join(lines))
    reasons = collections.Counter(t[1] if not t[0] else "kept" for t in theirs.values() if t[0] != "error")
    reasons["datatrove_error (skipped)"] = len(errors)
    return reasons


FILTER_CASES = [(name, i) for name, cfgs in FILTER_CONFIGS.items() for i in range(len(cfgs))]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "index"), FILTER_CASES, ids=[f"{n}-{i}" for n, i in FILTER_CASES])
def test_filter_matches_datatrove(name, index, corpus, peer, splitter):
    config = FILTER_CONFIGS[name][index]
    start = time.perf_counter()
    ours = _our_decisions(name, config, corpus, splitter)
    seconds = time.perf_counter() - start
    reasons = _compare(ours, peer["decisions"][(name, index)], f"{name} {config}")
    removed = sum(n for r, n in reasons.items() if r not in ("kept", "datatrove_error (skipped)"))
    print(f"\n{name} {config}: ours {seconds:.2f}s, removed {removed}/{len(corpus)}: {dict(reasons.most_common())}")
    assert 0.05 <= removed / len(corpus) <= 0.95, f"{name} {config} removes {removed} of {len(corpus)} documents"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FILTER_CONFIGS))
def test_corpus_trips_every_rule(name, peer):
    """The comparison only means something if every rule decides some documents."""
    fired: collections.Counter = collections.Counter()
    for index in range(len(FILTER_CONFIGS[name])):
        fired.update(t[1] for t in peer["decisions"][(name, index)].values() if t[0] is False)
    print(f"\n{name}: reasons over all configurations: {dict(fired.most_common())}")
    rare = {r: fired[r] for r in EXPECTED_REASONS[name] if fired[r] < MIN_FIRES}
    assert not rare, f"{name}: rules that (almost) never fire on the sample corpus: {rare}"
    if name == "c4_quality":
        stats = peer["c4_line_stats"][0]
        print(f"c4 line rules (default configuration): {dict(stats)}")
        assert all(stats[rule] >= MIN_FIRES for rule in EXPECTED_C4_LINE_RULES), dict(stats)


@pytest.mark.slow
def test_fineweb_chain_matches_datatrove(corpus, peer, splitter):
    """Each filter sees the text the previous one left; the kept documents and texts must match."""
    from lmforge.curate.steps import CurateDocument

    steps = [(name, _ours(name, cfg)) for name, cfg in CHAIN]
    ours = {}
    start = time.perf_counter()
    for d in corpus:
        doc = CurateDocument(d["id"], d["text"], d["source"], {}, splitter)
        for name, step in steps:
            verdict = step(doc)
            if not verdict.kept:
                ours[d["id"]] = (False, f"{name}: {verdict.reason}", None)
                break
        else:
            ours[d["id"]] = (True, "", doc.text)
    seconds = time.perf_counter() - start
    reasons = _compare(ours, peer["chain"], "chain")
    kept = reasons["kept"]
    print(f"\nchain: ours {seconds:.2f}s, kept {kept}/{len(corpus)}: {dict(reasons.most_common())}")
    assert 0.05 <= kept / len(corpus) <= 0.95
