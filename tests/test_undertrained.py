"""Under-trained token detection (Fishing for Magikarp): indicators, verification, report."""

import json
import random

import numpy as np
import pytest
import torch

from lmforge.analysis.undertrained import (
    find_undertrained,
    remove_first_pc,
    repeat_probabilities,
    special_token_ids,
    token_counts_from_folders,
    token_counts_from_run,
    undertrained_from_checkpoint,
    unembedding_scores,
    write_report,
)
from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer

from conftest import WORDS

# Made-up words: in the tokenizer's corpus, never in the model's.
MADE_UP = ("zorblax quindlewump fraxinope glimmerquatch snorbitude plunkvesh wobbergrist taxplenk yoomquaff "
           "brindlesnoot krespotheum vulpexiard").split()


def test_remove_first_pc_projects_out_the_dominant_centred_direction():
    gen = torch.Generator().manual_seed(0)
    n, d = 400, 16
    a = torch.zeros(d)
    a[3] = 1.0
    m = 0.1 * torch.randn(n, d, generator=gen) + 5.0 * torch.randn(n, 1, generator=gen) * a + 7.0  # offset + PC
    out = remove_first_pc(m)
    assert out.mean(dim=0).abs().max() < 1e-4  # centred
    assert (out @ a).abs().max() < 0.05 * (m[:, 3] - m[:, 3].mean()).abs().max()  # PC1 (≈ a) is gone
    # Equal to the textbook projection with the top right-singular vector of the centred matrix.
    centred = m - m.mean(dim=0)
    v = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    torch.testing.assert_close(out, centred - torch.outer(centred @ v, v), atol=1e-4, rtol=1e-4)
    # Only one direction is removed: the rank drops by one.
    assert torch.linalg.matrix_rank(out).item() == min(n, d) - 1


def test_unembedding_scores_find_a_planted_cluster_behind_a_nuisance_pc():
    """Unused rows share a direction b; every row also has a large random component along a
    (the "constant component" the paper removes). Removing PC1 reveals the cluster."""
    gen = torch.Generator().manual_seed(1)
    n, d = 500, 32
    a, b = torch.zeros(d), torch.zeros(d)
    a[0], b[1] = 1.0, 1.0
    u = 0.1 * torch.randn(n, d, generator=gen) + 3.0 * torch.randn(n, 1, generator=gen) * a
    unused = list(range(40))
    u[unused] += 0.6 * b
    reference, held_out = unused[:20], set(unused[20:])

    def precision(scores):
        order = [i for i in np.argsort(-scores) if i not in reference]
        return sum(i in held_out for i in order[:20]) / 20

    removed, info = unembedding_scores(u, reference, remove_pc="auto")
    assert info["first_pc_removed"] and info["reference_pc1_alignment"] < 0.8
    assert precision(removed) == 1.0
    kept, info = unembedding_scores(u, reference, remove_pc=False)
    assert not info["first_pc_removed"] and precision(kept) < precision(removed)

    # When the unused rows themselves make PC1 (most of a small vocabulary unused), "auto" keeps it.
    v = 0.1 * torch.randn(n, d, generator=gen)
    v[:300] += 2.0 * b
    scores, info = unembedding_scores(v, list(range(100)), remove_pc="auto")
    assert not info["first_pc_removed"] and info["reference_pc1_alignment"] > 0.8
    order = [i for i in np.argsort(-scores) if i >= 100]
    assert all(i < 300 for i in order[:200])


def tiny_model(vocab_size, **overrides):
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=vocab_size, d_model=32, n_layers=1, n_heads=2, mlp_hidden=64,
                       **overrides))


def test_report_files_and_default_reference(token_data, tmp_path):
    from lmforge.data.tokenizer import Tokenizer

    tok = Tokenizer.load(token_data / "tokenizer.json")
    model = tiny_model(tok.vocab_size)
    # No counts: the reference is the tokenizer's pad token (special, never in a corpus).
    result = find_undertrained(model, tok, percentile=5, max_verify=10)
    assert result["method"]["reference_count"] == 1 and "padding" in result["method"]["reference"]
    rows = result["candidates"]
    assert len(rows) == result["summary"]["candidates"] == int(np.ceil((tok.vocab_size - 2) * 0.05))
    assert not {r["id"] for r in rows} & special_token_ids(tok)  # EOS and pad are never candidates
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(r["repeat_prob_max"] is not None for r in rows[:10])
    assert all(r["repeat_prob_max"] is None and r["verified"] is None for r in rows[10:])
    json_path, md_path = write_report(result, tmp_path / "out")
    assert json.loads(json_path.read_text()) == result
    md = md_path.read_text()
    assert json_path.name == "undertrained.json" and md_path.name == "undertrained.md"
    assert "| rank | id | token | text | unembedding cos | embedding norm | repeat prob (max) | verified |" in md
    assert md.count("\n| ") == len(rows) + 1  # header + one line per candidate

    tied = tiny_model(tok.vocab_size, tie_embeddings=True)
    result = find_undertrained(tied, tok, percentile=1, verify=False)
    assert "embedding_norm" not in result["candidates"][0] and result["candidates"][0]["verified"] is None
    with pytest.raises(LmforgeError, match="untied"):
        find_undertrained(tied, tok, indicator="embedding_norm")


