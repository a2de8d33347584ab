"""A curate pipeline's `tokenize:` option: token files straight from the kept documents."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import kill_after_markers
import yaml

from lmforge.curate.pipeline import CurateConfig, curate
from lmforge.data.token_files import TokenFiles
from lmforge.data.tokenize import tokenize
from lmforge.errors import ConfigError
from sample_corpus import build_sample_corpus, write_sample_corpus

STEPS = [{"gopher_quality": {}}, {"c4_quality": {"filter_no_terminal_punct": False}}]
# meta.json fields that may differ between the pipeline and `data tokenize` on its documents:
# `seconds` (time spent). Everything else, `source_file` included (both name the absolute path
# of OUTPUT/documents/shard-NNNNN.jsonl.gz), must be equal.
MAY_DIFFER = {"seconds"}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(build_sample_corpus(n_docs=300, near_duplicates=30, exact_duplicates=5, seed=5), folder,
                        n_files=4)  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def tokenizer_json(token_data) -> str:
    return str(token_data / "tokenizer.json")


def run(tmp: Path, inputs: Path, tok: str, name: str, steps=STEPS, **extra) -> Path:
    spec = {"input": [str(inputs)], "output": str(tmp / name), "steps": steps, "tokenize": {"tokenizer": tok}}
    curate(CurateConfig.from_dict({**spec, **extra}), progress=False)
    return tmp / name


def token_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of a token folder; meta.json without the fields allowed to differ."""
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "meta.json"}
    meta = json.loads((folder / "meta.json").read_text())
    files["meta.json"] = json.dumps({k: v for k, v in meta.items() if k not in MAY_DIFFER}, sort_keys=True).encode()
    return files


def test_pipeline_tokens_equal_data_tokenize_on_its_documents(tmp_path, corpus_dir, tokenizer_json):
    out = run(tmp_path, corpus_dir, tokenizer_json, "one", workers=1)
    ref = tmp_path / "ref"
    tokenize([out / "documents"], tokenizer_json, ref, workers=1, progress=False)
    a, b = token_bytes(out / "tokens"), token_bytes(ref)
    assert sorted(a) == sorted(b) and any(k.endswith(".npy") for k in a)
    for name in a:
        assert a[name] == b[name], name
    meta = json.loads((out / "tokens" / "meta.json").read_text())
    n_docs = sum(1 for p in (out / "documents").glob("*.gz") for _ in gzip.open(p))
    assert meta["num_documents"] == n_docs > 0 and meta["tokenizer"]["fingerprint"]
    # `data tokenize` twice writes the same bytes too (the gzip header holds no name or time)
    tokenize([out / "documents"], tokenizer_json, tmp_path / "ref2", workers=1, progress=False)
    assert token_bytes(tmp_path / "ref2") == b
    # and the folder is what training reads
    tf = TokenFiles(out / "tokens")
    assert tf.num_tokens == meta["num_tokens"] and len(tf.documents_in(0, 10)) >= 1


@pytest.mark.parametrize("options", [{"validation": 0.2}, {"validation_docs": 25, "validation_seed": 3}],
                         ids=["fraction", "count"])  # fmt: skip
def test_pipeline_split_equals_data_tokenize_split_on_its_documents(tmp_path, corpus_dir, tokenizer_json, options):
    from lmforge.data.split import ValidationSplit

    out = tmp_path / "split"
    spec = {"input": [str(corpus_dir)], "output": str(out), "steps": STEPS, "workers": 1,
            "tokenize": {"tokenizer": tokenizer_json, **options}}  # fmt: skip
    curate(CurateConfig.from_dict(spec), progress=False)
    assert sorted(p.name for p in (out / "tokens").iterdir()) == ["train", "val"]
    seed = options.get("validation_seed", 0)
    split = ValidationSplit.of(options.get("validation"), options.get("validation_docs"), seed)
    tokenize([out / "documents"], tokenizer_json, tmp_path / "ref", workers=1, progress=False, validation=split)
    for side in ("train", "val"):
        a, b = token_bytes(out / "tokens" / side), token_bytes(tmp_path / "ref" / side)
        assert sorted(a) == sorted(b) and any(k.endswith(".npy") for k in a)
        for name in a:
            assert a[name] == b[name], f"{side}/{name}"
    meta = {side: json.loads((out / "tokens" / side / "meta.json").read_text()) for side in ("train", "val")}
    n_docs = sum(1 for p in (out / "documents").glob("*.gz") for _ in gzip.open(p))
    assert meta["train"]["num_documents"] + meta["val"]["num_documents"] == n_docs
    if "validation_docs" in options:
        assert meta["val"]["num_documents"] == 25 and meta["val"]["split"]["validation_seed"] == 3
    # the pipeline's own record is the unsplit config's plus the options
    assert json.loads((out / "pipeline.json").read_text())["pipeline"]["tokenize"]["validation_seed"] == seed


