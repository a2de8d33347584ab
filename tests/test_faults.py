"""Non-finite steps: never applied, and rolled back when they repeat; the relaunch (by hand, or
torchrun's --max-restarts) finishes equal to a fault-free run that skips the same batches."""

import errno
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import tiny_run
from fault_injection import InjectNaN

from lmforge.errors import ConfigError, LmforgeError, RollbackRequested
from lmforge.train import checkpoint as ckpt
from lmforge.train.callback import Callback
from lmforge.train.callbacks import default_callbacks
from lmforge.train.config import RunConfig
from lmforge.train.nonfinite import ROLLBACKS, read_rollbacks
from lmforge.train.trainer import Trainer

COMPARED = ("loss", "z_loss", "grad_norm", "val_loss", "lr", "batch_crc", "tokens")


def config(token_data, run_dir, **trainer):
    data = tiny_run(token_data, run_dir, **{"max_steps": 16, "checkpoint_every": 4, "keep_checkpoints": 0, **trainer})
    data["data"]["validation"] = [str(token_data / "val")]
    data["trainer"].update(eval_every=8, eval_batches=2)
    return data


def rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def fit(data, *extra) -> dict[str, torch.Tensor]:
    """Train; return the final weights."""
    cfg = RunConfig.from_dict(data)
    trainer = Trainer(cfg, callbacks=default_callbacks(cfg) + list(extra))
    try:
        trainer.fit()
        return {k: v.clone() for k, v in trainer.module.model.state_dict().items()}
    finally:
        trainer.close()


def assert_rows_equal(a, b, except_steps=()):
    assert [r["step"] for r in a] == [r["step"] for r in b]  # no step lost, none twice
    for x, y in zip(a, b):
        if x["step"] not in except_steps:
            assert {k: x.get(k) for k in COMPARED} == {k: y.get(k) for k in COMPARED}, x["step"]  # bitwise on CPU


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def skipping_6(token_data, tmp_path_factory):
    """The fault-free run that skips step 6's batch."""
    run_dir = tmp_path_factory.mktemp("skip6") / "run"
    return fit(config(token_data, run_dir, skip_steps=[6])), rows(run_dir)


def test_a_nan_step_is_not_applied_and_equals_skipping_its_batch(token_data, tmp_path, skipping_6, caplog):
    run_dir = tmp_path / "run"
    with caplog.at_level("INFO"):
        weights = fit(config(token_data, run_dir), InjectNaN([6]))
    reference_weights, reference_rows = skipping_6
    assert_same_weights(weights, reference_weights)
    got = rows(run_dir)
    assert_rows_equal(reference_rows, got, except_steps={6})
    (bad,) = [r for r in got if r["step"] == 6]
    assert bad["nonfinite"] == 1 and bad["skipped_step"] == 1 and bad["loss"] != bad["loss"]  # NaN
    (skipped,) = [r for r in reference_rows if r["step"] == 6]
    assert skipped["skipped_batch"] == 1 and skipped["batch_crc"] == bad["batch_crc"]  # the same batch, read
    assert "step 6: loss nan, grad_norm nan (not finite): the step is not applied" in caplog.text
    # no checkpoint while the bad step is within the window (3 steps): step 8's waits until 9
    assert "step 8: checkpoint postponed (step 6 was not finite)" in caplog.text
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert names == ["step-12", "step-16", "step-4", "step-9"]
    assert not (run_dir / ROLLBACKS).exists()  # one bad step is not a rollback