def write_docs(path, n_docs, seed, words=None):
    """JSONL documents of Zipf-distributed common words, each starting with a space so every
    word is its ' word' token (no rare capitalised or unspaced variants); with `words`, uniform
    over those instead."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(WORDS))]
    with open(path, "w") as f:
        for i in range(n_docs):
            n = rng.randint(60, 200)
            chosen = rng.choices(words, k=n // 3) if words else rng.choices(WORDS, weights, k=n)
            f.write(json.dumps({"id": f"d{i}", "text": " " + " ".join(chosen) + ".", "source": "s"}) + "\n")
    return path


@pytest.mark.slow
def test_never_seen_tokens_are_found_and_verified(tmp_path):
    """The issue's acceptance test: a tiny model trained on a corpus in which a known set of
    vocabulary tokens never appears ranks them at the top (precision@k ≥ 0.9, k = the set's
    size), and verification confirms them. Half the never-seen ids serve as the reference, the
    other half must be found."""
    from lmforge.data.tokenize import tokenize
    from lmforge.data.tokenizer import train_bpe
    from lmforge.train.config import RunConfig
    from lmforge.train.trainer import Trainer

    corpus = write_docs(tmp_path / "train.jsonl", 600, seed=1)
    extra = write_docs(tmp_path / "extra.jsonl", 40, seed=2, words=MADE_UP)  # the tokenizer's eyes only
    tok = train_bpe([corpus, extra], vocab_size=600, show_progress=False)
    tok.save(tmp_path / "tokenizer.json")
    tokenize([corpus], tok, tmp_path / "tokens", workers=1, progress=False)

    counts = token_counts_from_folders([tmp_path / "tokens"])
    specials = special_token_ids(tok)
    never = sorted(i for i in range(tok.vocab_size) if counts[i] == 0 and i not in specials)
    made_up_ids = {i for w in MADE_UP for i in tok.encode(" " + w)}
    assert made_up_ids <= set(never) and len(made_up_ids) >= len(MADE_UP)  # the made-up words are in the vocab
    assert len(never) >= 100

    run = tmp_path / "run"
    cfg = RunConfig.from_dict({
        "model": {"vocab_size": tok.vocab_size, "d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_hidden": 128},
        "data": {"train": [str(tmp_path / "tokens")], "seq_len": 64},
        "optim": {"lr": 5e-3, "warmup_steps": 10},
        "trainer": {"run_dir": str(run), "batch_tokens": 512, "micro_batch_size": 8, "max_steps": 100,
                    "log_every": 50, "eval_every": 1000, "checkpoint_every": 1000, "keep_checkpoints": 1},
        "tokenizer": str(tmp_path / "tokenizer.json"),
    })
    trainer = Trainer(cfg)
    trainer.fit()
    model = trainer.module.model
    np.testing.assert_array_equal(token_counts_from_run(run), counts)

    shuffled = never[:]
    random.Random(0).shuffle(shuffled)
    reference, held_out = sorted(shuffled[: len(never) // 2]), set(shuffled[len(never) // 2 :])
    # A 2-layer model after 100 steps has not learned to copy (no induction head yet): a trained
    # token gets about its unigram probability in the repeat prompts (≥ 1e-3), a never-seen one
    # ~1e-6; 1e-4 separates them (the default, 1%, is for models that do copy).
    result = find_undertrained(model, tok, token_counts=counts, reference_ids=reference, percentile=100,
                               max_verify=tok.vocab_size, threshold=1e-4)
    assert result["method"]["reference_count"] == len(reference)
    ranked = [r for r in result["candidates"] if not r["reference"]]
    k = len(held_out)
    top = ranked[:k]
    precision = sum(r["id"] in held_out for r in top) / k
    assert precision >= 0.9, precision
    by_id = {r["id"]: r for r in result["candidates"]}
    assert all(by_id[i]["verified"] for i in held_out)
    assert all(by_id[i]["count"] == 0 for i in held_out)

    # Frequent tokens are copied with far higher probability and are not verified under-trained.
    frequent = [int(i) for i in np.argsort(-counts)[:20] if int(i) not in specials]
    assert not any(by_id[i]["verified"] for i in frequent)
    probs = repeat_probabilities(model, tok, frequent).max(axis=1)
    assert probs.min() > 1e-3 and max(by_id[i]["repeat_prob_max"] for i in held_out) < 1e-4

    # The same from the checkpoint on disk, counting the run's data itself.
    again = undertrained_from_checkpoint(run / "checkpoints" / "step-100", count_tokens=True,
                                         reference_ids=reference, percentile=100, verify=False)
    assert [r["id"] for r in again["candidates"]] == [r["id"] for r in result["candidates"]]
    assert again["summary"]["never_seen"] == result["summary"]["never_seen"] == len(never) + 1  # + pad

    _, md_path = write_report(result, tmp_path / "report")
    assert any(w in md_path.read_text() for w in MADE_UP)

    # And from the command line: the report names never-seen tokens among the candidates.
    from lmforge.cli import main

    assert main(["analyze", "undertrained", str(run / "checkpoints" / "step-100"), "--count-tokens",
                 "--max-verify", "10", "--threshold", "1e-4", "--out", str(tmp_path / "cli")]) == 0
    cli = json.loads((tmp_path / "cli" / "undertrained.json").read_text())
    verified = [c for c in cli["candidates"] if c["verified"]]
    assert len(verified) >= 8 and all(c["count"] == 0 for c in verified)
