"""Data-parallel training on CPU (gloo), with torchrun starting the processes as a user would:
FSDP2 and HSDP reproduce one process's loss curve; checkpoints written by N ranks resume on M;
a rank killed mid-run costs nothing but the steps since the last complete checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmforge.errors import ConfigError, LmforgeError
from lmforge.parallel.config import ParallelConfig
from lmforge.parallel.mesh import mesh_shape
from lmforge.train.config import RunConfig
from lmforge.train.trainer import Trainer

STEPS = 16
WORKER = Path(__file__).parent / "dist_worker.py"
pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def config(token_data, run_dir, **trainer):
    return {
        "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_hidden": 128},
        "data": {"train": [str(token_data / "train")], "validation": [str(token_data / "val")], "seq_len": 64},
        "optim": {"lr": 3e-3, "warmup_steps": 4},
        "trainer": {
            "run_dir": str(run_dir), "batch_tokens": 512, "micro_batch_size": 2, "max_steps": STEPS,
            "eval_every": 4, "eval_batches": 3, "checkpoint_every": 4, "keep_checkpoints": 0, **trainer,
        },
        "parallel": {"loss_chunk_tokens": 48},  # chunks that do not divide a micro-batch's 128 tokens
    }


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def torchrun(nproc, *args, check=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def lmforge_train(nproc, config_path, *overrides):
    if nproc == 1:
        cmd = [sys.executable, "-m", "lmforge", "train", str(config_path), *overrides]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc
    return torchrun(nproc, "-m", "lmforge", "train", str(config_path), *overrides)


def rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def assert_same_curve(reference, other, rel=1e-5):
    assert [r["step"] for r in reference] == [r["step"] for r in other]  # no step lost, none twice
    for a, b in zip(reference, other):
        assert a.get("batch_crc") == b.get("batch_crc"), a["step"]  # the same instances, any world size
        for key in ("loss", "z_loss", "grad_norm", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=rel), (a["step"], key, a[key], b[key])


@pytest.fixture(scope="module")
def reference(token_data, tmp_path_factory):
    """One process, no process group: the curve every layout must reproduce."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    trainer = Trainer(RunConfig.from_dict(config(token_data, run_dir)))
    trainer.fit()
    return rows(run_dir)


def test_fsdp_two_ranks_match_one_process(token_data, tmp_path, reference):
    cfg = write(tmp_path / "c.yaml", config(token_data, tmp_path / "run"))
    out = lmforge_train(2, cfg)
    assert "FSDP2 over mesh 2 ('dp_shard',)" in out.stderr
    assert out.stderr.count("step 16/16") == 1  # console output from rank 0 only
    assert_same_curve(reference, rows(tmp_path / "run"))


def test_hsdp_four_ranks_with_activation_checkpointing(token_data, tmp_path, reference):
    data = config(token_data, tmp_path / "run")
    data["parallel"].update(dp_replicate=2, dp_shard=2, activation_checkpointing="every_k", ac_every=2)
    out = lmforge_train(4, write(tmp_path / "c.yaml", data))
    assert "activation checkpointing on 1 blocks" in out.stderr
    assert "FSDP2 over mesh 2×2 ('dp_replicate', 'dp_shard')" in out.stderr
    assert_same_curve(reference, rows(tmp_path / "run"))


def test_fsdp_with_per_block_compile_and_activation_checkpointing(token_data, tmp_path, reference):
    """The GPU configuration's wrapping order (AC → compile → FSDP) on CPU: FSDP's hooks stay
    outside the compiled blocks, recomputation inside them."""
    data = config(token_data, tmp_path / "run")
    data["parallel"].update(compile=True, activation_checkpointing="full")
    out = lmforge_train(2, write(tmp_path / "c.yaml", data))
    assert "activation checkpointing on 2 blocks; per-block torch.compile; FSDP2 over mesh 2" in out.stderr
    assert_same_curve(reference, rows(tmp_path / "run"))


def test_the_gpu_recipe_on_cpu_bf16_fsdp_with_compile_stays_near_fp32(token_data, tmp_path, reference):
    """What a GPU run takes, minus CUDA: bf16 parameters through FSDP's mixed-precision policy,
    fp32 reduce-scatter, per-block compile with bf16 weights, the fused loss fed bf16 features.
    It must learn, and every loss stays within 2e-3 (relative) of the fp32 one-process run."""
    data = config(token_data, tmp_path / "run")
    data["parallel"].update(param_dtype="bfloat16", reduce_dtype="float32", compile=True)
    out = lmforge_train(2, write(tmp_path / "c.yaml", data))
    assert "per-block torch.compile; FSDP2 over mesh 2 ('dp_shard',) (torch.bfloat16 compute)" in out.stderr
    got = rows(tmp_path / "run")
    assert [r["step"] for r in reference] == [r["step"] for r in got]
    losses = [r["loss"] for r in got if "loss" in r]
    assert losses[-1] < losses[0] - 1.0  # it trains
    for a, b in zip(reference, got):
        for key in ("loss", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=2e-3), (a["step"], key, a[key], b[key])


