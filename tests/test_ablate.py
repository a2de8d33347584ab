"""Data ablations (`lmforge.experiments.ablate`): a tiny real ablation (English-like text against
random letters, 2 seeds each), the seed statistics on hand-made rows, resuming after a lost run
or a kill, and bad input naming the field."""

import json
import logging
import random
import shutil

import pytest
import yaml
from conftest import single_thread

from lmforge.errors import ConfigError, LmforgeError
from lmforge.experiments import ablate
from lmforge.experiments.ablate import load_ablation, plan_runs, run_ablation, warn_repeats
from lmforge.experiments.ablate_report import compare, format_markdown, stats, summarize_rows, verdict
from lmforge.experiments.runner import read_results
from lmforge.train.config import RunConfig

TOKENS = 2048  # 8 steps of 256 tokens


@pytest.fixture(scope="module")
def data(tmp_path_factory, token_data):
    """Two data sets that really differ, both with token_data's tokenizer: English-like text
    (a curate output folder, so its tokens/ folder is used) and random letters (small: the
    budget repeats it); token_data's validation text is the held-out set."""
    from lmforge.data.tokenize import tokenize

    root = tmp_path_factory.mktemp("ablate_data")
    curated = root / "curated"
    (curated / "documents").mkdir(parents=True)
    shutil.copytree(token_data / "train", curated / "tokens")
    rng = random.Random(0)
    with open(root / "random.jsonl", "w") as f:
        for i in range(12):
            text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz  ") for _ in range(120))
            f.write(json.dumps({"id": f"r{i}", "text": text, "source": "random"}) + "\n")
    tokenize([root / "random.jsonl"], token_data / "tokenizer.json", root / "random", workers=1, progress=False)
    return {"text": curated, "random": root / "random", "heldout": token_data / "val",
            "tokenizer": token_data / "tokenizer.json", "validation": token_data / "val"}  # fmt: skip


def write_ablation(root, data, **changes):
    base = {
        "model": {"vocab_size": 512, "d_model": 32, "n_layers": 1, "n_heads": 2, "mlp_hidden": 64, "max_seq_len": 32},
        "data": {"train": ["not/used"], "validation": [str(data["validation"])], "seq_len": 32},
        "optim": {"lr": 1e-2, "warmup_steps": 1, "schedule": "cosine"},
        "trainer": {"run_dir": "not/used", "batch_tokens": 256, "micro_batch_size": 8, "max_steps": 3,
                    "eval_every": 1000, "eval_batches": 2, "checkpoint_every": 1000, "log_every": 1000},
        "tokenizer": str(data["tokenizer"]),
    }  # fmt: skip
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    cfg = {
        "base": str(root / "base.yaml"), "out": str(root / "ablation"), "tokens": TOKENS, "seeds": [0, 1],
        "datasets": {"text": str(data["text"]), "random": str(data["random"])},
        "eval": {"heldout": str(data["heldout"])}, "eval_max_tokens": 2048, "tasks": ["arc_easy"], "limit": 3,
        **changes,
    }  # fmt: skip
    path = root / "ablation.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))  # the data sets in this order
    return path


@pytest.fixture(scope="module")
def ablated(tmp_path_factory, data):
    """One real tiny ablation, trained once: 2 data sets × 2 seeds of 8 steps each."""
    with single_thread():
        path = write_ablation(tmp_path_factory.mktemp("ablation"), data)
        cfg = load_ablation(path)
        summary = run_ablation(cfg, progress=False)
    return path, cfg, summary


def test_real_text_beats_random_letters_on_held_out_text(ablated, data):
    _, cfg, summary = ablated
    out = cfg.out
    rows = read_results(out)
    assert sorted(r["name"] for r in rows) == ["random-s0", "random-s1", "text-s0", "text-s1"]
    for r in rows:
        assert r["tokens"] == TOKENS and r["steps"] == 8 and r["val_loss"] > 0 and r["train_loss"] > 0
        e = r["eval"]["heldout"]
        assert e["loss"] > 0 and e["bpb"] > 0 and e["tokens"] == 2048
        assert 0 <= r["tasks"]["arc_easy:rc_0shot"]["acc"] <= 1
        run_cfg = RunConfig.from_yaml(out / "runs" / f"{r['name']}.yaml")
        assert run_cfg.trainer.seed == r["seed"] and run_cfg.trainer.max_tokens == TOKENS
        assert run_cfg.trainer.run_dir == out / "runs" / r["name"]
    # The curate output folder trains on its tokens/ folder.
    text = next(r for r in plan_runs(cfg) if r.dataset == "text")
    assert text.config.data.train == [data["text"] / "tokens"]

    stored = json.loads((out / "ablation.json").read_text())
    assert stored == summary and stored["datasets"] == ["text", "random"] and stored["missing"] == []
    assert list(stored["metrics"]) == ["val_loss", "heldout/loss", "heldout/bpb", "arc_easy:rc_0shot/acc",
                                     "arc_easy:rc_0shot/bpb"]
    assert stored["metrics"]["arc_easy:rc_0shot/acc"]["higher_is_better"] is True
    loss = {d: stored["results"][d]["heldout/loss"] for d in ("text", "random")}
    assert loss["text"]["n"] == 2 and sorted(loss["text"]["seeds"]) == [0, 1]
    assert loss["text"]["max"] < loss["random"]["min"]  # every text seed beats every random seed
    pair = next(p for p in stored["pairs"] if p["metric"] == "heldout/loss")
    assert (pair["a"], pair["b"], pair["better"], pair["separated"]) == ("text", "random", "text", True)
    assert pair["difference"] == pytest.approx(loss["text"]["mean"] - loss["random"]["mean"])
    assert pair["welch_t"] < 0
    md = (out / "ablation.md").read_text()
    assert f"text beats random on heldout loss by {abs(pair['difference']):.3g} (seed ranges do not overlap)" in md
    assert "| text | 2 |" in md and "random" in md and "epochs" in md
    assert (out / "ablation.png").stat().st_size > 10_000


