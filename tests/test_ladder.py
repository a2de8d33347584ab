"""The model ladder (`lmforge.experiments.ladder`): planning by the size rule, an end-to-end tiny
ladder (train, fit, predict), resuming, and bad input."""

import json
import math
import shutil

import pytest
import yaml
from conftest import single_thread

from lmforge.cli import main
from lmforge.errors import ConfigError
from lmforge.experiments import ladder
from lmforge.experiments.ladder import append_result, load_ladder, plan_runs, predict, read_results, run_ladder
from lmforge.model.size import model_size
from lmforge.train.config import RunConfig

# 3 sizes × 2 budgets fitted, one held-out size; tiny token multiples keep every run to a few steps.
LADDER = dict(sizes=[16, 32, 48], head_dim=8, aspect=16, mlp_ratio=2.0, token_multiples=[0.01, 0.02],
              holdout=[64], holdout_multiples=[0.01], n_boot=40, warmup_fraction=0.1)  # fmt: skip


def write_ladder(root, token_data, **changes):
    base = {
        "model": {"vocab_size": 512, "d_model": 64, "n_layers": 1, "n_heads": 1, "mlp_hidden": 64, "max_seq_len": 64},
        "data": {"train": [str(token_data / "train")], "validation": [str(token_data / "val")], "seq_len": 64},
        "optim": {"lr": 3e-3, "warmup_steps": 999, "schedule": "cosine"},
        "trainer": {"batch_tokens": 512, "micro_batch_size": 8, "max_steps": 1, "eval_every": 1000,
                    "eval_batches": 2, "checkpoint_every": 1000, "log_every": 1000},
        "tokenizer": str(token_data / "tokenizer.json"),
    }  # fmt: skip
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    cfg = {"base": str(root / "base.yaml"), "out": str(root / "ladder"), **LADDER, **changes}
    path = root / "ladder.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, token_data):
    """One real tiny ladder, trained once for the tests below (7 runs of a few steps each)."""
    with single_thread():
        path = write_ladder(tmp_path_factory.mktemp("ladder"), token_data)
        cfg = load_ladder(path)
        fit = run_ladder(cfg, progress=False)
    return path, cfg, fit


def test_plan_follows_the_size_rule_and_budgets(tmp_path, token_data):
    cfg = load_ladder(write_ladder(tmp_path, token_data))
    runs = plan_runs(cfg)
    assert [r.name for r in runs][:2] == ["d16-x0.01-s0", "d16-x0.02-s0"]
    assert len(runs) == 3 * 2 + 1 and runs[-1].holdout and runs[-1].name == "d64-x0.01-s0"
    run = next(r for r in runs if r.name == "d48-x0.02-s0")
    m = run.config.model
    assert (m.d_model, m.n_layers, m.n_heads, m.mlp_hidden, m.vocab_size) == (48, 3, 6, 96, 512)
    assert run.params == model_size(m).non_embedding
    assert run.config.trainer.max_tokens == round(0.02 * 20 * run.params) and run.config.trainer.max_steps is None
    steps = run.config.max_steps
    assert steps == math.ceil(run.config.trainer.max_tokens / 512)
    assert run.config.optim.warmup_steps == math.ceil(0.1 * steps)
    assert run.config.trainer.run_dir == cfg.out / "runs" / "d48-x0.02-s0"
    # mlp_hidden rounds to a multiple of mlp_multiple: 1.3 · 48 = 62.4 → 64.
    assert cfg.replace(mlp_ratio=1.3).mlp_hidden(48) == 64
    # A mixture-of-experts base: the size rule sets each expert's width, budgets follow the
    # active parameters (2 of 4 experts), which are what a token's compute scales with.
    moe = plan_runs(cfg.replace(overrides=["model.moe_num_experts=4", "model.moe_top_k=2"]))
    run = next(r for r in moe if r.name == "d48-x0.02-s0")
    size = model_size(run.config.model)
    assert run.config.model.expert_hidden == 96 and run.params == size.active_non_embedding < size.non_embedding
    assert run.config.trainer.max_tokens == round(0.02 * 20 * run.params)