def kill_then_resume(token_data, tmp_path, *, first: int, then: int, kill_rank: int, relaunch_overrides=()):
    """Train on `first` ranks, SIGKILL rank `kill_rank` after step 6 (checkpoint at 4),
    relaunch the CLI on `then` ranks."""
    run_dir = tmp_path / "run"
    cfg = write(tmp_path / "c.yaml", config(token_data, run_dir))
    if first == 1:
        cmd = [sys.executable, str(WORKER), str(cfg), "--kill-rank=0", "--kill-after-step=6"]
        killed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    else:
        killed = torchrun(first, str(WORKER), str(cfg), f"--kill-rank={kill_rank}", "--kill-after-step=6", check=False)
    assert killed.returncode != 0, "the run was not killed"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-4"
    assert max(r["step"] for r in rows(run_dir)) == 6  # steps 5 and 6 were logged, then lost
    resumed = lmforge_train(then, cfg, *relaunch_overrides)
    assert f"resumed from {run_dir / 'checkpoints' / 'step-4'} (step 4" in resumed.stderr
    return rows(run_dir)


def test_checkpoint_from_two_ranks_resumes_on_one_after_a_rank_is_killed(token_data, tmp_path, reference):
    assert_same_curve(reference, kill_then_resume(token_data, tmp_path, first=2, then=1, kill_rank=1))


def test_checkpoint_from_one_rank_resumes_on_two_with_background_saves(token_data, tmp_path, reference):
    curve = kill_then_resume(token_data, tmp_path, first=1, then=2, kill_rank=0,
                             relaunch_overrides=["--trainer.async_checkpoint=true"])
    assert_same_curve(reference, curve)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-16"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-12", "step-16", "step-4", "step-8"]


