"""The training loop: exact resume after SIGKILL, safe checkpoints, clear errors."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import yaml

from lmforge.analysis.batches import batch_documents
from lmforge.errors import ConfigError, LmforgeError
from lmforge.train.config import RunConfig
from lmforge.train.trainer import Trainer

STEPS = 24
CHECKPOINT_EVERY = 8


MOE = {"moe_num_experts": 4, "moe_top_k": 2, "mlp_hidden": 48}
"""A tiny mixture of experts in place of the MLP (`lmforge.model.moe`)."""


def run_config(token_data, run_dir, model=None, **trainer):
    return {
        "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_hidden": 128, **(model or {})},
        "data": {"train": [str(token_data / "train")], "validation": [str(token_data / "val")], "seq_len": 64},
        "optim": {"lr": 3e-3, "warmup_steps": 4},
        "trainer": {
            "run_dir": str(run_dir),
            "batch_tokens": 512,
            "micro_batch_size": 4,
            "max_steps": STEPS,
            "eval_every": CHECKPOINT_EVERY,
            "checkpoint_every": CHECKPOINT_EVERY,
            "keep_checkpoints": 0,
            **trainer,
        },
        "tokenizer": str(token_data / "tokenizer.json"),
    }


def write_config(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def train_cmd(config_path):
    return [sys.executable, "-m", "lmforge.cli", "train", str(config_path)]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("model", [None, MOE], ids=["dense", "moe"])
def test_resume_after_sigkill_is_bitwise_identical(token_data, tmp_path, model):
    straight = tmp_path / "straight"
    subprocess.run(train_cmd(write_config(tmp_path / "a.yaml", run_config(token_data, straight, model))), check=True,
                   capture_output=True)

    killed = tmp_path / "killed"
    config = write_config(tmp_path / "b.yaml", run_config(token_data, killed, model))
    proc = subprocess.Popen(train_cmd(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 120
    while not (latest.exists() and latest.read_text().strip() == f"step-{CHECKPOINT_EVERY}"):
        assert proc.poll() is None and time.time() < deadline, "training ended before the first checkpoint"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    steps_before_kill = [r["step"] for r in metrics(killed) if "loss" in r]
    assert max(steps_before_kill) < STEPS, "the run finished before it was killed: nothing was tested"

    resumed = subprocess.run(train_cmd(config), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {killed / 'checkpoints' / f'step-{CHECKPOINT_EVERY}'}" in resumed.stderr

    a, b = metrics(straight), metrics(killed)
    assert [r["step"] for r in a] == [r["step"] for r in b]  # no step lost, none logged twice
    for ra, rb in zip(a, b):
        for key in ("loss", "z_loss", "grad_norm", "val_loss", "batch_crc", "moe_lb_loss", "moe_router_z_loss",
                    "expert_share"):
            assert ra.get(key) == rb.get(key), (ra["step"], key)  # bitwise: floats compared exactly
    if model:  # the MoE losses and the experts' shares are in the metrics
        row = next(r for r in b if "loss" in r)
        assert 0.9 < row["moe_lb_loss"] < 4 and len(row["expert_share"]) == 4  # 1 is perfect balance
        assert sum(row["expert_share"]) == pytest.approx(1.0) and row["expert_imbalance"] >= 1.0
    # The batch each step trained on is what inspect-batch reconstructs from the config alone.
    for row in (r for r in b if "batch_crc" in r):
        instances = [x["instance"] for x in batch_documents(killed, row["step"])]
        assert zlib.crc32(np.asarray(instances, dtype=np.int64).tobytes()) == row["batch_crc"]


def test_damaged_latest_checkpoint_is_skipped(token_data, tmp_path, caplog):
    cfg = RunConfig.from_dict(run_config(token_data, tmp_path / "run", max_steps=16))
    Trainer(cfg).fit()
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-16"
    (ckpts / "step-16" / "optim" / ".metadata").unlink()  # a checkpoint missing a file
    (ckpts / ".step-24.partial").mkdir()  # and a half-written one, as a crash leaves it
    trainer = Trainer(cfg)
    with caplog.at_level(logging.WARNING):
        trainer.prepare_run_dir()
    assert trainer.step == 8
    assert "step-16 is incomplete (optim/.metadata is missing); falling back" in caplog.text
    assert max(r["step"] for r in metrics(tmp_path / "run")) == 8  # later rows will be redone


def test_inspect_batch_names_documents(token_data, tmp_path):
    cfg = RunConfig.from_dict(run_config(token_data, tmp_path / "run", max_steps=2))
    Trainer(cfg).fit()
    rows = batch_documents(tmp_path / "run", 2)
    assert len(rows) == cfg.batch_instances
    docs = rows[0]["documents"]
    assert docs and all(d["id"].startswith("d") and d["source"].startswith("src") for d in docs)
    assert docs[0]["first_words"]  # decoded with the run's tokenizer
    # The documents tile the instance: their covered parts add up to its tokens, in order.
    for row in rows:
        spans = [(max(d["start"], row["start"]), min(d["end"] + 1, row["end"])) for d in row["documents"]]
        assert spans[0][0] == row["start"] and spans[-1][1] == row["end"]
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert all(d["covered"] for d in row["documents"])
    from lmforge.analysis.batches import format_instance

    text = format_instance(rows[0])
    assert all(f"── {d['id']} ({d['source']}" in text for d in rows[0]["documents"])
    assert rows[0]["documents"][-1]["covered"].splitlines()[-1] in text
    with pytest.raises(LmforgeError, match="not a run directory"):
        batch_documents(tmp_path / "nowhere", 1)


def test_unknown_field_suggests_the_closest(token_data, tmp_path):
    data = run_config(token_data, tmp_path / "run")
    data["trainer"]["max_step"] = data["trainer"].pop("max_steps")
    with pytest.raises(ConfigError, match=r"^trainer.max_step: unknown field of TrainerConfig; did you mean 'max_steps'"):
        RunConfig.from_dict(data)


def test_data_from_another_tokenizer_is_refused(token_data, tmp_path):
    from lmforge.data.tokenizer import train_bpe

    other = train_bpe([token_data / "val.jsonl"], vocab_size=400, show_progress=False)
    other.save(tmp_path / "other.json")
    data = run_config(token_data, tmp_path / "run")
    data["tokenizer"] = str(tmp_path / "other.json")
    with pytest.raises(LmforgeError, match=r"tokenized with another tokenizer"):
        Trainer(RunConfig.from_dict(data))
    data = run_config(token_data, tmp_path / "run")
    data["model"]["vocab_size"] = 256
    with pytest.raises(LmforgeError, match=r"512-id tokenizer but model.vocab_size is 256"):
        Trainer(RunConfig.from_dict(data))


def test_changed_config_in_existing_run_dir_is_refused(token_data, tmp_path):
    Trainer(RunConfig.from_dict(run_config(token_data, tmp_path / "run", max_steps=1))).fit()
    changed = run_config(token_data, tmp_path / "run", max_steps=1)
    changed["optim"]["lr"] = 1e-3
    with pytest.raises(LmforgeError, match=r"different config \(optim.lr\)"):
        Trainer(RunConfig.from_dict(changed)).fit()


def test_cli_train_with_overrides_inspect_and_plot(token_data, tmp_path, capsys):
    from lmforge.cli import main

    config = write_config(tmp_path / "c.yaml", run_config(token_data, tmp_path / "run"))
    assert main(["train", str(config), "--trainer.max_steps=3", "--trainer.checkpoint_every=2",
                 "--trainer.keep_checkpoints=1"]) == 0
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith("step")] == ["step-3"]
    assert RunConfig.from_yaml(tmp_path / "run" / "config.yaml").trainer.max_steps == 3
    capsys.readouterr()
    assert main(["inspect-batch", str(tmp_path / "run"), "--step", "3"]) == 0
    assert "instance" in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "loss.png").stat().st_size > 10_000
    assert main(["train", str(config), "--trainer.max_stepz=3"]) == 2
    assert "did you mean 'max_steps'" in capsys.readouterr().err


def losses(run_dir):
    return [(r["step"], r["loss"], r["grad_norm"]) for r in metrics(run_dir) if "loss" in r]


def test_activation_checkpointing_gives_the_same_steps(token_data, tmp_path):
    for ac in ("none", "full", "every_k"):
        data = run_config(token_data, tmp_path / ac, max_steps=3)
        data["parallel"] = {"activation_checkpointing": ac}
        Trainer(RunConfig.from_dict(data)).fit()
    assert losses(tmp_path / "none") == losses(tmp_path / "full") == losses(tmp_path / "every_k")  # bitwise


@pytest.mark.slow
def test_per_block_compile_with_activation_checkpointing(token_data, tmp_path):
    """The one compile test (~30 s on CPU): blocks compile with fullgraph=True, AC inside."""
    data = run_config(token_data, tmp_path / "eager", max_steps=3)
    Trainer(RunConfig.from_dict(data)).fit()
    data = run_config(token_data, tmp_path / "compiled", max_steps=3)
    data["parallel"] = {"compile": True, "activation_checkpointing": "full"}
    Trainer(RunConfig.from_dict(data)).fit()
    for (step, *eager), (_, *compiled) in zip(losses(tmp_path / "eager"), losses(tmp_path / "compiled")):
        assert compiled == pytest.approx(eager, rel=1e-5), step


def test_malicious_checkpoint_is_refused_and_not_run(token_data, tmp_path):
    """A shared checkpoint whose DCP metadata is a crafted pickle: resuming from it refuses it
    in one line, and the payload never runs."""
    cfg = RunConfig.from_dict(run_config(token_data, tmp_path / "run", max_steps=8))
    Trainer(cfg).fit()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    (tmp_path / "run" / "checkpoints" / "step-8" / "optim" / ".metadata").write_bytes(pickle.dumps(Payload()))
    manifest = tmp_path / "run" / "checkpoints" / "step-8" / "manifest.json"  # as a forger would update it
    data = json.loads(manifest.read_text())
    data["files"]["optim/.metadata"] = (tmp_path / "run" / "checkpoints" / "step-8" / "optim" / ".metadata").stat().st_size
    manifest.write_text(json.dumps(data))
    with pytest.raises(LmforgeError, match=r"optim/\.metadata: refers to posix\.system, which a checkpoint never "
                                           r"contains; refusing to load it"):
        Trainer(cfg).prepare_run_dir()
    assert not marker.exists()


def test_callbacks_need_distinct_names(token_data, tmp_path):
    from lmforge.train.callbacks import Validator

    cfg = RunConfig.from_dict(run_config(token_data, tmp_path / "run", max_steps=1))
    with pytest.raises(LmforgeError, match=r"two callbacks are named 'validator'"):
        Trainer(cfg, callbacks=[Validator(), Validator()])
    second = Validator()
    second.name = "validator_b"
    trainer = Trainer(cfg, callbacks=[Validator(), second])
    trainer.fit()
    trainer.save_checkpoint()
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-1" / "trainer.json").read_text())
    assert set(state["callbacks"]) == {"validator", "validator_b"}


def test_background_checkpoints_match_blocking_ones(token_data, tmp_path):
    """trainer.async_checkpoint: the same steps, and checkpoints with the same contents."""
    import torch

    from lmforge.model.io import load_model

    for mode in ("blocking", "background"):
        cfg = RunConfig.from_dict(run_config(token_data, tmp_path / mode, max_steps=12,
                                             async_checkpoint=mode == "background"))
        Trainer(cfg).fit()
    keys = ("step", "loss", "z_loss", "grad_norm", "val_loss", "batch_crc")
    trained = {mode: [[row.get(k) for k in keys] for row in metrics(tmp_path / mode)] for mode in ("blocking", "background")}
    assert trained["blocking"] == trained["background"]
    for step in (8, 12):  # 8 was sealed when 12 began, 12 when training ended
        a = load_model(tmp_path / "blocking" / "checkpoints" / f"step-{step}")
        b = load_model(tmp_path / "background" / "checkpoints" / f"step-{step}")
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), (step, name)
    assert (tmp_path / "background" / "checkpoints" / "latest").read_text().strip() == "step-12"
    assert not list((tmp_path / "background" / "checkpoints").glob(".*partial"))
