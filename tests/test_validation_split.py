"""Held-out validation splits: `data tokenize --validation / --validation-docs`, `data mix`'s
`validation:`, and training on the pair (curate's `tokenize: {validation}` is in
test_curate_tokenize.py). The split is a seeded hash of each document's id, so it must not depend
on workers or file order, and the two sides must partition the documents."""

from __future__ import annotations

import gzip
import json
import logging
import random
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_curate_mix import write_source

from lmforge.cli import main
from lmforge.curate.mix import MixConfig, MixSource, mix
from lmforge.data.split import ValidationSplit, split_key
from lmforge.data.token_files import TokenFiles
from lmforge.data.tokenize import tokenize

WORDS = ["the", "of", "and", "to", "in", "a", "that", "is", "was", "he", "for", "it", "with", "as", "on", "be"]
DUPLICATED = ["a3", "a17", "c5"]  # ids that b.jsonl.gz repeats with other texts


def write_docs(path: Path, prefix: str, n: int, seed: int, extra: list[str] = ()) -> Path:
    """n short dolma rows with ids `<prefix><i>`, then the raw `extra` lines (.gz by suffix)."""
    rng = random.Random(seed)
    lines = [json.dumps({"id": f"{prefix}{i}", "text": " ".join(rng.choices(WORDS, k=rng.randint(3, 12))),
                         "source": prefix}) for i in range(n)]  # fmt: skip
    data = "".join(line + "\n" for line in [*lines, *extra]).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    """3,003 documents in three files (one gzipped, one in a folder), with three ids repeated
    across files and one bad line."""
    root = tmp_path_factory.mktemp("split_corpus")
    dupes = [json.dumps({"id": i, "text": f"another text for {i}"}) for i in DUPLICATED]
    return [
        write_docs(root / "a.jsonl", "a", 1000, seed=1),
        write_docs(root / "b.jsonl.gz", "b", 1000, seed=2, extra=[*dupes, '{"id": "bad", "text": ']),
        write_docs(root / "c" / "c.jsonl", "c", 1000, seed=3),
    ]


@pytest.fixture(scope="module")
def tok(token_data) -> str:
    return str(token_data / "tokenizer.json")


def input_ids(files: list[Path]) -> list[str]:
    ids = []
    for f in files:
        with gzip.open(f, "rt") if f.suffix == ".gz" else open(f) as lines:
            for line in lines:
                try:
                    ids.append(json.loads(line)["id"])
                except json.JSONDecodeError:
                    pass  # the planted bad line
    return ids


def ids_of(folder: Path) -> list[str]:
    files = TokenFiles(folder)
    return [s.id for s in files.documents_in(0, files.num_tokens)]


def tokens_by_id(folder: Path) -> dict[str, list[int]]:
    files = TokenFiles(folder)
    return {s.id: files.read(s.start, s.end + 1).tolist() for s in files.documents_in(0, files.num_tokens)}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of a split (both sides); meta.json without `seconds`."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "meta.json":
                data = json.dumps({k: v for k, v in json.loads(data).items() if k != "seconds"}).encode()
            out[str(p.relative_to(folder))] = data
    return out


def without_options(files: dict[str, bytes]) -> dict[str, bytes]:
    """`folder_bytes` with the split's options left out of the meta.json files."""
    return {k: re.sub(rb'"validation(_docs)?": [^,]+', b"", v) for k, v in files.items()}


def split_tokenize(files, tok, out: Path, workers: int = 1, **options) -> dict:
    split = ValidationSplit.of(options.get("fraction"), options.get("docs"), options.get("seed", 0))
    return tokenize(files, tok, out, workers=workers, progress=False, strict=False, validation=split)


@pytest.fixture(scope="module")
def tenth(corpus, tok, tmp_path_factory) -> Path:
    """The corpus split 10 % / 90 %, one worker, files in the order given."""
    out = tmp_path_factory.mktemp("tenth") / "out"
    split_tokenize(corpus, tok, out, fraction=0.1)
    return out


# -- data tokenize ------------------------------------------------------------------------------------------


def test_fraction_split_partitions_every_document(tenth, corpus, tok, tmp_path):
    train, val = ids_of(tenth / "train"), ids_of(tenth / "val")
    assert not set(train) & set(val)  # disjoint, so each repeated id is on one side with all its copies
    assert Counter(train) + Counter(val) == Counter(input_ids(corpus))  # covers every document, once
    assert all(Counter(input_ids(corpus))[i] == 2 for i in DUPLICATED)
    assert abs(len(val) / (len(train) + len(val)) - 0.1) < 0.02  # 3,003 documents: sd 0.0055
    # each document's ids are those the unsplit run gives it (repeated ids aside)
    tokenize(corpus, tok, tmp_path / "whole", workers=1, progress=False, strict=False)
    whole = tokens_by_id(tmp_path / "whole")
    assert "split" not in json.loads((tmp_path / "whole" / "meta.json").read_text())  # no split: today's folder
    assert not (tmp_path / "whole" / "train").exists()
    for side in ("train", "val"):
        got = tokens_by_id(tenth / side)
        assert all(got[i] == whole[i] for i in got if i not in DUPLICATED)
    # both sides are ordinary token folders with the run's rejects and a split record
    assert not (tenth / "meta.json").exists()
    assert (tenth / "train" / "rejects.jsonl").read_bytes() == (tenth / "val" / "rejects.jsonl").read_bytes() != b""
    for side in ("train", "val"):
        record = json.loads((tenth / side / "meta.json").read_text())["split"]
        assert record["side"] == side and record["validation"] == 0.1 and record["validation_seed"] == 0
        assert record["documents"] == {"train": len(train), "val": len(val)}


