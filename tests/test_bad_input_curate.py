"""`lmforge data curate` and `lmforge data mix` on bad input: a bad line (invalid UTF-8, bad JSON,
no string `text`) is a reject naming file, line and reason and the run goes on; a file that cannot
be read at all (not gzip, truncated) is one reject and one warning line naming it; `strict: true`
stops at the first with one line and no traceback."""

import gzip
import json
import logging

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


# -- data curate ---------------------------------------------------------------------------------


def curate(tmp_path, capsys, caplog, inputs, strict=False, name="out"):
    out = tmp_path / name
    config = {"input": [str(p) for p in inputs], "output": str(out), "workers": 1,
              "steps": [{"length": {"min_words": 1}}], "write_removed": False}  # fmt: skip
    if strict:
        config["strict"] = True
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    rc, stdout, err = run(capsys, caplog, "curate", cfg, "--quiet")
    return rc, stdout, err, out


def kept_ids(out):
    ids = []
    for shard in sorted((out / "documents").glob("*.jsonl.gz")):
        ids += [json.loads(line)["id"] for line in gzip.decompress(shard.read_bytes()).splitlines()]
    return ids


def curate_rejects(out):
    return [json.loads(line) for p in sorted((out / "rejects").glob("*.jsonl")) for line in p.read_text().splitlines()]


def test_curate_invalid_utf8_loses_one_line(tmp_path, capsys, caplog):
    bad = tmp_path / "bad.jsonl"
    lines = [row(i) for i in range(6)]
    lines[2] = lines[2].replace(b"number", b"num\xffber")  # line 3
    bad.write_bytes(b"".join(lines))
    rc, out, err, folder = curate(tmp_path, capsys, caplog, [bad])
    assert rc == 0 and "Traceback" not in err, err
    assert kept_ids(folder) == ["d0", "d1", "d3", "d4", "d5"]
    (r,) = curate_rejects(folder)
    assert (r["file"], r["line"], r["reason"]) == (str(bad), 3, "invalid UTF-8 (byte 0xff at column 35)")
    assert "num\ufffdber" in r["raw"]
    stats = json.loads((folder / "stats.json").read_text())
    assert (stats["input"]["rejected_lines"], stats["input"]["skipped_files"]) == (1, 0)
    assert "skipped 0 files and 1 line" in err


def test_curate_bad_json_missing_and_non_string_text(tmp_path, capsys, caplog):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(
        row(0) + b'{"id": "x", "text": \n' + row(2) + b'{"id": "y"}\n' + row(4) + b'{"id": "z", "text": 7}\n' + row(6)
    )
    rc, out, err, folder = curate(tmp_path, capsys, caplog, [bad])
    assert rc == 0 and "Traceback" not in err, err
    assert kept_ids(folder) == ["d0", "d2", "d4", "d6"]
    got = [(r["file"], r["line"], r["reason"].split(" (")[0]) for r in curate_rejects(folder)]
    assert got == [(str(bad), 2, "invalid JSON"), (str(bad), 4, "document has no 'text' field"),
                   (str(bad), 6, "document 'text' is int, not a string")]  # fmt: skip
    assert "skipped 0 files and 3 lines" in err


def test_curate_not_gzip_beside_a_good_file(tmp_path, capsys, caplog):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl.gz").write_bytes(b"this is not gzip at all\n")
    (tmp_path / "in" / "b.jsonl").write_bytes(row(0) + row(1))
    rc, out, err, folder = curate(tmp_path, capsys, caplog, [tmp_path / "in"])
    assert rc == 0 and "Traceback" not in err, err
    assert kept_ids(folder) == ["d0", "d1"]
    named = [line for line in err.splitlines() if "a.jsonl.gz" in line]
    assert len(named) == 1 and "not a gzip file" in named[0]
    (r,) = curate_rejects(folder)
    assert r["file"] == str(tmp_path / "in" / "a.jsonl.gz") and r["line"] is None and "not a gzip" in r["reason"]
    stats = json.loads((folder / "stats.json").read_text())
    assert (stats["input"]["rejected_lines"], stats["input"]["skipped_files"]) == (0, 1)
    assert "skipped 1 file and 0 lines" in err


def test_curate_truncated_gzip_keeps_documents_before_the_cut(tmp_path, capsys, caplog):
    cut = truncated_gzip(tmp_path / "cut.jsonl.gz")
    rc, out, err, folder = curate(tmp_path, capsys, caplog, [cut])
    assert rc == 0 and "Traceback" not in err, err
    kept = kept_ids(folder)
    assert 0 < len(kept) < 3000 and kept == [f"d{i}" for i in range(len(kept))]
    (r,) = curate_rejects(folder)
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