def test_export_and_consolidate_read_a_sharded_checkpoint(token_data, tmp_path):
    """A checkpoint written by 2 ranks: consolidated to one file, exported, loaded by transformers."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmforge.cli import main
    from lmforge.model.io import load_model

    run_dir = tmp_path / "run"
    lmforge_train(2, write(tmp_path / "c.yaml", config(token_data, run_dir, max_steps=4)))
    step = run_dir / "checkpoints" / "step-4"
    assert sorted(p.name for p in (step / "model").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert main(["checkpoint", "consolidate", str(step), str(tmp_path / "one")]) == 0
    assert main(["export", str(step), str(tmp_path / "hf")]) == 0
    sharded, single = load_model(step), load_model(tmp_path / "one")
    for (name, a), (_, b) in zip(sharded.state_dict().items(), single.state_dict().items()):
        assert torch.equal(a, b), name
    tokens = torch.randint(0, 512, (2, 16))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, sharded(tokens)[..., :512], rtol=0, atol=1e-5)


def test_spike_attribution_under_fsdp_matches_one_process(token_data, tmp_path):
    """A bad batch at step 12: flagged on 2 ranks as on 1, with the same documents and losses
    (each rank scores its rows; rank 0 gathers them)."""
    from test_spikes import InjectBadBatch

    runs = {}
    for nproc in (1, 2):
        data = config(token_data, tmp_path / f"run{nproc}")
        data["spikes"] = {"enabled": True, "window": 16, "min_history": 8}
        cfg = write(tmp_path / f"c{nproc}.yaml", data)
        if nproc == 1:
            trainer = Trainer(RunConfig.from_dict(data), callbacks=None)
            trainer.callbacks.append(InjectBadBatch(12))
            trainer.fit()
        else:
            torchrun(2, str(WORKER), str(cfg), "--inject-bad-batch-at=12")
        runs[nproc] = [json.loads(line) for line in (tmp_path / f"run{nproc}" / "spikes.jsonl").read_text().splitlines()]
    (one,), (two,) = runs[1], runs[2]
    assert one["step"] == two["step"] == 12
    docs_one = {d["id"]: (d["tokens"], d["loss_sum"]) for d in one["documents"]}
    docs_two = {d["id"]: (d["tokens"], d["loss_sum"]) for d in two["documents"]}
    assert docs_one.keys() == docs_two.keys() and docs_one
    for doc_id, (tokens, loss) in docs_one.items():
        assert docs_two[doc_id][0] == tokens and docs_two[doc_id][1] == pytest.approx(loss, rel=1e-4), doc_id


# -- bad settings: one line naming the setting and the fix ---------------------------------------------


def test_world_size_that_does_not_divide_the_batch(token_data, tmp_path):
    cfg = RunConfig.from_dict(config(token_data, tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"^trainer.batch_tokens: 512 tokens = 8 instances .* cannot be split evenly "
                                          r"over 3 ranks; use a world size that divides 8"):
        cfg.check_world_size(3)
    with pytest.raises(ConfigError, match=r"^trainer.micro_batch_size: 2 must divide the 1 instances each of 8 ranks"):
        cfg.check_world_size(8)


def test_hsdp_mesh_that_does_not_multiply_to_the_world_size():
    with pytest.raises(ConfigError, match=r"^parallel.dp_replicate=2 × parallel.dp_shard=3 = 6, but torchrun started 4"):
        mesh_shape(ParallelConfig(dp_replicate=2, dp_shard=3), 4)
    with pytest.raises(ConfigError, match=r"^parallel.dp_replicate=3 does not divide the world size 4"):
        mesh_shape(ParallelConfig(dp_replicate=3), 4)
    assert mesh_shape(ParallelConfig(dp_replicate=2), 8) == (2, 4)


def test_hsdp_mismatch_under_torchrun_is_one_line(token_data, tmp_path):
    data = config(token_data, tmp_path / "run")
    data["parallel"].update(dp_replicate=2, dp_shard=2)
    out = torchrun(2, "-m", "lmforge", "train", str(write(tmp_path / "c.yaml", data)), check=False)
    assert out.returncode != 0
    said = ("lmforge: error: parallel.dp_replicate=2 × parallel.dp_shard=2 = 4, but torchrun started 2 processes; "
            "make the product 2 (or set dp_shard: -1)")
    assert out.stderr.count(said) == 2  # from each rank (their lines may interleave)
    assert "raise ConfigError" not in out.stderr  # no traceback of ours (torchrun reports its children its own way)


def test_checkpoint_of_another_model_shape_is_refused(token_data, tmp_path):
    Trainer(RunConfig.from_dict(config(token_data, tmp_path / "small", max_steps=4))).fit()
    other = config(token_data, tmp_path / "wide", max_steps=4)
    other["model"]["d_model"] = 128
    trainer = Trainer(RunConfig.from_dict(other))
    with pytest.raises(LmforgeError, match=r"step-4 holds a model of another shape \(d_model: 64 vs 128: checkpoint vs "
                                           r"config\); resume it with its own model config"):
        trainer.load_checkpoint(tmp_path / "small" / "checkpoints" / "step-4")


def test_ladder_run_under_torchrun_matches_one_process(token_data, tmp_path):
    """A ladder with nproc: 2 trains each run under torchrun (gloo): its results row equals the
    in-process run's (same tokens, validation loss within 1e-5)."""
    import yaml

    from lmforge.experiments.ladder import load_ladder, plan_runs, train_one

    base = {
        "model": {"vocab_size": 512, "d_model": 64, "n_layers": 1, "n_heads": 1, "mlp_hidden": 64, "max_seq_len": 64},
        "data": {"train": [str(token_data / "train")], "validation": [str(token_data / "val")], "seq_len": 64},
        "optim": {"lr": 3e-3, "schedule": "cosine"},
        "trainer": {"batch_tokens": 1024, "micro_batch_size": 8, "max_steps": 1, "eval_every": 1000,
                    "eval_batches": 2, "checkpoint_every": 1000, "log_every": 1000},
    }  # fmt: skip
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    rows = {}
    for nproc in (1, 2):
        spec = {"base": str(tmp_path / "base.yaml"), "out": str(tmp_path / f"ladder{nproc}"), "sizes": [32, 48],
                "head_dim": 8, "aspect": 16, "mlp_ratio": 2.0, "token_multiples": [0.05, 0.1, 0.2], "nproc": nproc}
        (tmp_path / f"ladder{nproc}.yaml").write_text(yaml.safe_dump(spec))
        cfg = load_ladder(tmp_path / f"ladder{nproc}.yaml")
        run = plan_runs(cfg)[0]
        rows[nproc] = train_one(cfg, run)
    one, two = rows[1], rows[2]
    assert one["steps"] == two["steps"] > 1 and one["tokens"] == two["tokens"]
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)
