"""One big compressed input file cut into pieces (`shard_docs`): 1 and 2 workers write the same
bytes (documents, attributes, removed, rejects, tokens), and the same documents as the uncut
file; a SIGKILL + rerun too; rejects and ids name the whole file's line numbers; where the cut
falls; the one-line warning when workers exceed shards; the in-stage progress counter.
(Ray on cut compressed files: tests/test_curate_pipeline.py's Ray test, which cuts its inputs.)"""

from __future__ import annotations

import gzip
import io
import json
import logging
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
import yaml
import zstandard
from conftest import kill_after_markers
from web_corpus import build_web_corpus

from lmforge.curate import executors, shards
from lmforge.curate.pipeline import CurateConfig, curate
from lmforge.data.documents import BadInput

STEPS = [{"gopher_quality": {}}, {"minhash_dedup": {}}, {"pii": {}}]
N_DOCS, SHARD_DOCS = 1200, 200  # and 3 bad lines: 1,203 lines, 7 pieces
BAD = {3: b"{broken\n", 701: b'{"id": "u", "text": "caf\xe9 au lait"}\n', 1199: b'{"id": "t", "source": "s"}\n'}
NO_ID = 477  # a document without an id: its id names the whole file's line


def _gzip(path: Path, data: bytes) -> Path:
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
        f.write(data)
    return path


@pytest.fixture(scope="module")
def big_gz(tmp_path_factory) -> Path:
    """1,200 generated web documents and 3 bad lines in one .jsonl.gz."""
    docs = build_web_corpus(n_docs=N_DOCS, seed=11).documents
    lines = [(json.dumps(d, ensure_ascii=False) + "\n").encode() for d in docs]
    doc = json.loads(lines[NO_ID - 1])
    del doc["id"]
    lines[NO_ID - 1] = (json.dumps(doc) + "\n").encode()
    for at, line in sorted(BAD.items()):
        lines.insert(at - 1, line)
    return _gzip(tmp_path_factory.mktemp("big") / "big.jsonl.gz", b"".join(lines))


def spec(big_gz: Path, out: Path, tokenizer: Path, **extra) -> dict:
    return {"input": [str(big_gz)], "output": str(out), "steps": STEPS, "shard_docs": SHARD_DOCS,
            "tokenize": {"tokenizer": str(tokenizer)}, **extra}  # fmt: skip


def outputs(folder: Path) -> dict[str, bytes]:
    """Every output file; the token folder's meta.json without its timing and with paths relative."""
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name not in ("stats.json", "stats.png", "pipeline.json", "pipeline.yaml"):
            data = p.read_bytes().replace(str(folder).encode(), b"OUT")
            if p.name == "meta.json":
                meta = json.loads(data)
                meta.pop("seconds")
                data = json.dumps(meta, sort_keys=True).encode()
            files[str(p.relative_to(folder))] = data
    return files


def rows(folder: Path, kind: str) -> list[dict]:
    opener = gzip.open if kind != "rejects" else open
    return [json.loads(line) for p in sorted((folder / kind).glob("*")) for line in opener(p, "rt")]


