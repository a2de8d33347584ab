"""The curation pipeline: outputs, resume after SIGKILL, bad input, workers and Ray give the
same bytes, exact/URL/paragraph dedup, MinHash recall and precision on planted near-duplicates."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from conftest import kill_after_markers
import yaml

from lmforge.curate.minhash import MinHashConfig, MinHashDedup, shingle_hashes, simplify
from lmforge.curate.pipeline import CurateConfig, curate
from sample_corpus import build_sample_corpus, write_sample_corpus
from lmforge.curate.text import SpacyWords
from lmforge.errors import ConfigError

FILTERS = [
    {"gopher_repetition": {}},
    {"gopher_quality": {}},
    {"c4_quality": {"filter_no_terminal_punct": False}},
    {"fineweb_quality": {}},
]


@pytest.fixture(scope="module")
def corpus():
    return build_sample_corpus(n_docs=800, near_duplicates=200, exact_duplicates=20, seed=3)


@pytest.fixture(scope="module")
def corpus_dir(corpus, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(corpus, folder, n_files=6)
    return folder


def run(tmp: Path, inputs: Path, steps: list, name: str = "out", **extra) -> tuple[Path, dict]:
    config = CurateConfig.from_dict({"input": [str(inputs)], "output": str(tmp / name), "steps": steps, **extra})
    return tmp / name, curate(config, progress=False)


def read_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def output_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("stats.json", "stats.png", "pipeline.json", "pipeline.yaml")}  # fmt: skip


def test_outputs_account_for_every_document(tmp_path, corpus_dir, corpus):
    out, stats = run(tmp_path, corpus_dir, [*FILTERS, {"minhash_dedup": {}}, {"exact_dedup": {}}], workers=1)
    kept = [r for p in sorted((out / "documents").glob("*.gz")) for r in read_gz(p)]
    removed = [r for p in sorted((out / "removed").glob("*.gz")) for r in read_gz(p)]
    assert len(kept) + len(removed) == len(corpus.documents) == stats["input"]["documents"]
    assert {r["id"] for r in kept} | {r["id"] for r in removed} == {d["id"] for d in corpus.documents}
    # attributes files mirror the document files row by row (dolma's layout)
    for p in sorted((out / "documents").glob("*.gz")):
        docs, attrs = read_gz(p), read_gz(out / "attributes" / p.name)
        assert [d["id"] for d in docs] == [a["id"] for a in attrs]
        for d, a in zip(docs, attrs):
            assert a["attributes"]["gopher_quality__n_words"][0][:2] == [0, len(d["text"])]
    reasons = {r["removed_by"] for r in removed}
    assert {"gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality", "minhash_dedup"} <= reasons
    assert all(r["reason"] and isinstance(r["attributes"], dict) for r in removed)
    # the stats add up, step by step
    steps = stats["steps"]
    for before, after in zip(steps, steps[1:]):
        assert before["docs_out"] == after["docs_in"]
    assert steps[-1]["docs_out"] == len(kept) == stats["output"]["documents"]
    for s in steps:
        assert s["docs_in"] - s["docs_out"] == sum(s["removed"].values())
        assert sum(v["docs_out"] for v in s["sources"].values()) == s["docs_out"]
    assert (out / "stats.png").stat().st_size > 10_000
    assert not (out / "work").exists()


def test_one_and_two_workers_write_identical_bytes(tmp_path, corpus_dir):
    steps = [*FILTERS, {"minhash_dedup": {}}, {"paragraph_dedup": {"expected_paragraphs": 100_000}}]
    one, _ = run(tmp_path, corpus_dir, steps, "one", workers=1)
    two, _ = run(tmp_path, corpus_dir, steps, "two", workers=2)
    a, b = output_files(one), output_files(two)
    assert a.keys() == b.keys() and a == b


def test_ray_executor_matches_local(tmp_path, corpus_dir, monkeypatch):
    """Ray on compressed files cut into pieces (6 files of ~133 documents, 3 pieces each); its
    tasks' document counts reach the driver's progress bar."""
    pytest.importorskip("ray")
    from lmforge.curate.executors import StageProgress

    lives: list[int] = []

    class Recording(StageProgress):
        def set_live(self, live: int) -> None:
            lives.append(live)
            super().set_live(live)

    monkeypatch.setattr("lmforge.curate.pipeline.StageProgress", Recording)
    steps = [{"gopher_quality": {}}, {"minhash_dedup": {}}]
    local, _ = run(tmp_path, corpus_dir, steps, "local", workers=1, shard_docs=60)
    ray_out, stats = run(tmp_path, corpus_dir, steps, "ray", workers=2, executor="ray", shard_docs=60)
    a, b = output_files(local), output_files(ray_out)
    assert a == b and stats["output"]["documents"] > 0 and stats["input"]["shards"] == 18
    assert 0 < max(lives) <= stats["input"]["documents"]  # counts per stage; the first stage reads them all


def test_sigkill_then_resume_gives_the_clean_output(tmp_path, corpus_dir):
    steps = [*FILTERS, {"minhash_dedup": {}}, {"exact_dedup": {}}]
    clean, _ = run(tmp_path, corpus_dir, steps, "clean", workers=1)
    spec = {"input": [str(corpus_dir)], "output": str(tmp_path / "killed"), "steps": steps, "workers": 2}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "lmforge.cli", "data", "curate", str(tmp_path / "p.yaml"), "--quiet"]
    markers = tmp_path / "killed" / "work" / "stage-0"
    kill_after_markers(cmd, markers, 2)
    done = len(list(markers.glob("*.done.json")))
    assert 2 <= done < 6 and not (tmp_path / "killed" / "stats.json").exists()
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = output_files(clean), output_files(tmp_path / "killed")
    assert not [k for k in b if k.endswith(".tmp")]
    assert a == b


def test_bad_lines_go_to_rejects_and_the_run_continues(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = {"id": "a", "text": "The cat sat on the mat. " * 20, "source": "s"}
    lines = [json.dumps(good), "{not json", json.dumps({"id": "b", "source": "s"}), json.dumps(good | {"id": "c"})]
    (src / "x.jsonl").write_text("\n".join(lines) + "\n")
    out, stats = run(tmp_path, src, [{"length": {"min_words": 5}}], workers=1)
    rejects = [json.loads(line) for line in (out / "rejects" / "shard-00000.jsonl").read_text().splitlines()]
    assert [(r["line"], r["file"]) for r in rejects] == [(2, str(src / "x.jsonl")), (3, str(src / "x.jsonl"))]
    assert "invalid JSON" in rejects[0]["error"] and "x.jsonl:2" in rejects[0]["error"]
    assert "no 'text' field" in rejects[1]["error"] and rejects[1]["raw"] == lines[2]
    assert [d["id"] for d in read_gz(out / "documents" / "shard-00000.jsonl.gz")] == ["a", "c"]
    assert stats["input"]["rejected_lines"] == 2


def test_config_errors_name_the_step_and_field(tmp_path):
    base = {"input": [str(tmp_path)], "output": str(tmp_path / "o")}
    with pytest.raises(ConfigError, match=r"steps\[1\]: unknown step 'gopher_qualty'; did you mean 'gopher_quality'.*valid steps: .*c4_quality"):
        CurateConfig.from_dict(base | {"steps": [{"length": {}}, {"gopher_qualty": {}}]})
    with pytest.raises(ConfigError, match=r"steps\[0\]\.minhash_dedup\.bands: must be >= 1"):
        CurateConfig.from_dict(base | {"steps": [{"minhash_dedup": {"bands": 0}}]})
    with pytest.raises(ConfigError, match=r"steps\[0\]\.gopher_quality\.min_doc_word: unknown field.*did you mean 'min_doc_words'"):
        CurateConfig.from_dict(base | {"steps": [{"gopher_quality": {"min_doc_word": 3}}]})
    with pytest.raises(ConfigError, match="used twice"):
        CurateConfig.from_dict(base | {"steps": ["exact_dedup", "exact_dedup"]})
    CurateConfig.from_dict(base | {"steps": ["exact_dedup", {"exact_dedup": {"label": "again", "lowercase": False}}]})


def test_resuming_with_another_pipeline_is_refused(tmp_path, corpus_dir):
    run(tmp_path, corpus_dir, [{"length": {"min_words": 10}}], workers=1)
    with pytest.raises(ConfigError, match="different pipeline"):
        run(tmp_path, corpus_dir, [{"length": {"min_words": 20}}], workers=1)


def test_exact_url_and_paragraph_dedup(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    para = "A shared paragraph that appears in several documents of the corpus."
    rows = [
        {"id": "1", "text": f"First document.\n{para}\nIts own ending.", "metadata": {"url": "https://www.x.org/a/"}},
        {"id": "2", "text": "first   DOCUMENT.\n" + para + "\nits own ending.", "metadata": {"url": "http://x.org/b"}},
        {"id": "3", "text": f"Third one.\n{para}", "metadata": {"url": "https://X.org/a#top"}},
        {"id": "4", "text": para, "metadata": {"url": "https://y.org/"}},
    ]
    (src / "a.jsonl").write_text("\n".join(json.dumps(r | {"source": "t"}) for r in rows[:2]) + "\n")
    (src / "b.jsonl").write_text("\n".join(json.dumps(r | {"source": "t"}) for r in rows[2:]) + "\n")
    out, stats = run(tmp_path, src, ["exact_dedup", "url_dedup", {"paragraph_dedup": {"expected_paragraphs": 1000}}], workers=2)
    by_step = {s["label"]: s["removed"] for s in stats["steps"]}
    assert by_step == {"exact_dedup": {"exact_duplicate": 1}, "url_dedup": {"url_duplicate": 1},
                       "paragraph_dedup": {"all_paragraphs_duplicate": 1}}  # fmt: skip
    kept = read_gz(out / "documents" / "shard-00000.jsonl.gz") + read_gz(out / "documents" / "shard-00001.jsonl.gz")
    assert [d["id"] for d in kept] == ["1"]
    removed = {r["id"]: r for p in (out / "removed").glob("*.gz") for r in read_gz(p)}
    assert removed["2"]["attributes"]["exact_dedup__duplicate_of"] == "1"
    assert removed["3"]["attributes"]["url_dedup__duplicate_of"] == "1"
    assert removed["4"]["reason"] == "all_paragraphs_duplicate"


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def test_minhash_recall_and_precision_on_planted_near_duplicates(tmp_path, corpus, corpus_dir):
    """Planted copies with 1–10 % of words edited. Recall over planted pairs whose true 5-gram
    Jaccard is >= 0.7 (the threshold); precision: predicted duplicate pairs (a removed document
    and the one kept for its cluster) whose true Jaccard is >= 0.5, i.e. real near-duplicates."""
    steps = [{"minhash_dedup": {"bands": 20, "rows": 5, "threshold": 0.6}}]
    out, _ = run(tmp_path, corpus_dir, steps, workers=2)
    removed = {r["id"]: r["attributes"]["minhash_dedup__duplicate_of"] for p in (out / "removed").glob("*.gz")
               for r in read_gz(p)}  # fmt: skip
    words = SpacyWords()
    texts = {d["id"]: d["text"] for d in corpus.documents}
    shingles = {i: set(shingle_hashes(words.words(simplify(t)), 5).tolist()) for i, t in texts.items()}
    cluster = {i: removed.get(i, i) for i in texts}
    truth = [(a, b) for a, b in corpus.near_duplicate_pairs if _jaccard(shingles[a], shingles[b]) >= 0.7]
    assert len(truth) >= 40
    recall = np.mean([cluster[a] == cluster[b] for a, b in truth])
    predicted = list(removed.items())
    precision = np.mean([_jaccard(shingles[a], shingles[b]) >= 0.5 for a, b in predicted])
    print(f"recall {recall:.3f} over {len(truth)} pairs, precision {precision:.3f} over {len(predicted)} pairs")
    assert recall >= 0.95 and precision >= 0.99, (recall, precision, len(truth), len(predicted))


def test_minhash_signatures_equal_datatrove(corpus):
    """Same shingles, hashes and seeded permutations as datatrove's MinhashDedupSignature."""
    ds = pytest.importorskip("datatrove.pipeline.dedup.minhash")
    theirs = ds.MinhashDedupSignature(output_folder="/tmp/unused-lmforge", config=ds.MinhashConfig())
    step = MinHashDedup(MinHashConfig())
    step.setup()
    from lmforge.curate.minhash import minhash_signatures
    from lmforge.curate.steps import CurateDocument

    docs = [d for d in corpus.documents[:300] if len(d["text"].split()) > 10]
    words = SpacyWords()
    ours = minhash_signatures([step.signature(CurateDocument(d["id"], d["text"], "s", {}, words), 0)[1] for d in docs],
                              step._a, step._b)  # fmt: skip
    for row, d in zip(ours, docs):
        sh = theirs.get_shingles(d["text"])
        if sh.size:
            assert row.tolist() == [v for band in theirs.get_signature(sh) for v in band]