@pytest.fixture(scope="module")
def skipping_9_to_11(token_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("skip9") / "run"
    return fit(config(token_data, run_dir, skip_steps=[9, 10, 11])), rows(run_dir)


def test_three_nan_steps_in_a_row_roll_back_and_the_relaunch_finishes(token_data, tmp_path, skipping_9_to_11):
    run_dir = tmp_path / "run"
    data = config(token_data, run_dir)
    with pytest.raises(RollbackRequested, match=r"^step 11: 3 non-finite steps within 3 \(steps 9, 10, 11\): rolling "
                                                r"back to step-8; the relaunch skips their batches"):
        fit(data, InjectNaN([9, 10, 11]))
    (record,) = read_rollbacks(run_dir)
    assert record["skip_steps"] == [9, 10, 11] and record["resume_from"] == "step-8" and record["rollback"] == 1
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-8"
    weights = fit(data)  # the relaunch: no fault this time
    reference_weights, reference_rows = skipping_9_to_11
    assert_same_weights(weights, reference_weights)
    got = rows(run_dir)
    assert_rows_equal(reference_rows, got)
    assert [r["step"] for r in got if r.get("skipped_batch")] == [9, 10, 11]


def test_rollbacks_stop_at_the_limit(token_data, tmp_path):
    data = config(token_data, tmp_path / "run")
    data["faults"] = {"max_rollbacks": 1, "nonfinite_rollback_after": 2, "nonfinite_window": 4}
    with pytest.raises(RollbackRequested, match=r"^step 7: 2 non-finite steps within 4 \(steps 5, 7\)"):
        fit(data, InjectNaN([5, 7]))
    with pytest.raises(LmforgeError, match=r"^step 14: 2 non-finite steps within 4 \(steps 13, 14\), after 1 "
                                           r"rollbacks \(faults.max_rollbacks=1\); giving up: .*inspect-batch"):
        fit(data, InjectNaN([13, 14]))


def test_the_cli_exits_with_the_rollback_code(monkeypatch, tmp_path, capsys):
    import lmforge.experiments.train_run as train_run
    from lmforge.cli import main

    def roll_back(cfg):
        raise RollbackRequested("step 11: 3 non-finite steps within 3 (steps 9, 10, 11): rolling back to step-8")

    monkeypatch.setattr(train_run, "train", roll_back)
    config_path = tmp_path / "c.yaml"
    config_path.write_text(json.dumps(tiny_run(tmp_path, tmp_path / "run")))
    assert main(["train", str(config_path)]) == RollbackRequested.exit_code == 75
    assert capsys.readouterr().err.strip() == ("lmforge: step 11: 3 non-finite steps within 3 (steps 9, 10, 11): "
                                               "rolling back to step-8")


def test_fault_settings_that_cannot_work_name_the_field(token_data, tmp_path):
    base = config(token_data, tmp_path / "run")
    for faults, message in (({"max_rollbacks": 0}, r"^faults.max_rollbacks: must be ≥ 1, got 0"),
                            ({"nonfinite_rollback_after": 0}, r"^faults.nonfinite_rollback_after: must be ≥ 1"),
                            ({"nonfinite_rollback_after": 3, "nonfinite_window": 2},
                             r"^faults.nonfinite_window: must be 0 \(= nonfinite_rollback_after\) or ≥ "
                             r"nonfinite_rollback_after=3, got 2")):
        with pytest.raises(ConfigError, match=message):
            RunConfig.from_dict({**base, "faults": faults})
    with pytest.raises(ConfigError, match=r"^trainer.skip_steps: steps count from 1, got \[0\]"):
        RunConfig.from_dict(config(token_data, tmp_path / "run", skip_steps=[0]))


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_relaunches_a_rolled_back_run_by_itself(token_data, tmp_path, monkeypatch):
    """2 ranks under `torchrun --max-restarts=1`: NaN steps 9-11 on the first attempt roll back
    (every rank exits), torchrun restarts the group, and it resumes from step 8 and finishes on
    the one-process curve that skips those batches."""
    from test_distributed import WORKER, torchrun, write

    # Without it the restarted workers try to rendezvous through the store of the agent's first
    # round, which is gone, and gloo's connect times out (README: restarts).
    monkeypatch.setenv("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    run_dir = tmp_path / "run"
    data = config(token_data, run_dir, micro_batch_size=2)  # 2 ranks × 2 instances
    out = torchrun(2, "--max-restarts=1", str(WORKER), str(write(tmp_path / "c.yaml", data)), "--inject-nan-at=9,10,11")
    assert "rolling back to step-8" in out.stderr
    assert f"resumed from {run_dir / 'checkpoints' / 'step-8'} (step 8" in out.stderr
    (record,) = read_rollbacks(run_dir)
    assert record["skip_steps"] == [9, 10, 11]
    fit(config(token_data, tmp_path / "reference", micro_batch_size=2, skip_steps=[9, 10, 11]))
    reference, got = rows(tmp_path / "reference"), rows(run_dir)
    assert [r["step"] for r in reference] == [r["step"] for r in got]
    for a, b in zip(reference, got):
        assert a.get("skipped_batch") == b.get("skipped_batch") and a.get("batch_crc") == b.get("batch_crc")
        for key in ("loss", "grad_norm", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)


def test_sigterm_checkpoints_the_current_step_and_the_relaunch_continues_bitwise(token_data, tmp_path, caplog):
    """A preemption notice in the middle of a run (in-process: the signal handler is the loop's)."""
    reference_dir = tmp_path / "reference"
    reference = fit(config(token_data, reference_dir))

    class SendSigterm(Callback):
        name = "sigterm"

        def post_step(self, trainer, metrics):
            if trainer.step == 6:
                os.kill(os.getpid(), signal.SIGTERM)

    run_dir = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)  # whatever an earlier test's library installed
    with caplog.at_level("WARNING"):
        fit(config(token_data, run_dir), SendSigterm())  # returns: the process would exit 0
    assert "SIGTERM: stopped after step 6; run the same command to continue" in caplog.text
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-6"
    assert max(r["step"] for r in rows(run_dir)) == 6
    assert signal.getsignal(signal.SIGTERM) is before  # the handler was put back
    assert_same_weights(fit(config(token_data, run_dir)), reference)
    assert_rows_equal(rows(reference_dir), rows(run_dir))


@pytest.mark.distributed
@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_at_the_same_step(token_data, tmp_path):
    from test_distributed import WORKER, lmforge_train, torchrun, write

    run_dir = tmp_path / "run"
    cfg = write(tmp_path / "c.yaml", config(token_data, run_dir, micro_batch_size=2))
    torchrun(2, str(WORKER), str(cfg), "--sigterm-rank=1", "--sigterm-after-step=6")  # exit 0 on both ranks
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-6"
    resumed = lmforge_train(2, cfg)
    assert f"resumed from {run_dir / 'checkpoints' / 'step-6'} (step 6" in resumed.stderr
    fit(config(token_data, tmp_path / "reference", micro_batch_size=2))
    reference, got = rows(tmp_path / "reference"), rows(run_dir)
    assert [r["step"] for r in reference] == [r["step"] for r in got]
    for a, b in zip(reference, got):
        for key in ("loss", "grad_norm", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)


# -- a checkpoint that cannot be written -----------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1.5 MiB tmpfs: room for two checkpoints of the tiny model (needs mount rights)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()[:80]}); the injected-error test covers the logic")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def disk_config(token_data, run_dir, **faults):
    data = config(token_data, run_dir, checkpoint_every=1)
    data["faults"] = faults
    return data


def test_a_full_disk_stops_with_one_line_and_the_rerun_resumes(token_data, tmp_path, small_disk):
    run_dir = small_disk / "run"
    data = disk_config(token_data, run_dir)
    with pytest.raises(LmforgeError) as e:
        fit(data)
    message = str(e.value)
    assert "\n" not in message
    assert re.match(rf"^step (\d+): checkpoint not written to {run_dir / 'checkpoints'}: No space left on device", message)
    failed = int(message.split(":")[0].split()[1])
    assert message.endswith(f"latest is still step-{failed - 1}")
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{failed - 1}"
    assert not list((run_dir / "checkpoints").glob(".*partial"))  # the half-written folder is gone
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    weights = fit(data)
    reference = fit(disk_config(token_data, tmp_path / "reference"))
    assert_same_weights(weights, reference)
    assert_rows_equal(rows(tmp_path / "reference"), rows(run_dir))


def test_a_full_disk_can_be_trained_through(token_data, small_disk, caplog):
    run_dir = small_disk / "run"
    with caplog.at_level("ERROR"):
        fit(disk_config(token_data, run_dir, on_checkpoint_error="continue"))
    assert max(r["step"] for r in rows(run_dir)) == 16  # training went on
    failures = [r.message for r in caplog.records if "checkpoint not written" in r.message]
    assert failures and all("No space left on device" in m and m.endswith("training goes on "
                                                                          "(faults.on_checkpoint_error: continue)")
                            for m in failures)
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert ckpt.check_complete(run_dir / "checkpoints" / latest) is None


def test_a_write_error_names_the_folder_and_the_os_error(token_data, tmp_path, monkeypatch):
    """The same handling without a small file system: the OS error is injected at step 8."""
    real = ckpt.save_state

    def save_state(folder, state, **kwargs):
        if folder.name == ".step-8.partial":
            raise OSError(errno.EACCES, "Permission denied", str(folder / "model"))
        return real(folder, state, **kwargs)

    monkeypatch.setattr(ckpt, "save_state", save_state)
    run_dir = tmp_path / "run"
    with pytest.raises(ckpt.CheckpointWriteError, match=rf"^step 8: checkpoint not written to "
                                                        rf"{run_dir / 'checkpoints'}: Permission denied \[errno 13\]; "
                                                        r"latest is still step-4$"):
        fit(config(token_data, run_dir))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "step-4"]