@pytest.fixture(scope="module")
def one_worker(big_gz, token_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "out"
    curate(CurateConfig.from_dict(spec(big_gz, out, token_data / "tokenizer.json", workers=1)), progress=False)
    return out


def test_pieces_of_one_gzip_give_the_same_bytes_with_one_or_two_workers(tmp_path, monkeypatch, big_gz, one_worker,
                                                                        token_data):  # fmt: skip
    tok = token_data / "tokenizer.json"
    two = tmp_path / "two"
    lives: list[list[int]] = []

    class Recording(executors.StageProgress):  # what the workers' shared counter told the parent
        def set_live(self, live: int) -> None:
            super().set_live(live)
            lives[-1].append(live)

        def __init__(self, *args, **kwargs) -> None:
            lives.append([])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr("lmforge.curate.pipeline.StageProgress", Recording)
    stats = curate(CurateConfig.from_dict(spec(big_gz, two, tok, workers=2)), progress=False)
    assert stats["input"]["shards"] == 7
    assert [stage[-1] for stage in lives] == [N_DOCS, stats["steps"][1]["docs_in"]]  # documents each stage read
    a, b = outputs(one_worker), outputs(two)
    assert a.keys() == b.keys() and a == b
    kinds = {k.split("/")[0] for k in a}
    assert kinds == {"documents", "attributes", "removed", "rejects", "tokens"}
    assert sum(k.startswith("documents/") for k in a) == 7
    # pipeline.json says what each shard is: consecutive line ranges of the one file
    record = json.loads((two / "pipeline.json").read_text())["shards"]
    assert [r["file"] for r in record] == [str(big_gz)] * 7
    assert [r["lines"] for r in record] == [[1 + 200 * k, min(200 * (k + 1), N_DOCS + 3)] for k in range(7)]
    assert all(r["bytes"][1] == s["bytes"][0] for r, s in pairwise(record))
    # the uncut file: the same documents, removals and rejects, only in one shard
    whole = tmp_path / "whole"
    curate(CurateConfig.from_dict(spec(big_gz, whole, tok, workers=1, shard_docs=None, shard_mb=None)), progress=False)
    for kind in ("documents", "attributes", "rejects"):
        assert rows(whole, kind) == rows(two, kind), kind
    assert sorted(r["id"] for r in rows(whole, "removed")) == sorted(r["id"] for r in rows(two, "removed"))


def test_bad_lines_and_ids_name_the_whole_files_line(one_worker, big_gz):
    rejects = rows(one_worker, "rejects")
    assert [(r["file"], r["line"]) for r in rejects] == [(str(big_gz), line) for line in sorted(BAD)]
    assert "invalid JSON" in rejects[0]["error"] and "invalid UTF-8" in rejects[1]["error"]
    assert rejects[2]["error"] == f"{big_gz}:{sorted(BAD)[2]}: document has no 'text' field"
    every = {r["id"] for kind in ("documents", "removed") for r in rows(one_worker, kind)}
    assert f"big.jsonl.gz:{NO_ID + 1}" in every  # one bad line was put in before it


def test_sigkill_then_rerun_gives_the_same_bytes(tmp_path, big_gz, one_worker, token_data):
    """Killed after two pieces with one worker, finished by two: the bytes of one uninterrupted worker."""
    killed = tmp_path / "killed"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec(big_gz, killed, token_data / "tokenizer.json", workers=1)))
    cmd = [sys.executable, "-m", "lmforge.cli", "data", "curate", str(tmp_path / "p.yaml"), "--quiet"]
    markers = killed / "work" / "stage-0"
    kill_after_markers(cmd, markers, 2, poll=0.01)
    assert 2 <= len(list(markers.glob("*.done.json"))) < 7 and not (killed / "stats.json").exists()
    resumed = subprocess.run([*cmd, "--workers=2"], check=False, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    b = outputs(killed)
    assert not [k for k in b if k.endswith(".tmp")]
    assert outputs(one_worker) == b


def test_more_workers_than_shards_is_one_warning_line_and_strict_names_the_line(tmp_path, caplog):
    lines = [json.dumps({"id": f"d{i}", "text": f"words of document {i}"}) for i in range(250)]
    lines[149] = "{broken"
    src = _gzip(tmp_path / "x.jsonl.gz", "\n".join(lines).encode())  # no newline after the last line
    config = {"input": [str(src)], "output": str(tmp_path / "out"), "steps": [{"length": {"min_words": 1}}],
              "shard_docs": 125, "workers": 3}  # fmt: skip
    with caplog.at_level(logging.WARNING):
        stats = curate(CurateConfig.from_dict(config), progress=False)
    warned = [r.getMessage() for r in caplog.records if "workers:" in r.getMessage()]
    line = "workers: 3 but the input is 2 shards, so at most 2 processes run; set shard_docs or shard_mb lower, "
    assert warned == [line + "or give more files"]
    assert stats["input"]["shards"] == 2 and stats["output"]["documents"] == 249
    assert [r["line"] for r in rows(tmp_path / "out", "rejects")] == [150]
    strict = config | {"output": str(tmp_path / "strict"), "workers": 1, "strict": True}
    with pytest.raises(BadInput, match=r"x\.jsonl\.gz:150: invalid JSON"):
        curate(CurateConfig.from_dict(strict), progress=False)


# -- the cut -------------------------------------------------------------------------------------


def _all_lines(pieces: list[shards.InputShard]) -> list[tuple[int, bytes]]:
    return [line for piece in pieces for line in shards._lines(piece)]


def test_cut_by_lines_and_bytes_then_joined_for_compressed_files(tmp_path):
    data = b"".join(b'{"text": "%s"}\n' % (b"w" * (i % 37)) for i in range(1000)) + b'{"text": "last"}'
    want = list(enumerate(data.splitlines(keepends=True), start=1))
    plain, gz, zst = tmp_path / "a.jsonl", tmp_path / "a.jsonl.gz", tmp_path / "a.jsonl.zst"
    plain.write_bytes(data)
    _gzip(gz, data)
    zst.write_bytes(zstandard.ZstdCompressor().compress(data))
    by_lines = shards.cut_file(plain, 100, None)
    assert [p.lines for p in by_lines] == [100] * 10 + [1] and _all_lines(by_lines) == want
    assert [(p.start, p.end, p.first_line) for p in shards.cut_file(gz, 100, None)] == \
        [(p.start, p.end, p.first_line) for p in by_lines]  # fmt: skip
    # a byte limit ends a piece after the line that takes it past the limit
    by_bytes = shards.cut_file(plain, None, 2000)
    assert all(p.end - p.start > 2000 and p.end - p.start - len(_all_lines([p])[-1][1]) <= 2000 for p in by_bytes[:-1])
    assert _all_lines(by_bytes) == want
    # a compressed file makes at most max_pieces, joined evenly; an uncompressed one is not capped
    joined = shards.cut_file(zst, 100, None, max_pieces=4)
    assert [p.lines for p in joined] == [200, 300, 300, 201] and _all_lines(joined) == want
    assert len(shards.cut_file(plain, 100, None, max_pieces=4)) == 11


def test_files_that_are_not_cut(tmp_path):
    truncated = tmp_path / "t.jsonl.gz"
    truncated.write_bytes(gzip.compress(b'{"text": "x"}\n' * 5000)[:-40])
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "doc.txt").write_text("one document " * 1000)
    assert shards.cut_file(truncated, 10, None) == [shards.InputShard(str(truncated))]  # its task reports it
    assert shards.cut_file(tmp_path / "doc.txt", 1, 1) == [shards.InputShard(str(tmp_path / "doc.txt"))]
    assert [p.lines for p in shards.cut_file(tmp_path / "empty.jsonl", 10, None)] == [0]
    assert shards.cut_file(tmp_path / "empty.jsonl", None, None)[0].lines is None  # no limits: not read