def test_end_to_end_fit_and_predict(trained, capsys):
    path, cfg, fit = trained
    out = cfg.out
    rows = read_results(out)
    assert len(rows) == 7 and len({r["name"] for r in rows}) == 7
    for r in rows:
        assert r["params"] > 0 and r["tokens"] > 0 and r["val_loss"] > 0 and r["wall_s"] > 0
        assert r["tokens"] % 512 == 0 and r["tokens"] >= round(r["multiple"] * 20 * r["params"])
        metrics = [json.loads(x) for x in (out / "runs" / r["name"] / "metrics.jsonl").read_text().splitlines()]
        assert r["val_loss"] == metrics[-1]["val_loss"] and r["tokens"] == metrics[-1]["tokens"]
        assert (out / "runs" / f"{r['name']}.yaml").exists()
    assert sum(r["holdout"] for r in rows) == 1
    stored = json.loads((out / "fit.json").read_text())
    assert stored["law"] == fit["law"] and len(stored["points"]) == 6 and stored["bootstrap"]["fits"] > 0
    (held,) = stored["holdout"]
    assert held["name"] == "d64-x0.01" and held["relative_error"] >= 0 and isinstance(held["inside"], bool)
    assert (out / "ladder.png").stat().st_size > 10_000 and "d64-x0.01" in (out / "ladder.md").read_text()

    pred = predict(cfg, 1e6, 2e7)["loss"]
    assert pred["low"] <= pred["value"] <= pred["high"] and pred["low"] < pred["high"]
    assert predict(out, 1e6, 2e7)["loss"] == pred  # from the out folder as well as the config
    # The stored law predicts a fitted point close to its measured loss.
    point = stored["points"][0]
    near = predict(cfg, point["params"], point["tokens"])["loss"]["value"]
    assert abs(near - point["loss"]) / point["loss"] < 0.05

    assert main(["ladder", "predict", str(path), "--params", "1e6", "--tokens", "2e7"]) == 0
    printed = capsys.readouterr().out
    assert f"loss {pred['value']:.4f}" in printed and "90% interval" in printed


def test_resume_trains_only_what_is_missing(trained, monkeypatch, capsys, one_thread):
    path, cfg, _ = trained
    out = cfg.out
    rows = read_results(out)
    last, other = rows[-1], rows[1]
    # The last run lost its row only (its run dir is complete); another lost row and run dir.
    keep = [r for r in rows if r["name"] not in (last["name"], other["name"])]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    shutil.rmtree(out / "runs" / other["name"])

    trained_names = []
    real_train = ladder.train

    def counting(run_cfg):
        trained_names.append(run_cfg.trainer.run_dir.name)
        return real_train(run_cfg)

    monkeypatch.setattr(ladder, "train", counting)
    assert main(["ladder", str(path), "--set", "n_boot=20"]) == 0
    assert sorted(trained_names) == sorted([last["name"], other["name"]])
    again = read_results(out)
    assert len(again) == 7 and len({r["name"] for r in again}) == 7
    # The run with a complete run dir resumed at its end: the same loss, not a retrained one.
    assert next(r for r in again if r["name"] == last["name"])["val_loss"] == last["val_loss"]
    err = capsys.readouterr().err
    assert "[1/2]" in err and "[2/2]" in err and "val_loss" in err and "ETA" in err

    # Nothing left to train: a third run trains nothing; a row appended twice is refused.
    trained_names.clear()
    run_ladder(load_ladder(path, ["n_boot=20"]), progress=False)
    assert trained_names == []
    assert append_result(out, again[0]) is False and len(read_results(out)) == 7


def law_loss(run_cfg, scatter: float) -> tuple[int, float]:
    """(tokens, loss) of a run by a known law, times a deterministic ±0.4% scatter."""
    n = model_size(run_cfg.model).non_embedding
    tokens = run_cfg.max_steps * run_cfg.trainer.batch_tokens
    return tokens, (1.5 + 400 / n**0.5 + 300 / tokens**0.4) * (1 + 0.004 * math.sin(scatter))


def fake_train(run_cfg, calls, fail_at=None):
    """Stands in for `train`: the last metrics row a real run writes, with the law's loss."""
    calls.append(run_cfg.trainer.run_dir.name)
    if len(calls) == fail_at:
        raise KeyboardInterrupt
    tokens, loss = law_loss(run_cfg, 2.3 * len(calls))
    run_cfg.trainer.run_dir.mkdir(parents=True, exist_ok=True)
    row = {"step": run_cfg.max_steps, "tokens": tokens, "val_loss": loss}
    (run_cfg.trainer.run_dir / "metrics.jsonl").write_text(json.dumps(row) + "\n")