def test_unsplit_tokenize_config_round_trips_without_split_fields(tokenizer_json):
    from lmforge.curate.tokens import TokenizeConfig

    # pipeline.json of runs made before the split options existed must still match on resume
    assert TokenizeConfig(tokenizer=tokenizer_json).to_dict() == {"tokenizer": tokenizer_json, "out": None}
    with pytest.raises(ConfigError, match=r"tokenize.validation: 2.0 is not a fraction"):
        CurateConfig.from_dict({"input": ["x"], "output": "o", "steps": STEPS,
                                "tokenize": {"tokenizer": tokenizer_json, "validation": 2.0}})  # fmt: skip


def test_two_workers_and_ray_write_the_same_tokens(tmp_path, corpus_dir, tokenizer_json):
    one = run(tmp_path, corpus_dir, tokenizer_json, "one", workers=1)
    two = run(tmp_path, corpus_dir, tokenizer_json, "two", workers=2)
    a = token_bytes(one / "tokens")
    # source_file names each run's own documents folder
    norm = lambda d, root: {k: v.replace(str(root).encode(), b"ROOT") for k, v in d.items()}  # noqa: E731
    assert norm(a, one) == norm(token_bytes(two / "tokens"), two)
    pytest.importorskip("ray")
    ray_out = run(tmp_path, corpus_dir, tokenizer_json, "ray", workers=2, executor="ray")
    assert norm(a, one) == norm(token_bytes(ray_out / "tokens"), ray_out)


def test_sigkill_mid_run_then_rerun_gives_the_same_tokens(tmp_path, corpus_dir, tokenizer_json):
    steps = [*STEPS, {"minhash_dedup": {}}]  # the tokenizing stage is the second one
    clean = run(tmp_path, corpus_dir, tokenizer_json, "clean", steps=steps, workers=1)
    spec = {"input": [str(corpus_dir)], "output": str(tmp_path / "killed"), "steps": steps, "workers": 1,
            "tokenize": {"tokenizer": tokenizer_json}}  # fmt: skip
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "lmforge.cli", "data", "curate", str(tmp_path / "p.yaml"), "--quiet"]
    markers = tmp_path / "killed" / "work" / "stage-1"
    kill_after_markers(cmd, markers, 1, poll=0.01)
    assert not (tmp_path / "killed" / "tokens").exists()
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    norm = lambda d, root: {k: v.replace(str(root).encode(), b"ROOT") for k, v in d.items()}  # noqa: E731
    assert norm(token_bytes(clean / "tokens"), clean) == norm(token_bytes(tmp_path / "killed" / "tokens"),
                                                              tmp_path / "killed")  # fmt: skip
    assert not list((tmp_path / "killed" / "tokens").glob("*.tmp"))


def test_training_reads_the_pipeline_tokens(tmp_path, corpus_dir, tokenizer_json, one_thread):
    from lmforge.train.config import RunConfig
    from lmforge.train.trainer import Trainer

    out = run(tmp_path, corpus_dir, tokenizer_json, "one", workers=1)
    cfg = RunConfig.from_dict({
        "model": {"vocab_size": 512, "d_model": 32, "n_layers": 1, "n_heads": 2, "mlp_hidden": 64},
        "data": {"train": [str(out / "tokens")], "seq_len": 32},
        "trainer": {"run_dir": str(tmp_path / "run"), "batch_tokens": 128, "micro_batch_size": 4, "max_steps": 2,
                    "checkpoint_every": 2, "keep_checkpoints": 0},
        "tokenizer": tokenizer_json,
    })  # fmt: skip
    Trainer(cfg).fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("step") == 2 for r in rows)


def test_tokenize_option_errors_name_the_field(tmp_path, corpus_dir, tokenizer_json):
    with pytest.raises(ConfigError, match="tokenize.tokenizer"):
        run(tmp_path, corpus_dir, str(tmp_path / "missing.json"), "bad", workers=1)
    with pytest.raises(ConfigError, match="tokenize.out"):
        curate(CurateConfig.from_dict({"input": [str(corpus_dir)], "output": str(tmp_path / "o"), "steps": STEPS,
                                       "tokenize": {"tokenizer": tokenizer_json, "out": str(tmp_path / "o" / "documents")}}),
               progress=False)  # fmt: skip