def test_resume_trains_only_the_lost_run(ablated, monkeypatch, capsys, one_thread):
    path, cfg, summary = ablated
    out = cfg.out
    before = (out / "ablation.json").read_text()
    rows = read_results(out)
    lost = rows[1]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r is not lost))
    shutil.rmtree(out / "runs" / lost["name"])
    trained = []
    real_train = ablate.train

    def counting(run_cfg):
        trained.append(run_cfg.trainer.run_dir.name)
        return real_train(run_cfg)

    monkeypatch.setattr(ablate, "train", counting)
    again = run_ablation(load_ablation(path))
    assert trained == [lost["name"]]
    # Retrained from scratch, it gives the same numbers: the same ablation.json.
    assert (out / "ablation.json").read_text() == before and again == summary
    err = capsys.readouterr().err
    assert f"[1/1] {lost['name']}" in err and "ETA" in err and "heldout loss" in err

    trained.clear()
    assert run_ablation(load_ablation(path), progress=False) == summary and trained == []
    assert run_ablation(cfg, report_only=True) == summary and trained == []
    # A changed recipe is refused for the finished runs.
    with pytest.raises(LmforgeError, match=r"run text-s0 was trained with another config than the ablation gives"):
        run_ablation(load_ablation(path, ["overrides=[optim.lr=0.02]"]), report_only=True)


def fake_row(cfg, run, calls, fail_at=None):
    """Stands in for `train_one`: a row with losses fixed by the data set and seed."""
    calls.append(run.name)
    if len(calls) == fail_at:
        raise KeyboardInterrupt
    loss = {"text": 3.0, "random": 4.0}[run.dataset] + 0.05 * run.seed
    return {"name": run.name, "dataset": run.dataset, "seed": run.seed, "tokens": run.budget, "steps": 8,
            "epochs": run.epochs, "train_loss": loss, "val_loss": loss, "eval": {"heldout": {"loss": loss, "bpb": loss / 3}},
            "tasks": {}, "config_sha256": run.config_sha256}  # fmt: skip


def test_killed_ablation_continues(tmp_path, data, monkeypatch):
    """A kill on the 3rd run of 2 data sets × 2 seeds; the rerun trains the last two, once each,
    and the report equals an uninterrupted ablation's."""
    calls = []
    cfg = load_ablation(write_ablation(tmp_path, data, tasks=[]))
    monkeypatch.setattr(ablate, "train_one", lambda c, r: fake_row(c, r, calls, fail_at=3))
    with pytest.raises(KeyboardInterrupt):
        run_ablation(cfg, progress=False)
    assert calls == ["text-s0", "random-s0", "text-s1"] and len(read_results(cfg.out)) == 2
    calls.clear()
    monkeypatch.setattr(ablate, "train_one", lambda c, r: fake_row(c, r, calls))
    resumed = run_ablation(cfg, progress=False)
    assert calls == ["text-s1", "random-s1"]
    whole = run_ablation(cfg.replace(out=tmp_path / "whole"), progress=False)
    assert {**resumed, "out": None} == {**whole, "out": None}
    assert resumed["results"]["text"]["heldout/loss"]["std"] == pytest.approx(0.05 / 2**0.5)


