"""`lmforge data tokenize` on bad input: bad lines and unreadable files are skipped and listed in
rejects.jsonl (the run goes on, no traceback); `--strict` stops at the first with one line."""

import gzip
import json
import logging

import pytest

from lmforge.cli import main
from lmforge.data.token_files import TokenFiles


def row(i, text=None):
    return json.dumps({"id": f"d{i}", "text": text or f"document number {i} has some words"}).encode() + b"\n"


def run(capsys, caplog, *args):
    """Run the CLI; return (exit code, stdout, stderr + log lines)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rc = main(["data", "tokenize", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err + caplog.text


def ids(folder):
    files = TokenFiles(folder)
    return [s.id for s in files.documents_in(0, files.num_tokens)]


def rejects(folder):
    return [json.loads(line) for line in (folder / "rejects.jsonl").read_text().splitlines()]


@pytest.fixture
def tok(token_data):
    return token_data / "tokenizer.json"


def test_invalid_utf8_loses_one_line(tok, tmp_path, capsys, caplog):
    bad = tmp_path / "bad.jsonl"
    lines = [row(i) for i in range(6)]
    lines[2] = lines[2].replace(b"number", b"num\xffber")  # line 3
    bad.write_bytes(b"".join(lines))
    rc, out, err = run(capsys, caplog, bad, "--tokenizer", tok, "--out", tmp_path / "out", "--workers", "1")
    assert rc == 0 and "Traceback" not in err
    assert ids(tmp_path / "out") == ["d0", "d1", "d3", "d4", "d5"]
    assert rejects(tmp_path / "out") == [
        {"file": str(bad), "line": 3, "reason": "invalid UTF-8 (byte 0xff at column 35)"}
    ]
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert (meta["rejected_lines"], meta["skipped_files"], meta["duplicate_ids"]) == (1, 0, 0)
    assert f"skipped 0 files and 1 line; see {tmp_path / 'out' / 'rejects.jsonl'}" in err


def test_bad_json_missing_and_non_string_text_rejected_with_reason(tok, tmp_path, capsys, caplog):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(
        row(0) + b'{"id": "x", "text": \n' + row(2) + b'{"id": "y"}\n' + row(4) + b'{"id": "z", "text": 7}\n' + row(6)
    )
    rc, out, err = run(capsys, caplog, bad, "--tokenizer", tok, "--out", tmp_path / "out", "--workers", "1")
    assert rc == 0 and "Traceback" not in err
    assert ids(tmp_path / "out") == ["d0", "d2", "d4", "d6"]
    got = [(r["line"], r["reason"].split(" (")[0]) for r in rejects(tmp_path / "out")]
    assert got == [(2, "invalid JSON"), (4, "document has no 'text' field"), (6, "document 'text' is int, not a string")]


def test_not_gzip_file_is_skipped_beside_a_good_one(tok, tmp_path, capsys, caplog):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl.gz").write_bytes(b"this is not gzip at all\n")
    (tmp_path / "in" / "b.jsonl").write_bytes(row(0) + row(1))
    rc, out, err = run(capsys, caplog, tmp_path / "in", "--tokenizer", tok, "--out", tmp_path / "out", "--workers", "1")
    assert rc == 0 and "Traceback" not in err
    assert ids(tmp_path / "out") == ["d0", "d1"]
    named = [line for line in err.splitlines() if "a.jsonl.gz" in line]
    assert len(named) == 1 and "not a gzip file" in named[0]
    assert rejects(tmp_path / "out") == [
        {"file": str(tmp_path / "in" / "a.jsonl.gz"), "line": None, "reason": rejects(tmp_path / "out")[0]["reason"]}
    ]


def test_truncated_gzip_keeps_documents_before_the_cut(tok, tmp_path, capsys, caplog):
    data = gzip.compress(b"".join(row(i, f"words {i} " * 30) for i in range(3000)))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    rc, out, err = run(capsys, caplog, cut, "--tokenizer", tok, "--out", tmp_path / "out", "--workers", "1")
    assert rc == 0 and "Traceback" not in err
    kept = ids(tmp_path / "out")
    assert 0 < len(kept) < 3000 and kept == [f"d{i}" for i in range(len(kept))]
    (reject,) = rejects(tmp_path / "out")
    assert reject["line"] is None and reject["reason"].startswith(f"truncated: the stream ends after line {len(kept)}")
    assert "cut.jsonl.gz: truncated" in err


def bad_inputs(tmp_path):
    """Each case: (input file, what the one-line error must contain)."""
    cases = []
    utf = tmp_path / "utf.jsonl"
    utf.write_bytes(row(0) + b'{"text": "\xff"}\n' + row(2))
    cases.append((utf, "utf.jsonl:2: invalid UTF-8"))
    js = tmp_path / "js.jsonl"
    js.write_bytes(row(0) + row(1) + b"{oops\n")
    cases.append((js, "js.jsonl:3: invalid JSON"))
    notgz = tmp_path / "notgz.jsonl.gz"
    notgz.write_bytes(b"plain text\n")
    cases.append((notgz, "notgz.jsonl.gz: not a gzip file"))
    data = gzip.compress(b"".join(row(i, f"words {i} " * 30) for i in range(3000)))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    cases.append((cut, "cut.jsonl.gz: truncated"))
    return cases


def test_strict_stops_with_one_line_and_no_output(tok, tmp_path, capsys, caplog):
    for path, expected in bad_inputs(tmp_path):
        out_dir = tmp_path / f"out-{path.name}"
        rc, out, err = run(capsys, caplog, path, "--strict", "--tokenizer", tok, "--out", out_dir, "--workers", "1")
        errors = [line for line in err.splitlines() if line.startswith("lmforge: error:")]
        assert rc != 0 and "Traceback" not in err and len(errors) == 1 and expected in errors[0], (path, err)
        assert not out_dir.exists() and not list(tmp_path.glob(f".{out_dir.name}.*"))


def test_duplicate_ids_are_reported(tok, tmp_path, capsys, caplog):
    (tmp_path / "a.jsonl").write_bytes(row(0) + row(1) + row(2))
    (tmp_path / "b.jsonl").write_bytes(row(1) + row(3) + row(1))
    rc, out, err = run(
        capsys, caplog, tmp_path / "a.jsonl", tmp_path / "b.jsonl", "--tokenizer", tok, "--out", tmp_path / "out",
        "--workers", "1",
    )
    assert rc == 0
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["duplicate_ids"] == 2
    (line,) = [line for line in err.splitlines() if "reuse an id" in line]
    assert "2 documents" in line and "'d1'" in line and "'d0'" not in line
    assert not (tmp_path / "out" / "rejects.jsonl").exists()


def test_workers_give_identical_bytes_and_rejects(tok, tmp_path, capsys, caplog, monkeypatch):
    import lmforge.data.tokenize as tokenize_module

    monkeypatch.setattr(tokenize_module, "CHUNK_BYTES", 2000)  # several chunks per file, so workers interleave
    (tmp_path / "in").mkdir()
    for f in range(3):
        lines = [row(f * 100 + i) for i in range(100)]
        lines[7 + f] = b'{"id": 1, "text": \xfe}\n'
        lines[50] = b'{"no text": true}\n'
        (tmp_path / "in" / f"f{f}.jsonl").write_bytes(b"".join(lines))
    (tmp_path / "in" / "f1.jsonl.gz").write_bytes(b"junk")
    for w in (1, 2):
        rc, out, err = run(
            capsys, caplog, tmp_path / "in", "--tokenizer", tok, "--out", tmp_path / f"w{w}", "--workers", str(w)
        )
        assert rc == 0, err
    a, b = tmp_path / "w1", tmp_path / "w2"
    assert (a / "rejects.jsonl").read_bytes() == (b / "rejects.jsonl").read_bytes()
    assert len(rejects(a)) == 7
    ma, mb = (json.loads((d / "meta.json").read_text()) for d in (a, b))
    assert ma["fingerprint"] == mb["fingerprint"] and ma["num_documents"] == 3 * 98
    for part in ma["parts"]:
        assert (a / part["tokens"]).read_bytes() == (b / part["tokens"]).read_bytes()
        assert gzip.decompress((a / part["documents"]).read_bytes()) == gzip.decompress(
            (b / part["documents"]).read_bytes()
        )