def test_same_bytes_for_any_workers_or_file_order(tenth, corpus, tok, tmp_path):
    a, b, c = corpus
    split_tokenize([c.parent, b, a], tok, tmp_path / "w2", workers=2, fraction=0.1)
    split_tokenize([b, c, a], tok, tmp_path / "w1", workers=1, fraction=0.1)
    ref = folder_bytes(tenth)
    assert any(k.startswith("val/") and k.endswith(".npy") for k in ref)
    assert folder_bytes(tmp_path / "w2") == ref
    assert folder_bytes(tmp_path / "w1") == ref


def test_count_is_exact_and_takes_the_smallest_keys(tenth, corpus, tok, tmp_path):
    split_tokenize(corpus, tok, tmp_path / "n", docs=37, seed=5)
    val = ids_of(tmp_path / "n" / "val")
    assert len(val) == 37 and len(ids_of(tmp_path / "n" / "train")) == len(input_ids(corpus)) - 37
    ids = input_ids(corpus)  # in the split's canonical (sorted) file order, which is the order given here
    smallest = sorted(range(len(ids)), key=lambda k: (split_key(ids[k], 5), k))[:37]
    assert Counter(val) == Counter(ids[k] for k in smallest)
    # the count of the 10 % split's val side picks exactly that side, byte for byte
    n_val = len(ids_of(tenth / "val"))
    split_tokenize(corpus, tok, tmp_path / "same", docs=n_val)
    assert without_options(folder_bytes(tmp_path / "same")) == without_options(folder_bytes(tenth))


def test_count_beyond_the_corpus_takes_all_and_says_train_is_empty(corpus, tok, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        split_tokenize(corpus[:1], tok, tmp_path / "all", docs=5000)
    assert len(ids_of(tmp_path / "all" / "val")) == 1000
    assert TokenFiles(tmp_path / "all" / "train").num_tokens == 0
    assert any("train has no documents" in r.message for r in caplog.records)


def test_seed_changes_the_split(tenth, corpus, tok, tmp_path):
    split_tokenize(corpus, tok, tmp_path / "s1", fraction=0.1, seed=1)
    assert set(ids_of(tmp_path / "s1" / "val")) != set(ids_of(tenth / "val"))


def test_cli_writes_both_sides_and_errors_are_one_line(corpus, tok, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["data", "tokenize", str(corpus[0]), "--tokenizer", tok, "--out", str(out), "--workers", "1",
                 "--validation-docs", "10", "--validation-seed", "2"]) == 0  # fmt: skip
    assert f"{out / 'val'} (10 documents" in capsys.readouterr().out
    assert json.loads((out / "val" / "meta.json").read_text())["split"]["validation_docs"] == 10
    for bad, names in [
        (["--validation", "1.5"], "--validation: 1.5"),
        (["--validation", "0.1", "--validation-docs", "5"], "--validation and --validation-docs"),
        (["--validation-docs", "0"], "--validation-docs: 0"),
        (["--validation-seed", "3"], "--validation-seed"),
    ]:
        args = ["data", "tokenize", str(corpus[0]), "--tokenizer", tok, "--out", str(tmp_path / "x"), *bad]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert names in err and "\n" not in err, err
    assert main(["data", "tokenize", str(corpus[0]), "--tokenizer", tok, "--out", str(out), "--validation", "0.5"]) == 2
    assert "already holds tokenized data" in capsys.readouterr().err


# -- data mix --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mix_inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mix_split")
    write_source(root / "big" / "a.jsonl", "big", 300, seed=1)
    write_source(root / "small" / "s.jsonl", "small", 60, seed=3)
    return root


def run_mix(root: Path, out: Path, **extra) -> dict:
    sources = [MixSource(name="big", paths=[str(root / "big")], proportion=0.6),
               MixSource(name="small", paths=[str(root / "small")], proportion=0.4)]  # fmt: skip
    # 12,000 words: 'small' (~2,100 words) is repeated, 'big' downsampled
    config = MixConfig(sources=sources, output=out, total_tokens=12_000, seed=1, shard_size_mb=0.01, **extra)
    return mix(config, progress=False)


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for shard in sorted(folder.glob("mix-*.jsonl.gz")) for line in gzip.open(shard, "rt")]


def original(doc_id: str) -> str:
    return re.sub(r"#rep\d+$", "", doc_id)