def test_minhash_clusters_keep_the_first_document_whatever_the_sharding(tmp_path, corpus):
    """Same removals with 1 file or 5 files (documents in the same order)."""
    removed_sets = []
    for n_files in (1, 5):
        folder = tmp_path / f"c{n_files}"
        write_sample_corpus(corpus, folder, n_files=n_files)
        out, _ = run(tmp_path, folder, ["minhash_dedup"], f"o{n_files}", workers=2)
        removed_sets.append({r["id"]: r["attributes"]["minhash_dedup__duplicate_of"]
                             for p in (out / "removed").glob("*.gz") for r in read_gz(p)})  # fmt: skip
    if [d["id"] for d in _ordered(tmp_path / "c1")] == [d["id"] for d in _ordered(tmp_path / "c5")]:
        assert removed_sets[0] == removed_sets[1]
    else:  # dealt round-robin: the same clusters, possibly another survivor
        assert len(removed_sets[0]) == len(removed_sets[1])


def _ordered(folder: Path) -> list[dict]:
    return [r for p in sorted(folder.glob("*.gz")) for r in read_gz(p)]


def test_pairs_helper_covers_all_pairs_in_small_runs():
    from lmforge.curate.minhash import _pairs_in_runs

    same = np.array([True, True, False, True])
    docs = np.array([5, 2, 9, 1, 3])
    assert sorted(_pairs_in_runs(same, docs, True)) == sorted([*combinations([2, 5, 9], 2), (1, 3)])
    assert sorted(_pairs_in_runs(same, docs, False)) == [(1, 3), (2, 5), (2, 9)]