def test_interrupted_ladder_continues(tmp_path, token_data, monkeypatch):
    """A fake trainer that dies on its 3rd run; the rerun trains the rest, once each."""
    calls = []
    path = write_ladder(tmp_path, token_data, sizes=[16, 32, 48, 64, 80], token_multiples=[0.5, 1.0], holdout=[160])
    cfg = load_ladder(path)
    monkeypatch.setattr(ladder, "train", lambda c: fake_train(c, calls, fail_at=3))
    with pytest.raises(KeyboardInterrupt):
        run_ladder(cfg, progress=False)
    assert len(read_results(cfg.out)) == 2
    first = list(calls)
    calls.clear()
    monkeypatch.setattr(ladder, "train", lambda c: fake_train(c, calls))
    fit = run_ladder(cfg, progress=False)
    assert calls == [r.name for r in plan_runs(cfg)][2:] and first[2] == calls[0]
    rows = read_results(cfg.out)
    assert len(rows) == 11 and len({r["name"] for r in rows}) == 11
    # On losses that follow a law (±0.4%), the fit recovers it and predicts the held-out size.
    (held,) = fit["holdout"]
    assert held["relative_error"] < 0.02 and isinstance(held["inside"], bool)

    # --fit-only trains nothing, even with runs missing; they are reported.
    calls.clear()
    fit = run_ladder(cfg.replace(sizes=[16, 32, 48, 64, 80, 96]), fit_only=True, progress=False)
    assert calls == [] and fit["missing"] == ["d96-x0.5-s0", "d96-x1.0-s0"]


def test_size_off_the_rule_names_the_field(tmp_path, token_data, capsys):
    path = write_ladder(tmp_path, token_data, sizes=[16, 32, 40], aspect=8, head_dim=16)
    with pytest.raises(ConfigError, match=r"ladder\.sizes\[2\]: d_model=40 is not a multiple of head_dim=16") as e:
        load_ladder(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    with pytest.raises(ConfigError, match=r"sizes\[0\].*n_layers"):
        load_ladder(write_ladder(tmp_path, token_data, sizes=[8, 16, 32]))
    with pytest.raises(ConfigError, match=r"holdout\[0\].*also in sizes"):
        load_ladder(write_ladder(tmp_path, token_data, holdout=[32]))
    with pytest.raises(ConfigError, match=r"ladder\.head_dim: must be a positive even"):
        load_ladder(write_ladder(tmp_path, token_data, head_dim=7))

    bad = write_ladder(tmp_path, token_data, sizes=[16, 32, 40], aspect=8, head_dim=16)
    assert main(["ladder", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sizes[2]" in err and "Traceback" not in err
    assert main(["ladder", str(bad), "--set", "sizes=[16,32,48]", "--set", "base=nope.yaml"]) == 2
    assert "ladder.base: nope.yaml not found" in capsys.readouterr().err
    assert main(["ladder", "predict", str(bad), "--set", "sizes=[16,32,48]", "--params", "1e6"]) == 2
    assert "--tokens" in capsys.readouterr().err


def test_run_configs_written_resolve(trained):
    _, cfg, _ = trained
    for run in plan_runs(cfg):
        assert RunConfig.from_yaml(cfg.out / "runs" / f"{run.name}.yaml") == run.config


def test_task_laws_fitted_and_predicted(tmp_path, token_data, monkeypatch):
    """Two-step task fit on synthetic task numbers: bpb follows a law in (N, D), accuracy a sigmoid of it."""
    calls = []
    monkeypatch.setattr(ladder, "train", lambda c: fake_train(c, calls))

    def fake_tasks(cfg, run):
        _, loss = law_loss(run.config, run.params)
        bpb = loss / 2
        return {"arc_easy:rc_0shot": {"bpb": bpb, "acc": 0.25 + 0.5 / (1 + math.exp(8 * (bpb - 2.0))), "metric": "acc"}}

    monkeypatch.setattr(ladder, "score_tasks", fake_tasks)
    path = write_ladder(tmp_path, token_data, sizes=[16, 32, 48, 64, 80], token_multiples=[0.5, 1.0], holdout=[160],
                        tasks=["arc_easy"])  # fmt: skip
    fit = run_ladder(load_ladder(path), progress=False)
    task = fit["tasks"]["arc_easy:rc_0shot"]
    assert "error" not in task and task["points"] == 10 and task["loss_boots"] and task["task_boots"]
    (held,) = task["holdout"]
    assert held["bpb"]["relative_error"] < 0.02 and held["acc"]["absolute_error"] < 0.05
    pred = predict(path, 2e6, 4e7)
    acc = pred["tasks"]["arc_easy:rc_0shot"]["acc"]
    assert acc["low"] <= acc["value"] <= acc["high"] and 0.2 < acc["value"] < 0.8
    assert "## Task arc_easy:rc_0shot" in (tmp_path / "ladder" / "ladder.md").read_text()