def test_mix_split_partitions_the_unsplit_mix(mix_inputs, tmp_path):
    plain = run_mix(mix_inputs, tmp_path / "plain")
    assert "validation" not in plain and "validation" not in plain["config"]
    report = run_mix(mix_inputs, tmp_path / "split", validation=0.2, validation_seed=4)
    everything = rows(tmp_path / "plain")
    train, val = rows(tmp_path / "split" / "train"), rows(tmp_path / "split" / "val")
    assert not list((tmp_path / "split").glob("mix-*")) and len(report["shards"]) > 2
    assert any("#rep" in r["id"] for r in val)  # upsampled copies travel with their document
    # disjoint by original id; together the unsplit rows, each side in the unsplit order
    assert not {original(r["id"]) for r in train} & {original(r["id"]) for r in val}
    held = {original(r["id"]) for r in val}
    assert [r for r in everything if original(r["id"]) in held] == val
    assert [r for r in everything if original(r["id"]) not in held] == train
    # the rule is the shared one: a seeded hash of the original id
    split = ValidationSplit(fraction=0.2, seed=4)
    assert all(split.holds(split_key(original(r["id"]), 4)) == (original(r["id"]) in held) for r in everything)
    v = report["validation"]
    assert v["val"]["rows"] == len(val) and v["train"]["rows"] == len(train) and v["validation"] == 0.2
    # deterministic: a rerun writes the same bytes (mix.json names its own output folder)
    run_mix(mix_inputs, tmp_path / "again", validation=0.2, validation_seed=4)
    for p in (tmp_path / "split").rglob("*"):
        if p.is_file():
            again = (tmp_path / "again" / p.relative_to(tmp_path / "split")).read_bytes()
            assert again.replace(b"again", b"split") == p.read_bytes(), p


def test_mix_count_holds_out_exactly_n_documents(mix_inputs, tmp_path):
    report = run_mix(mix_inputs, tmp_path / "n", validation_docs=15)
    val = rows(tmp_path / "n" / "val")
    assert len({original(r["id"]) for r in val}) == 15 == report["validation"]["val"]["documents"]
    train_ids = {original(r["id"]) for r in rows(tmp_path / "n" / "train")}
    assert not train_ids & {original(r["id"]) for r in val}


def test_mix_split_options_are_checked(mix_inputs, tmp_path):
    from lmforge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^validation and validation_docs: give one"):
        run_mix(mix_inputs, tmp_path / "bad", validation=0.1, validation_docs=3)


# -- training on the pair ------------------------------------------------------------------------------------


def train_config(tmp_path: Path, tok: str, train: list[Path], validation: list[Path]) -> Path:
    cfg = {
        "model": {"vocab_size": 512, "d_model": 32, "n_layers": 1, "n_heads": 2, "mlp_hidden": 64},
        "data": {"train": [str(p) for p in train], "validation": [str(p) for p in validation], "seq_len": 32},
        "trainer": {"run_dir": str(tmp_path / "run"), "batch_tokens": 128, "micro_batch_size": 4, "max_steps": 2,
                    "eval_every": 2, "eval_batches": 2, "checkpoint_every": 2, "keep_checkpoints": 0},
        "tokenizer": tok,
    }  # fmt: skip
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lmforge: error: ") and "\n" not in err, err
    return err


def test_train_on_the_split_logs_validation_loss(tenth, tok, tmp_path, one_thread):
    assert main(["train", str(train_config(tmp_path, tok, [tenth / "train"], [tenth / "val"]))]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if "val_loss" in r] == [0, 2]
    assert all(np.isfinite(r["val_loss"]) for r in metrics if "val_loss" in r)


def test_naming_the_split_or_a_curate_folder_names_the_fix(tenth, tok, tmp_path, capsys):
    err = one_line_error(capsys, ["train", str(train_config(tmp_path, tok, [tenth], []))])
    assert f"use {tenth / 'train'} as data.train and set data.validation to {tenth / 'val'}" in err
    curated = tmp_path / "curated"
    (curated / "documents").mkdir(parents=True)
    (curated / "stats.json").write_text("{}")
    shutil.copytree(tenth, curated / "tokens")
    err = one_line_error(capsys, ["train", str(train_config(tmp_path, tok, [curated], []))])
    assert f"use {curated / 'tokens' / 'train'} as data.train" in err and "curate output" in err
    shutil.rmtree(curated / "tokens")
    shutil.copytree(tenth / "train", curated / "tokens")
    err = one_line_error(capsys, ["train", str(train_config(tmp_path, tok, [tenth / "train"], [curated]))])
    assert f"use {curated / 'tokens'} (its token files)" in err


def test_validation_from_another_tokenizer_names_both_fingerprints_and_the_fix(tenth, corpus, tok, tmp_path, capsys):
    from lmforge.data.tokenizer import train_bpe

    other = train_bpe([corpus[0]], vocab_size=300, show_progress=False)
    tokenize([corpus[2]], other, tmp_path / "other", workers=1, progress=False)
    err = one_line_error(capsys, ["train", str(train_config(tmp_path, tok, [tenth / "train"], [tmp_path / "other"]))])
    assert other.fingerprint in err and TokenFiles(tenth / "train").tokenizer_fingerprint in err
    assert "retokenize data.validation with data.train's tokenizer" in err and "--validation" in err