# -- progress inside a stage ---------------------------------------------------------------------


def test_stage_progress_moves_with_live_counts_and_settles_at_each_end():
    bar = executors.StageProgress("s", {0: 300, 1: 300}, done_docs=100, shards=3, done_shards=1, enabled=True,
                                  file=io.StringIO())  # fmt: skip
    assert (bar.bar.total, bar.bar.n) == (700, 100)
    bar.add_live(150)
    assert bar.bar.n == 250
    bar.set_live(420)  # 290 of shard 0 (it had 10 bad lines) + 130 of shard 1
    bar.finished({"shard": 0, "read": 290})
    assert bar.bar.n == 100 + 300 + 130 and "2/3 shards" in str(bar.bar)
    bar.finished({"shard": 1, "read": 300})  # before its last counts arrive (Ray): the bar does not go back
    assert bar.bar.n == 700
    bar.set_live(590)
    assert bar.bar.n == 700
    unknown = executors.StageProgress("s", {0: None}, done_docs=0, shards=1, done_shards=0, enabled=True,
                                      file=io.StringIO())  # fmt: skip
    unknown.add_live(50)
    assert unknown.bar.total is None and unknown.bar.n == 50


def test_a_running_task_moves_the_bar_before_it_ends(tmp_path, monkeypatch, big_gz):
    """In process: the pipeline's bar has moved by every 100 documents before the one task ends."""
    seen: list[tuple[int, int]] = []

    class Recording(executors.StageProgress):
        def add_live(self, n: int) -> None:
            super().add_live(n)
            seen.append((self.done_shards, self.bar.n))

    monkeypatch.setattr("lmforge.curate.pipeline.StageProgress", Recording)
    config = {"input": [str(big_gz)], "output": str(tmp_path / "o"), "steps": [{"length": {"min_words": 1}}],
              "shard_docs": None, "shard_mb": 1000, "workers": 1}  # fmt: skip
    curate(CurateConfig.from_dict(config), progress=True)
    assert [n for shards_done, n in seen if shards_done == 0][:3] == [100, 200, 300]
    assert seen[-1] == (0, N_DOCS)  # the last count, before the task's end settles the bar at 1,203 lines