def test_token_repetition_removes_olmo2_style_periodic_runs(tmp_path, token_data):
    """OLMo 2's detector on token ids: a 1–13-token pattern repeated >= 32 times in a row."""
    from lmforge.curate.filters import TokenRepetition, TokenRepetitionConfig
    from lmforge.curate.steps import CurateDocument
    from lmforge.data.tokenizer import Tokenizer

    step = TokenRepetition(TokenRepetitionConfig(tokenizer=str(token_data / "tokenizer.json")))
    step.setup()
    words = SpacyWords()
    prose = "The quick brown fox jumps over the lazy dog while the farmer watches from the barn."
    spam = prose + " buy now!" * 60
    tok = Tokenizer.load(token_data / "tokenizer.json")
    assert step(CurateDocument("a", prose * 3, "s", {}, words)).kept
    verdict = step(CurateDocument("b", spam, "s", {}, words))
    assert not verdict.kept and verdict.reason == "periodic_repetition"
    assert verdict.values["period"] == len(tok.encode(" buy now!")) <= 13 and verdict.values["repeats"] >= 59
    few = prose + " buy now!" * 20  # 20 repeats: under the 32 threshold
    assert step(CurateDocument("c", few, "s", {}, words)).kept


def test_cli_curate_and_mix(tmp_path, capsys):
    from lmforge.cli import main

    src = tmp_path / "in"
    src.mkdir()
    for name in ("web", "books"):
        rows = [{"id": f"{name}{i}", "text": f"{name} document number {i} " * (5 + i % 7), "source": name} for i in range(60)]
        (src / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"input": [str(src)], "output": str(tmp_path / "cur"),
                                                     "steps": [{"length": {"min_words": 10}}]}))  # fmt: skip
    assert main(["data", "curate", str(tmp_path / "p.yaml"), "--workers=1", "--quiet"]) == 0
    assert "documents" in capsys.readouterr().out
    cur = tmp_path / "cur" / "documents"
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({
        "sources": [{"name": "web", "paths": [str(cur / "shard-00001.jsonl.gz")], "proportion": 0.25},
                    {"name": "books", "paths": [str(cur / "shard-00000.jsonl.gz")], "proportion": 0.75}],
        "output": str(tmp_path / "mix")}))  # fmt: skip
    assert main(["data", "mix", str(tmp_path / "m.yaml"), "--quiet"]) == 0
    report = json.loads((tmp_path / "mix" / "mix.json").read_text())
    shares = {s["name"]: s["achieved_proportion"] for s in report["sources"]} if isinstance(report["sources"], list) \
        else {k: v["achieved_proportion"] for k, v in report["sources"].items()}
    assert abs(shares["web"] - 0.25) < 0.02 and abs(shares["books"] - 0.75) < 0.02
    assert main(["data", "curate", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_stats_count_tokens_of_a_tokenizer(tmp_path, token_data):
    from lmforge.data.tokenizer import Tokenizer

    src = tmp_path / "in"
    src.mkdir()
    rows = [{"id": str(i), "text": f"the cat number {i} sat on the mat " * (1 + i % 5), "source": "s"} for i in range(30)]
    (src / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok_path = token_data / "tokenizer.json"
    out, stats = run(tmp_path, src, [{"length": {"min_words": 20}}], workers=1, tokenizer=str(tok_path))
    tok = Tokenizer.load(tok_path)
    kept = read_gz(out / "documents" / "shard-00000.jsonl.gz")
    assert stats["input"]["tokens"] == sum(len(tok.encode(r["text"])) for r in rows)
    assert stats["output"]["tokens"] == sum(len(tok.encode(r["text"])) for r in kept)
    assert stats["token_unit"].startswith("tokens")


def test_large_uncompressed_files_are_split_at_line_boundaries(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    lines = [json.dumps({"id": f"d{i}", "text": f"document {i} " + "word " * (i % 50), "source": "s"}) for i in range(400)]
    lines[250] = "{broken"
    (src / "big.jsonl").write_text("\n".join(lines) + "\n")
    whole, _ = run(tmp_path, src, [{"length": {"min_words": 3}}], "whole", workers=1, shard_mb=None)
    split, stats = run(tmp_path, src, [{"length": {"min_words": 3}}], "split", workers=2, shard_mb=0.01)
    assert stats["input"]["shards"] >= 5
    docs = lambda out: [r for p in sorted((out / "documents").glob("*.gz")) for r in read_gz(p)]  # noqa: E731
    assert docs(split) == docs(whole) and len(docs(whole)) == 400 - 8  # i % 50 == 0: 2 words (line 251 among them)
    rejects = [json.loads(x) for p in (split / "rejects").glob("*.jsonl") for x in p.read_text().splitlines()]
    assert [r["line"] for r in rejects] == [251] and rejects[0]["raw"] == "{broken"


def test_hostile_input_is_rejected_not_fatal(tmp_path):
    """Lone surrogates, non-object metadata, unparseable URLs, a .txt file in the folder."""
    src = tmp_path / "in"
    src.mkdir()
    text = "Plain words for a document that is long enough to keep around here."
    lines = [
        json.dumps({"id": "ok", "text": text, "metadata": {"url": "http://example.com:abc/x"}}),
        '{"id": "sur", "text": "hello \\ud800 world"}',
        json.dumps({"id": "meta", "text": text, "metadata": "not an object"}),
        json.dumps({"id": "v6", "text": text + " again", "metadata": {"url": "http://[::1/x"}}),
    ]
    (src / "a.jsonl").write_text("\r\n".join(lines) + "\n")
    (src / "notes.txt").write_text(text + " From a text file.")
    out, stats = run(tmp_path, src, ["url_dedup", {"url_blocklist": {"domains": ["blocked.org"]}}], workers=1)
    kept = [d["id"] for p in sorted((out / "documents").glob("*.gz")) for d in read_gz(p)]
    assert kept == ["ok", "v6", "notes.txt"]
    rejects = [json.loads(x) for p in (out / "rejects").glob("*.jsonl") for x in p.read_text().splitlines()]
    assert [r["line"] for r in rejects] == [2, 3]
    assert "surrogate" in rejects[0]["error"] and "'metadata' must be a JSON object" in rejects[1]["error"]


def test_output_inside_input_or_a_file_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(ConfigError, match="inside input folder"):
        run(tmp_path, tmp_path / "in", ["exact_dedup"], "in/out", workers=1)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a folder"):
        run(tmp_path, tmp_path / "in", ["exact_dedup"], "file", workers=1)
    with pytest.raises(ConfigError, match=r"steps\[0\]\.length: options must be a mapping"):
        CurateConfig.from_dict({"input": [str(tmp_path / "in")], "output": str(tmp_path / "o"), "steps": [{"length": 5}]})
    with pytest.raises(ConfigError, match=r"domain_files\[0\]: .*no such file"):
        CurateConfig.from_dict({"input": [str(tmp_path / "in")], "output": str(tmp_path / "o"),
                                "steps": [{"url_blocklist": {"domain_files": ["missing.txt"]}}]})  # fmt: skip


def test_bloom_filter_false_positive_rate_is_as_configured():
    import xxhash

    from lmforge.curate.paragraphs import BloomFilter, ParagraphDedupConfig

    config = ParagraphDedupConfig(expected_paragraphs=20_000, false_positive_rate=0.01)
    bloom = BloomFilter(*config.bloom_shape())
    for i in range(20_000):
        bloom.check_and_add(xxhash.xxh3_128_intdigest(f"seen {i}"))
    assert all(bloom.check_and_add(xxhash.xxh3_128_intdigest(f"seen {i}")) for i in range(0, 20_000, 10))  # no misses
    assert abs(bloom.false_positive_rate() - 0.01) < 0.002  # the estimate once it holds what it was sized for
    fresh = [bloom.check_and_add(xxhash.xxh3_128_intdigest(f"new {i}")) for i in range(2_000)]  # ~p when full
    assert 0.004 < np.mean(fresh) < 0.02, np.mean(fresh)


def test_resume_refuses_a_changed_blocklist(tmp_path, corpus_dir):
    blocklist = tmp_path / "block.txt"
    blocklist.write_text("spam.example\n")
    steps = [{"url_blocklist": {"domain_files": [str(blocklist)]}}]
    run(tmp_path, corpus_dir, steps, workers=1)
    run(tmp_path, corpus_dir, steps, workers=1)  # unchanged: "already complete"
    blocklist.write_text("spam.example\nother.example\n")
    with pytest.raises(ConfigError, match=r"different content of .*block\.txt"):
        run(tmp_path, corpus_dir, steps, workers=1)


def test_url_blocklist_blocks_domains_subdomains_and_substrings(tmp_path):
    from lmforge.curate.filters import UrlBlocklist, UrlBlocklistConfig
    from lmforge.curate.steps import CurateDocument

    listed = tmp_path / "domains.txt"
    listed.write_text("# spam hosts\n.casino.example  # with a leading dot\n")
    step = UrlBlocklist(UrlBlocklistConfig(domains=["Ads.Example.com"], domain_files=[str(listed)],
                                           banned_substrings=["/affiliate/"]))  # fmt: skip
    step.setup()
    words = SpacyWords()

    def verdict(url):
        return step(CurateDocument("d", "text", "s", {"url": url} if url else {}, words))

    assert verdict("https://ads.example.com/x").reason == "blocked_domain"
    assert verdict("http://www.casino.example:8080/").values["domain"] == "casino.example"  # subdomain
    assert verdict("casino.example/page").reason == "blocked_domain"  # no scheme
    assert verdict("https://example.com/affiliate/1").reason == "banned_url_substring"
    assert verdict("https://example.com/news").kept and verdict("https://notcasino.example/").kept
    assert verdict(None).kept
    strict = UrlBlocklist(UrlBlocklistConfig(remove_missing_url=True))
    strict.setup()
    assert strict(CurateDocument("d", "t", "s", {}, words)).reason == "no_url"