def test_seed_statistics_on_handmade_rows():
    def row(dataset, seed, loss, acc=None):
        return {"dataset": dataset, "seed": seed, "val_loss": None, "eval": {"docs": {"loss": loss, "bpb": None}},
                "tasks": {} if acc is None else {"arc": {"acc": acc, "bpb": None}}}  # fmt: skip

    rows = [row("a", 0, 1.0, 0.50), row("a", 1, 1.1, 0.52), row("a", 2, 1.2, 0.54),
            row("b", 0, 1.3, 0.40), row("b", 1, 1.4, 0.53), row("b", 2, 1.5, 0.44),
            row("c", 0, 1.25), row("c", 1, 1.15), row("c", 2, 1.35), row("d", 0, 0.5)]  # fmt: skip
    s = summarize_rows(rows, ["a", "b", "c", "d"])
    assert list(s["metrics"]) == ["docs/loss", "arc/acc"]
    a = s["results"]["a"]["docs/loss"]
    assert a["mean"] == pytest.approx(1.1) and a["std"] == pytest.approx(0.1)
    assert (a["min"], a["max"], a["n"], a["seeds"]) == (1.0, 1.2, 3, [0, 1, 2])
    pairs = {(p["a"], p["b"], p["metric"]): p for p in s["pairs"]}
    # a's seeds (1.0-1.2) are all below b's (1.3-1.5): a beats b, separated; Welch t = -0.3 / sqrt(2·0.01/3).
    ab = pairs["a", "b", "docs/loss"]
    assert ab["better"] == "a" and ab["separated"] and ab["difference"] == pytest.approx(-0.3)
    assert ab["welch_t"] == pytest.approx(-0.3 / (0.02 / 3) ** 0.5) and ab["welch_df"] == pytest.approx(4.0)
    assert verdict(ab) == "a beats b on docs loss by 0.3 (seed ranges do not overlap)"
    # c (1.15-1.35) overlaps both: ahead of b on the mean, but within the spread.
    bc = pairs["b", "c", "docs/loss"]
    assert bc["better"] == "c" and not bc["separated"] and bc["difference"] == pytest.approx(0.15)
    assert verdict(bc) == "c is ahead of b on docs loss by 0.15, within the seed spread (seed ranges overlap)"
    ac = pairs["a", "c", "docs/loss"]
    assert ac["better"] == "a" and not ac["separated"]
    # Accuracy: higher is better; b's 0.53 is above a's 0.50, so the ranges overlap.
    acc = pairs["a", "b", "arc/acc"]
    assert acc["better"] == "a" and not acc["separated"] and acc["difference"] == pytest.approx(0.52 - 0.4567, abs=1e-3)
    assert ("a", "c", "arc/acc") not in pairs  # c has no task numbers
    # One seed: no spread to exceed, never separated, no t.
    ad = pairs["a", "d", "docs/loss"]
    assert ad["better"] == "d" and not ad["separated"] and not ad["judged"] and ad["welch_t"] is None
    assert s["results"]["d"]["docs/loss"]["std"] is None
    assert "no spread to judge by" in verdict(ad)
    # Seeds with no spread at all but different means: ranges apart, separated; t undefined.
    flat = compare(stats([2.0, 2.0], [0, 1]), stats([2.5, 2.5], [0, 1]), "x/bpb")
    assert flat["separated"] and flat["better"] == "a" and flat["welch_t"] is None
    md = format_markdown({"out": "o", "tokens": 10, "seeds": [0, 1, 2], **s, "missing": ["e-s0"]})
    # The best mean of each column in bold; d's one seed has the lowest loss (and no ± part).
    assert "| a | 3 | 1.1000 ± 0.1000 | **0.5200 ± 0.0200** |" in md and "| d | 1 | **0.5000** | - |" in md
    assert "- a beats b on docs loss by 0.3 (seed ranges do not overlap)" in md and "e-s0" in md


def test_bad_config_names_the_field(tmp_path, data, caplog):
    def problem(**changes):
        with pytest.raises(ConfigError) as e:
            plan_runs(load_ablation(write_ablation(tmp_path, data, **changes)))
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "ablation.datasets: give at least one data set" in problem(datasets={})
    assert "ablation.seeds[2]: seed 0 is listed twice" in problem(seeds=[0, 1, 0])
    assert "ablation.tokens: must be a positive token budget, got 0" in problem(tokens=0)
    assert "ablation.tokens" in problem(tokens=-5)
    assert "ablation.datasets.bad name: a name may hold" in problem(datasets={"bad name": str(data["random"])})
    missing = problem(datasets={"text": str(data["text"]), "gone": str(tmp_path / "nope")})
    assert missing.startswith("ablation.datasets.gone: ") and "no such folder" in missing
    assert "ablation.eval.heldout: " in problem(eval={"heldout": str(tmp_path / "nope")})
    assert "ablation.base: " in problem(base=str(tmp_path / "nope.yaml"))
    assert "ablation.tasks: unknown task 'arc_eazy'" in problem(tasks=["arc_eazy"])
    assert "ablation.eval_seq_len: 64 is longer than the model's context" in problem(eval_seq_len=64)
    # A data set made with another tokenizer (its metadata says so).
    other = tmp_path / "other"
    shutil.copytree(data["random"], other)
    meta = json.loads((other / "meta.json").read_text())
    meta["tokenizer"]["fingerprint"] = "0123456789abcdef"
    (other / "meta.json").write_text(json.dumps(meta))
    text = problem(datasets={"text": str(data["text"]), "other": str(other)})
    assert text.startswith("ablation.datasets.other: ") and "another tokenizer" in text and "0123456789abcdef" in text

    # The small random set is repeated: one warning with its number of epochs.
    runs = plan_runs(load_ablation(write_ablation(tmp_path, data)))
    random_run = next(r for r in runs if r.dataset == "random")
    assert random_run.epochs > 1 and next(r for r in runs if r.dataset == "text").epochs < 1
    with caplog.at_level(logging.WARNING, logger="lmforge.experiments.ablate"):
        warn_repeats(runs)
    (record,) = caplog.records
    assert "ablation.datasets.random" in record.message and f"{random_run.epochs:.2f} epochs" in record.message