def test_curate_strict_stops_with_one_line(tmp_path, capsys, caplog):
    for path, expected in bad_inputs(tmp_path):
        rc, out, err, folder = curate(tmp_path, capsys, caplog, [path], strict=True, name=f"out-{path.name}")
        errors = [line for line in err.splitlines() if line.startswith("lmforge: error:")]
        assert rc != 0 and "Traceback" not in err and len(errors) == 1 and expected in errors[0], (path, err)
        assert not (folder / "stats.json").exists() and not list(folder.glob("documents/*"))


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
    rejects = sorted((r["file"], r["line"] or 0, r["reason"]) for r in curate_rejects(out))
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


# -- data mix ------------------------------------------------------------------------------------


def mix(tmp_path, capsys, caplog, paths, strict=False, name="mixed"):
    out = tmp_path / name
    config = {"sources": [{"name": "s", "paths": [str(p) for p in paths], "proportion": 1.0}], "output": str(out)}
    if strict:
        config["strict"] = True
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    rc, stdout, err = run(capsys, caplog, "mix", cfg, "--quiet")
    return rc, stdout, err, out


def mixed_ids(out):
    ids = []
    for shard in sorted(out.glob("mix-*.jsonl.gz")):
        ids += [json.loads(line)["id"] for line in gzip.decompress(shard.read_bytes()).splitlines()]
    return sorted(ids, key=lambda i: int(i[1:]))


def mix_rejects(out):
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def test_mix_invalid_utf8_loses_one_line(tmp_path, capsys, caplog):
    bad = tmp_path / "bad.jsonl"
    lines = [row(i) for i in range(6)]
    lines[2] = lines[2].replace(b"number", b"num\xffber")  # line 3
    bad.write_bytes(b"".join(lines))
    rc, out, err, folder = mix(tmp_path, capsys, caplog, [bad])
    assert rc == 0 and "Traceback" not in err, err
    assert mixed_ids(folder) == ["d0", "d1", "d3", "d4", "d5"]
    assert mix_rejects(folder) == [{"file": str(bad), "line": 3, "reason": "invalid UTF-8 (byte 0xff at column 35)"}]
    report = json.loads((folder / "mix.json").read_text())
    assert (report["rejected_lines"], report["skipped_files"]) == (1, 0)
    assert f"skipped 0 files and 1 line; see {folder / 'rejects.jsonl'}" in err


def test_mix_bad_json_missing_and_non_string_text(tmp_path, capsys, caplog):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(
        row(0) + b'{"id": "x", "text": \n' + row(2) + b'{"id": "y"}\n' + row(4) + b'{"id": "z", "text": 7}\n' + row(6)
    )
    rc, out, err, folder = mix(tmp_path, capsys, caplog, [bad])
    assert rc == 0 and "Traceback" not in err, err
    assert mixed_ids(folder) == ["d0", "d2", "d4", "d6"]
    got = [(r["file"], r["line"], r["reason"].split(" (")[0]) for r in mix_rejects(folder)]
    assert got == [(str(bad), 2, "invalid JSON"), (str(bad), 4, "document has no 'text' field"),
                   (str(bad), 6, "document 'text' is int, not a string")]  # fmt: skip


def test_mix_not_gzip_beside_a_good_file(tmp_path, capsys, caplog):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl.gz").write_bytes(b"this is not gzip at all\n")
    (tmp_path / "in" / "b.jsonl").write_bytes(row(0) + row(1))
    rc, out, err, folder = mix(tmp_path, capsys, caplog, [tmp_path / "in"])
    assert rc == 0 and "Traceback" not in err, err
    assert mixed_ids(folder) == ["d0", "d1"]
    named = [line for line in err.splitlines() if "a.jsonl.gz" in line]
    assert len(named) == 1 and "not a gzip file" in named[0]
    (r,) = mix_rejects(folder)
    assert r["file"] == str(tmp_path / "in" / "a.jsonl.gz") and r["line"] is None
    assert "skipped 1 file and 0 lines" in err


def test_mix_truncated_gzip_keeps_documents_before_the_cut(tmp_path, capsys, caplog):
    cut = truncated_gzip(tmp_path / "cut.jsonl.gz")
    rc, out, err, folder = mix(tmp_path, capsys, caplog, [cut])
    assert rc == 0 and "Traceback" not in err, err
    kept = mixed_ids(folder)
    assert 0 < len(kept) < 3000 and kept == [f"d{i}" for i in range(len(kept))]
    (r,) = mix_rejects(folder)
    assert r["line"] is None and r["reason"].startswith(f"truncated: the stream ends after line {len(kept)}")
    assert len([line for line in err.splitlines() if "cut.jsonl.gz: truncated" in line]) == 1


def test_mix_strict_stops_with_one_line(tmp_path, capsys, caplog):
    for path, expected in bad_inputs(tmp_path):
        rc, out, err, folder = mix(tmp_path, capsys, caplog, [path], strict=True, name=f"mix-{path.name}")
        errors = [line for line in err.splitlines() if line.startswith("lmforge: error:")]
        assert rc != 0 and "Traceback" not in err and len(errors) == 1 and expected in errors[0], (path, err)
        assert not folder.exists()