@pytest.mark.distributed
@pytest.mark.slow
def test_a_full_disk_under_two_ranks_fails_alike_on_both(token_data, tmp_path, small_disk):
    from test_distributed import lmforge_train, torchrun, write

    run_dir = small_disk / "run"
    data = disk_config(token_data, run_dir)
    data["trainer"]["micro_batch_size"] = 2
    proc = torchrun(2, "-m", "lmforge", "train", str(write(tmp_path / "c.yaml", data)), check=False)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if "checkpoint not written" in ln]
    # every rank raises the same line (torchrun may stop the second before it prints); none hangs
    assert lines and len(set(lines)) == 1 and "No space left on device" in lines[0]
    failed = int(lines[0].split("step ")[1].split(":")[0])
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{failed - 1}"
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = lmforge_train(2, tmp_path / "c.yaml")
    assert f"(step {failed - 1}" in resumed.stderr
    assert max(r["step"] for r in rows(run_dir)) == 16


def test_restarts_without_a_checkpoint_to_restart_from_name_the_field(token_data, tmp_path, monkeypatch):
    cfg = RunConfig.from_dict(config(token_data, tmp_path / "run", checkpoint_every=16))
    cfg.check_restarts(0)  # no restarts: nothing needed
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")  # what torchrun --max-restarts=3 sets for its workers
    with pytest.raises(ConfigError, match=r"^trainer.checkpoint_every: torchrun --max-restarts=3 restarts a failed run "
                                          r"from its last checkpoint, but this run writes none before its end "
                                          r"\(checkpoint_every=16 ≥ 16 steps\); set trainer.checkpoint_every below 16$"):
        Trainer(cfg)
    RunConfig.from_dict(config(token_data, tmp_path / "run", checkpoint_every=16, keep_steps=[8])).check_restarts(3)
