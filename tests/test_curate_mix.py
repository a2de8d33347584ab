import gzip
import json
import random
from pathlib import Path

import pytest

from lmforge.curate import mix as mix_module
from lmforge.curate.mix import MixConfig, MixSource, mix
from lmforge.errors import ConfigError

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def write_source(path: Path, name: str, n_docs: int, seed: int, min_words: int = 10, max_words: int = 60) -> Path:
    """n_docs dolma rows with `source` = name and ids `<name>-<file stem>-<i>`; .gz when the path says so."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_docs):
        text = " ".join(rng.choices(WORDS, k=rng.randint(min_words, max_words)))
        row = {"id": f"{name}-{path.name.split('.')[0]}-{i}", "text": text, "source": name}
        if i % 5 == 0:
            row["metadata"] = {"url": f"https://example.com/{name}/{i}"}
        lines.append(json.dumps(row) + "\n")
    data = "".join(lines).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix_inputs")
    # big: ~35k words over two files (one gzipped); small: ~7k words in a folder.
    write_source(root / "big" / "a.jsonl", "big", 500, seed=1)
    write_source(root / "big" / "b.jsonl.gz", "big", 500, seed=2)
    write_source(root / "small" / "part.jsonl", "small", 200, seed=3)
    return root


def sources(root: Path, p_big: float = 0.5) -> list[MixSource]:
    return [
        MixSource(name="big", paths=[str(root / "big")], proportion=p_big),
        MixSource(name="small", paths=[str(root / "small" / "part.jsonl")], proportion=round(1 - p_big, 10)),
    ]


def read_output(folder: Path) -> list[dict]:
    rows = []
    for shard in sorted(folder.glob("mix-*.jsonl.gz")):
        with gzip.open(shard, "rt") as f:
            rows.extend(json.loads(line) for line in f)
    return rows


def words_by_source(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["source"]] = counts.get(row["source"], 0) + len(row["text"].split())
    return counts


def available_words(root: Path, name: str) -> int:
    from lmforge.data.documents import expand_paths, read_documents

    return sum(len(d.text.split()) for f in expand_paths([root / name]) for d in read_documents(f))


@pytest.mark.parametrize("total", [15_000, 30_000], ids=["downsample", "upsample-small"])
def test_achieved_proportions_match_targets(corpora, tmp_path, total):
    config = MixConfig(sources=sources(corpora, 0.6), output=tmp_path / "out", total_tokens=total, seed=3)
    report = mix(config, progress=False)
    rows = read_output(tmp_path / "out")
    got = words_by_source(rows)
    assert sum(got.values()) == report["totals"]["selected_tokens"]
    for s in report["sources"]:
        target = round(s["proportion"] * total)
        assert s["target_tokens"] == target
        assert got[s["name"]] == s["selected_tokens"]
        assert abs(s["selected_tokens"] - target) <= 0.01 * target
        assert abs(got[s["name"]] / sum(got.values()) - s["proportion"]) <= 0.01
        assert s["tokens_available"] == available_words(corpora, s["name"])
    small = report["sources"][1]
    if total == 30_000:  # 12,000 words from a ~7,000-word source: one whole copy plus a part
        assert small["full_copies"] == 1 and 1 < small["repeat_factor"] < 2
    else:
        assert small["full_copies"] == 0 and small["repeat_factor"] < 1
    assert len(rows) == report["totals"]["selected_documents"]
    on_disk = json.loads((tmp_path / "out" / "mix.json").read_text())
    assert on_disk == report
    assert MixConfig.from_dict(on_disk["config"]) == config


def test_upsampled_repeats_have_distinct_ids(corpora, tmp_path):
    config = MixConfig(sources=sources(corpora, 0.5), output=tmp_path / "out", total_tokens=40_000, max_repeats=3)
    report = mix(config, progress=False)
    small = report["sources"][1]
    assert small["full_copies"] == 2  # 20,000 of ~7,000 words
    rows = read_output(tmp_path / "out")
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    reps = [r for r in rows if "#rep" in r["id"]]
    assert reps and all(r["source"] == "small" for r in reps)
    for r in reps:
        base, k = r["id"].rsplit("#rep", 1)
        assert r["metadata"]["mix_repeat"] == int(k) >= 1
        assert base.startswith("small-")
    by_id = {r["id"]: r for r in rows}
    r = reps[0]
    original = by_id[r["id"].rsplit("#rep", 1)[0]]  # every document of copy 0 is there
    assert original["text"] == r["text"] and "mix_repeat" not in original.get("metadata", {})
    # metadata of the input survives beside mix_repeat
    assert any(set(r["metadata"]) == {"url", "mix_repeat"} for r in reps)
    # sources interleave: the output is not all of one source and then the other
    first_half = {r["source"] for r in rows[: len(rows) // 2]}
    assert first_half == {"big", "small"}


def test_same_seed_same_bytes_other_seed_other_selection(corpora, tmp_path):
    def run(seed, name):
        config = MixConfig(
            sources=sources(corpora), output=tmp_path / name, total_tokens=12_000, seed=seed, shard_size_mb=0.02
        )
        mix(config, progress=False)
        return {p.name: p.read_bytes() for p in sorted((tmp_path / name).glob("mix-*.jsonl.gz"))}

    a, b, c = run(0, "a"), run(0, "b"), run(1, "c")
    assert len(a) > 1 and a == b
    ids = lambda name: {r["id"] for r in read_output(tmp_path / name)}  # noqa: E731
    assert ids("a") != ids("c")
    assert [r["id"] for r in read_output(tmp_path / "a")] == [r["id"] for r in read_output(tmp_path / "b")]


def test_shards_near_target_size_and_documents_never_split(corpora, tmp_path):
    limit = 20_000
    config = MixConfig(sources=sources(corpora), output=tmp_path / "out", total_tokens=25_000, shard_size_mb=0.02)
    report = mix(config, progress=False)
    shards = report["shards"]
    assert len(shards) >= 5
    assert [s["name"] for s in shards] == [f"mix-{i:05d}.jsonl.gz" for i in range(len(shards))]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*(s["name"] for s in shards), "mix.json"])
    max_row = 0
    for s in shards:
        data = gzip.decompress((tmp_path / "out" / s["name"]).read_bytes())
        lines = data.decode().splitlines(keepends=True)
        assert len(data) == s["bytes"] <= limit and len(lines) == s["documents"]
        for line in lines:
            assert line.endswith("\n")
            row = json.loads(line)
            assert set(row) <= {"id", "text", "source", "metadata"} and row["text"]
            max_row = max(max_row, len(line.encode()))
    for s in shards[:-1]:
        assert s["bytes"] > limit - max_row  # closed only when the next row would not fit
    assert sum(s["documents"] for s in shards) == report["totals"]["selected_documents"]


def test_total_none_takes_the_largest_total_without_upsampling(corpora, tmp_path):
    config = MixConfig(sources=sources(corpora, 0.7), output=tmp_path / "out")
    report = mix(config, progress=False)
    big, small = report["sources"]
    # small has ~1/5 of big's words, so it binds: all of it, 30 % of the output
    assert small["selected_tokens"] == small["tokens_available"] == small["target_tokens"]
    assert small["repeat_factor"] == 1.0 and small["full_copies"] == 1
    assert report["total_tokens"] == int(small["tokens_available"] / 0.3)
    assert big["selected_tokens"] < big["tokens_available"]
    assert abs(big["selected_tokens"] - big["target_tokens"]) <= 0.01 * big["target_tokens"]
    assert abs(big["achieved_proportion"] - 0.7) <= 0.01
    rows = read_output(tmp_path / "out")
    assert not any("#rep" in r["id"] for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)


def test_config_errors(corpora, tmp_path):
    base = {
        "sources": [
            {"name": "big", "paths": [str(corpora / "big")], "proportion": 0.5},
            {"name": "small", "paths": [str(corpora / "small")], "proportion": 0.4},
        ],
        "output": str(tmp_path / "out"),
    }
    with pytest.raises(ConfigError, match=r"^sources: proportions sum to 0\.9, not 1"):
        MixConfig.from_dict(base)
    base["sources"][1]["proportion"] = 0.5
    assert MixConfig.from_dict(base).total_tokens is None
    with pytest.raises(ConfigError, match=r"^totl_tokens: unknown field of MixConfig; did you mean 'total_tokens'"):
        MixConfig.from_dict({**base, "totl_tokens": 5})
    bad_source = {**base, "sources": [{**base["sources"][0], "weight": 1}, base["sources"][1]]}
    with pytest.raises(ConfigError, match=r"^sources\[0\]\.weight: unknown field of MixSource"):
        MixConfig.from_dict(bad_source)
    negative = {**base, "sources": [{**base["sources"][0], "proportion": -0.5}, base["sources"][1]]}
    with pytest.raises(ConfigError, match=r"^sources\[0\]\.proportion: must be > 0"):
        MixConfig.from_dict(negative)

    # small (~7k words) would need 40k / 7k ≈ 5.7 copies, over max_repeats=4
    with pytest.raises(ConfigError, match=r"sources\[1\] \(small\): .*more than max_repeats=4"):
        mix(MixConfig.from_dict({**base, "total_tokens": 80_000}), progress=False)
    assert not (tmp_path / "out").exists()

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "none.jsonl").write_text("\n")
    empty = {**base, "sources": [base["sources"][0], {"name": "nothing", "paths": [str(tmp_path / "empty")],
                                                      "proportion": 0.5}]}
    with pytest.raises(ConfigError, match=r"sources\[1\] \(nothing\): no documents found"):
        mix(MixConfig.from_dict(empty), progress=False)
    missing = {**base, "sources": [base["sources"][0], {**base["sources"][1], "paths": [str(tmp_path / "nope")]}]}
    with pytest.raises(ConfigError, match=r"sources\[1\] \(small\)\.paths: .*nope: no such file"):
        mix(MixConfig.from_dict(missing), progress=False)
    inside = {**base, "output": str(corpora / "small")}
    with pytest.raises(ConfigError, match=r"^output: .* holds input"):
        mix(MixConfig.from_dict(inside), progress=False)


def test_interrupted_write_leaves_no_partial_output_and_rerun_succeeds(corpora, tmp_path, monkeypatch):
    config = MixConfig(sources=sources(corpora), output=tmp_path / "out", total_tokens=15_000, shard_size_mb=0.02)
    mix(config.replace(output=tmp_path / "clean"), progress=False)
    clean = {p.name: p.read_bytes() for p in (tmp_path / "clean").iterdir()}

    real_close = mix_module._ShardWriter.close_shard
    calls = []

    def failing_close(self):
        calls.append(1)
        if len(calls) == 2:  # one shard complete, the second half-written
            raise KeyboardInterrupt("simulated interruption")
        real_close(self)

    monkeypatch.setattr(mix_module._ShardWriter, "close_shard", failing_close)
    with pytest.raises(KeyboardInterrupt):
        mix(config, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean"]  # no out/, no hidden staging folder

    # an existing output survives an interrupted rerun untouched
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        mix(config.replace(output=tmp_path / "clean", total_tokens=14_000), progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "clean").iterdir()} == clean

    monkeypatch.setattr(mix_module._ShardWriter, "close_shard", real_close)
    report = mix(config, progress=False)
    got = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert {k: v for k, v in got.items() if k != "mix.json"} == {k: v for k, v in clean.items() if k != "mix.json"}
    assert report["totals"]["shards"] == len(got) - 1


def test_counts_real_tokens_with_a_tokenizer(corpora, tmp_path):
    from lmforge.data.documents import expand_paths, read_documents
    from lmforge.data.tokenizer import train_bpe

    tok = train_bpe([corpora / "big" / "a.jsonl"], vocab_size=300, show_progress=False)
    tok_path = tok.save(tmp_path / "tokenizer.json")
    config = MixConfig(sources=sources(corpora), output=tmp_path / "out", total_tokens=30_000, tokenizer=str(tok_path))
    report = mix(config, progress=False)
    assert report["counting"]["unit"] == "tokens" and report["counting"]["fingerprint"] == tok.fingerprint
    for s in report["sources"]:
        docs = [d for f in expand_paths([corpora / s["name"]]) for d in read_documents(f)]
        assert s["tokens_available"] == sum(len(tok.encode(d.text)) for d in docs)
        assert s["tokens_available"] != sum(len(d.text.split()) for d in docs)
    rows = read_output(tmp_path / "out")
    for s in report["sources"]:
        got = sum(len(tok.encode(r["text"])) for r in rows if r["source"] == s["name"])
        assert got == s["selected_tokens"]
        assert abs(got - s["target_tokens"]) <= 0.01 * s["target_tokens"]


def test_table_is_printed(corpora, tmp_path, capsys):
    mix(MixConfig(sources=sources(corpora), output=tmp_path / "out", total_tokens=5_000), progress=False)
    out = capsys.readouterr().out
    assert "achieved %" in out and "big" in out and "small" in out and "repeats" in out


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "text": "w " * 10}) + "\n" for i in range(5)))
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    config = MixConfig.from_dict({"sources": [{"name": "a", "paths": [str(src)], "proportion": 1.0}],
                                  "output": str(precious)})  # fmt: skip
    with pytest.raises(ConfigError, match="no mix wrote"):
        mix(config, progress=False)
    assert (precious / "thesis.tex").read_text() == "years of work"
