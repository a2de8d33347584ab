import contextlib
import os

import pytest
import torch

# Tests compare numbers at 1e-5..1e-6: keep CPU math deterministic and single-stream.
torch.use_deterministic_algorithms(True, warn_only=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


import json  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402

WORDS = (
    "the of and to in a that is was he for it with as his on be at by had not are but from or have an they "
    "which one you were her all she there would their we him been has when who will more no if out so said what "
    "up its about into than them can only other new some could time these two may then do first any my now such "
    "like our over man me even most made after also did many before must through back years where much your way"
).split()


def write_corpus(path: Path, n_docs: int, seed: int, prefix: str = "d") -> Path:
    """Synthetic English-like documents in dolma JSONL (Zipf-ish word choice)."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(WORDS))]
    with open(path, "w") as f:
        for i in range(n_docs):
            n = rng.randint(30, 300)
            text = " ".join(rng.choices(WORDS, weights, k=n)).capitalize() + "."
            f.write(json.dumps({"id": f"{prefix}{i}", "text": text, "source": f"src{i % 3}"}) + "\n")
    return path


@pytest.fixture(scope="session")
def token_data(tmp_path_factory):
    """A tokenizer and train/validation token folders, made once per session."""
    from lmforge.data.tokenize import tokenize
    from lmforge.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("token_data")
    train_jsonl = write_corpus(root / "train.jsonl", 600, seed=1)
    val_jsonl = write_corpus(root / "val.jsonl", 60, seed=2, prefix="v")
    tok = train_bpe([train_jsonl], vocab_size=512, show_progress=False)
    tok.save(root / "tokenizer.json")
    tokenize([train_jsonl], tok, root / "train", workers=1, progress=False)
    tokenize([val_jsonl], tok, root / "val", workers=1, progress=False)
    return root


def tiny_run(token_data: Path, run_dir: Path, **trainer) -> dict:
    """The smallest run config on `token_data` (1 block, 32 wide, 128 tokens a step): a plain
    dict, for tests that only need a run to exist (its files, messages, checkpoints)."""
    return {
        "model": {"vocab_size": 512, "d_model": 32, "n_layers": 1, "n_heads": 2, "mlp_hidden": 64},
        "data": {"train": [str(token_data / "train")], "seq_len": 32},
        "trainer": {"run_dir": str(run_dir), "batch_tokens": 128, "micro_batch_size": 4, "max_steps": 2,
                    "checkpoint_every": 1, **trainer},
        "tokenizer": str(token_data / "tokenizer.json"),
    }


@contextlib.contextmanager
def single_thread():
    """Tiny models on 2 shared cores: one intra-op thread is many times faster than two
    contending ones (tests that run our scorer and a peer in one process, module fixtures that
    train several tiny runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    with single_thread():
        yield


def lm_eval_task_yaml(folder: Path, name: str, rows: list[dict]) -> None:
    """A local lm-eval multiple-choice task over {"context", "choices", "gold"} rows, read from
    JSONL. Columns by name (not Jinja), so no template touches whitespace; OLMES continuations
    already start with their space, hence an empty target_delimiter."""
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {folder / 'hf_cache'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: context\n"
        "doc_to_choice: choices\n"
        "doc_to_target: gold\n"
        'target_delimiter: ""\n'
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
    )


def kill_after_markers(cmd: list[str], markers: Path, count: int, *, poll: float = 0.05) -> None:
    """Start `cmd` (a curate run) in its own session and SIGKILL it once `count` task markers
    (`*.done.json`) are in `markers`: a crash mid-run, for the resume tests."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(markers.glob("*.done.json"))) < count and proc.poll() is None:
        time.sleep(poll)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
