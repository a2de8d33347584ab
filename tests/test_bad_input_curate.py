"""`lmforge data curate` and `lmforge data mix` on bad input: a bad line (invalid UTF-8, bad JSON,
no string `text`) is a reject naming file, line and reason and the run goes on; a file that cannot
be read at all (not gzip, truncated) is one reject and one warning line naming it; `strict: true`
stops at the first with one line and no traceback."""

import gzip
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lmforge.cli import main


def row(i, text=None):
    return (
        json.dumps({"id": f"d{i}", "text": text or f"document number {i} has some words", "source": "s"}).encode()
        + b"\n"
    )


def truncated_gzip(path, n=3000):
    data = gzip.compress(b"".join(row(i, f"words {i} " * 30) for i in range(n)))
    path.write_bytes(data[: len(data) // 2])
    return path


def run(capsys, caplog, *args):
    """Run the CLI; return (exit code, stdout, stderr + log lines)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rc = main(["data", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err + caplog.text


# -- the two entry points, driven alike -----------------------------------------------------------


def run_curate(tmp_path, capsys, caplog, inputs, strict=False, name="out"):
    out = tmp_path / name
    config = {"input": [str(p) for p in inputs], "output": str(out), "workers": 1,
              "steps": [{"length": {"min_words": 1}}], "write_removed": False, "strict": strict}  # fmt: skip
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    rc, stdout, err = run(capsys, caplog, "curate", cfg, "--quiet")
    return rc, stdout, err, out


def run_mix(tmp_path, capsys, caplog, inputs, strict=False, name="out"):
    out = tmp_path / name
    config = {"sources": [{"name": "s", "paths": [str(p) for p in inputs], "proportion": 1.0}], "output": str(out),
              "strict": strict}  # fmt: skip
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    rc, stdout, err = run(capsys, caplog, "mix", cfg, "--quiet")
    return rc, stdout, err, out


def _ids(shards):
    return [json.loads(line)["id"] for shard in shards for line in gzip.decompress(shard.read_bytes()).splitlines()]


def _jsonl(paths):
    return [json.loads(line) for p in paths for line in p.read_text().splitlines()]


@dataclass(frozen=True)
class EntryPoint:
    """How to run `data curate` or `data mix` and read back what it kept, rejected and counted."""

    run: Callable
    kept_ids: Callable[[Path], list[str]]
    rejects: Callable[[Path], list[dict]]
    report: Callable[[Path], dict]  # has rejected_lines and skipped_files
    wrote_nothing: Callable[[Path], bool]  # after a strict stop


ENTRY_POINTS = {
    "curate": EntryPoint(
        run=run_curate,
        kept_ids=lambda out: _ids(sorted((out / "documents").glob("*.jsonl.gz"))),
        rejects=lambda out: _jsonl(sorted((out / "rejects").glob("*.jsonl"))),
        report=lambda out: json.loads((out / "stats.json").read_text())["input"],
        wrote_nothing=lambda out: not (out / "stats.json").exists() and not list(out.glob("documents/*")),
    ),
    "mix": EntryPoint(
        run=run_mix,
        # mix shuffles documents across shards: compare in id order
        kept_ids=lambda out: sorted(_ids(sorted(out.glob("mix-*.jsonl.gz"))), key=lambda i: int(i[1:])),
        rejects=lambda out: _jsonl([out / "rejects.jsonl"]),
        report=lambda out: json.loads((out / "mix.json").read_text()),
        wrote_nothing=lambda out: not out.exists(),
    ),
}


@pytest.fixture(params=list(ENTRY_POINTS))
def entry(request) -> EntryPoint:
    return ENTRY_POINTS[request.param]


def skipped(entry, folder):
    report = entry.report(folder)
    return report["rejected_lines"], report["skipped_files"]


def test_invalid_utf8_loses_one_line(entry, tmp_path, capsys, caplog):
    bad = tmp_path / "bad.jsonl"
    lines = [row(i) for i in range(6)]
    lines[2] = lines[2].replace(b"number", b"num\xffber")  # line 3
    bad.write_bytes(b"".join(lines))
    rc, out, err, folder = entry.run(tmp_path, capsys, caplog, [bad])
    assert rc == 0 and "Traceback" not in err, err
    assert entry.kept_ids(folder) == ["d0", "d1", "d3", "d4", "d5"]
    (r,) = entry.rejects(folder)
    assert (r["file"], r["line"], r["reason"]) == (str(bad), 3, "invalid UTF-8 (byte 0xff at column 35)")
    assert skipped(entry, folder) == (1, 0)
    assert "skipped 0 files and 1 line; see " in err


def test_curate_reject_keeps_the_raw_line(tmp_path, capsys, caplog):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(row(0) + row(1).replace(b"number", b"num\xffber"))
    rc, out, err, folder = run_curate(tmp_path, capsys, caplog, [bad])
    (r,) = ENTRY_POINTS["curate"].rejects(folder)
    assert "num\ufffdber" in r["raw"]


def test_bad_json_missing_and_non_string_text(entry, tmp_path, capsys, caplog):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(
        row(0) + b'{"id": "x", "text": \n' + row(2) + b'{"id": "y"}\n' + row(4) + b'{"id": "z", "text": 7}\n' + row(6)
    )
    rc, out, err, folder = entry.run(tmp_path, capsys, caplog, [bad])
    assert rc == 0 and "Traceback" not in err, err
    assert entry.kept_ids(folder) == ["d0", "d2", "d4", "d6"]
    got = [(r["file"], r["line"], r["reason"].split(" (")[0]) for r in entry.rejects(folder)]
    assert got == [(str(bad), 2, "invalid JSON"), (str(bad), 4, "document has no 'text' field"),
                   (str(bad), 6, "document 'text' is int, not a string")]  # fmt: skip
    assert skipped(entry, folder) == (3, 0)
    assert "skipped 0 files and 3 lines" in err


def test_not_gzip_beside_a_good_file(entry, tmp_path, capsys, caplog):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl.gz").write_bytes(b"this is not gzip at all\n")
    (tmp_path / "in" / "b.jsonl").write_bytes(row(0) + row(1))
    rc, out, err, folder = entry.run(tmp_path, capsys, caplog, [tmp_path / "in"])
    assert rc == 0 and "Traceback" not in err, err
    assert entry.kept_ids(folder) == ["d0", "d1"]
    named = [line for line in err.splitlines() if "a.jsonl.gz" in line]
    assert len(named) == 1 and "not a gzip file" in named[0]
    (r,) = entry.rejects(folder)
    assert r["file"] == str(tmp_path / "in" / "a.jsonl.gz") and r["line"] is None and "not a gzip" in r["reason"]
    assert skipped(entry, folder) == (0, 1)
    assert "skipped 1 file and 0 lines" in err


def test_truncated_gzip_keeps_documents_before_the_cut(entry, tmp_path, capsys, caplog):
    cut = truncated_gzip(tmp_path / "cut.jsonl.gz")
    rc, out, err, folder = entry.run(tmp_path, capsys, caplog, [cut])
    assert rc == 0 and "Traceback" not in err, err
    kept = entry.kept_ids(folder)
    assert 0 < len(kept) < 3000 and kept == [f"d{i}" for i in range(len(kept))]
    (r,) = entry.rejects(folder)
    assert r["line"] is None and r["reason"].startswith(f"truncated: the stream ends after line {len(kept)}")
    assert len([line for line in err.splitlines() if "cut.jsonl.gz: truncated" in line]) == 1


def bad_inputs(tmp_path):
    """Each case: (input file, what the one-line error must contain)."""
    utf = tmp_path / "utf.jsonl"
    utf.write_bytes(row(0) + b'{"text": "\xff"}\n' + row(2))
    js = tmp_path / "js.jsonl"
    js.write_bytes(row(0) + row(1) + b"{oops\n")
    notext = tmp_path / "notext.jsonl"
    notext.write_bytes(row(0) + b'{"text": 3}\n')
    notgz = tmp_path / "notgz.jsonl.gz"
    notgz.write_bytes(b"plain text\n")
    cut = truncated_gzip(tmp_path / "cut.jsonl.gz")
    return [(utf, "utf.jsonl:2: invalid UTF-8"), (js, "js.jsonl:3: invalid JSON"),
            (notext, "notext.jsonl:2: document 'text' is int"), (notgz, "notgz.jsonl.gz: not a gzip file"),
            (cut, "cut.jsonl.gz: truncated")]  # fmt: skip


def test_strict_stops_with_one_line(entry, tmp_path, capsys, caplog):
    for path, expected in bad_inputs(tmp_path):
        rc, out, err, folder = entry.run(tmp_path, capsys, caplog, [path], strict=True, name=f"out-{path.name}")
        errors = [line for line in err.splitlines() if line.startswith("lmforge: error:")]
        assert rc != 0 and "Traceback" not in err and len(errors) == 1 and expected in errors[0], (path, err)
        assert entry.wrote_nothing(folder)


# -- curate's executors ----------------------------------------------------------------------------


def bad_corpus(folder):
    """Good files beside a file of bad lines, a `.gz` that is not gzip and a truncated `.gz`."""
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(b"".join(row(i) for i in range(8)))
    (folder / "b.jsonl").write_bytes(
        row(20) + row(21).replace(b"number", b"num\xffber") + b'{"id": "x", "text": \n' + row(23) + b'{"id": "y"}\n'
        + row(25) + row(0)  # an exact duplicate of a.jsonl's first line: removed by exact_dedup
    )  # fmt: skip
    (folder / "c.jsonl.gz").write_bytes(gzip.compress(b"".join(row(i) for i in range(30, 40))))
    (folder / "d.jsonl.gz").write_bytes(b"this is not gzip at all\n")
    truncated_gzip(folder / "e.jsonl.gz", n=2000)
    return folder


def curate_run(tmp_path, capsys, caplog, inputs, name, **options):
    """`data curate` over `inputs` with a document step, a global step and a document step after
    it (two stages of tasks); returns (kept documents' bytes per shard, sorted rejects, stats)."""
    out = tmp_path / name
    config = {"input": [str(inputs)], "output": str(out),
              "steps": [{"length": {"min_words": 1}}, {"exact_dedup": {}}, {"length": {"min_words": 2, "label": "again"}}],
              **options}  # fmt: skip
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    rc, _, err = run(capsys, caplog, "curate", cfg, "--quiet")
    assert rc == 0 and "Traceback" not in err, err
    assert "skipped 2 files and 3 lines" in err
    kept = {p.name: gzip.decompress(p.read_bytes()) for p in sorted((out / "documents").glob("*.jsonl.gz"))}
    rejects = sorted((r["file"], r["line"] or 0, r["reason"]) for r in ENTRY_POINTS["curate"].rejects(out))
    stats = json.loads((out / "stats.json").read_text())
    counts = {"input": stats["input"], "output": stats["output"],
              "steps": [(s["label"], s["docs_in"], s["docs_out"], s["removed"]) for s in stats["steps"]]}  # fmt: skip
    return kept, rejects, counts


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_curate_bad_input_same_result_with_any_workers_or_ray(tmp_path, capsys, caplog, executor):
    """Bad lines and unreadable files are skipped the same way whichever worker reads them."""
    if executor == "ray":
        pytest.importorskip("ray")
    corpus = bad_corpus(tmp_path / "in")
    one = curate_run(tmp_path, capsys, caplog, corpus, "one", workers=1)
    other = curate_run(tmp_path, capsys, caplog, corpus, executor, workers=2, executor=executor)
    kept, rejects, counts = one
    assert len(kept) == 5 and b'"id":"d20"' in kept["shard-00001.jsonl.gz"]
    assert [(r[0].rsplit("/", 1)[1], r[1]) for r in rejects] == [("b.jsonl", 2), ("b.jsonl", 3), ("b.jsonl", 5),
                                                                 ("d.jsonl.gz", 0), ("e.jsonl.gz", 0)]  # fmt: skip
    assert (counts["input"]["skipped_files"], counts["input"]["rejected_lines"]) == (2, 3)
    assert other == one
