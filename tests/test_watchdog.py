"""Hangs named and stragglers found: on 4 gloo ranks under torchrun, a rank stuck in compute
and a SIGSTOPped one are each detected within 2 × the stall budget, named, every rank's stacks
dumped, and the restarted job finishes equal to a fault-free run; a slowed rank is named a
straggler, and a fault-free run of 100 steps names none."""

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from conftest import tiny_run
from fault_injection import read_injected

from lmforge.errors import HANG_EXIT_CODE, ConfigError
from lmforge.train.config import RunConfig
from lmforge.train.stragglers import STRAGGLERS_FILE, named_stragglers, slow_ranks
from lmforge.train.watchdog import STACKS, diagnose, in_collective, read_last, signal_thread

FAULTS = {"stall_floor_s": 3.0, "stall_factor": 10.0, "stall_long_s": 60.0, "heartbeat_s": 0.5,
          "collective_timeout_s": 30.0}
COMPARED = ("loss", "z_loss", "grad_norm", "val_loss", "lr", "batch_crc", "tokens")


def beat(rank, step=7, phase="forward_backward", inside=True, age=0.0, now=1000.0):
    return {"rank": rank, "host": "h", "pid": 1, "step": step, "phase": phase, "in_collective": inside,
            "time": now - age}


def test_diagnose_names_the_rank_that_differs():
    everyone_waits = {r: beat(r) for r in range(4)}
    assert diagnose(everyone_waits, 1000.0, stale_after=2) == ("collective", [])
    assert diagnose({**everyone_waits, 2: beat(2, age=5)}, 1000.0, stale_after=2) == ("frozen_or_dead", [2])
    assert diagnose({**everyone_waits, 0: None}, 1000.0, stale_after=2) == ("frozen_or_dead", [0])
    assert diagnose({**everyone_waits, 1: beat(1, inside=False)}, 1000.0, stale_after=2) == ("behind", [1])
    assert diagnose({**everyone_waits, 3: beat(3, phase="callbacks")}, 1000.0, 2) == ("collective_mismatch", [3])
    assert diagnose({0: beat(0, inside=False)}, 1000.0, stale_after=2) == ("stalled", [0])


def frame_in(filename: str):
    """A live frame whose code claims to come from `filename`."""
    code = compile("import sys\ndef here():\n    return sys._getframe()\n", filename, "exec")
    namespace: dict = {}
    exec(code, namespace)
    return namespace["here"]()


def test_a_stack_inside_torch_distributed_counts_as_waiting_in_a_collective():
    import torch

    root = Path(torch.__file__).parent
    assert in_collective(frame_in(str(root / "distributed" / "distributed_c10d.py")))
    assert in_collective(frame_in(str(root / "distributed" / "fsdp" / "_fully_shard" / "_fsdp_collectives.py")))
    assert not in_collective(frame_in(str(root / "distributed" / "checkpoint" / "filesystem.py")))  # a file write
    assert not in_collective(sys._getframe())
    assert not in_collective(None)
    assert isinstance(sys._getframe(), types.FrameType)


def test_straggler_rule_needs_both_margins_in_most_windows():
    assert slow_ranks([1.0, 1.0, 1.5, 1.0], rel_margin=0.2, abs_margin_s=0.1) == [2]
    assert slow_ranks([0.010, 0.010, 0.015, 0.010], rel_margin=0.2, abs_margin_s=0.02) == []  # 50 % but 5 ms
    assert slow_ranks([1.0, 1.0, 1.1, 1.0], rel_margin=0.2, abs_margin_s=0.01) == []  # 100 ms but 10 %
    assert named_stragglers([[2], [2]], of=5) == []  # 2 of 5 is not most
    assert named_stragglers([[2], [], [2], [2, 1]], of=5) == [2]


def test_fault_budgets_that_cannot_work_name_the_field(token_data, tmp_path):
    def load(**faults):
        return RunConfig.from_dict({**tiny_run(token_data, tmp_path / "run"), "faults": faults})

    with pytest.raises(ConfigError, match=r"^faults.stall_floor_s: must be positive, got 0"):
        load(stall_floor_s=0)
    with pytest.raises(ConfigError, match=r"^faults.stall_factor: must be positive, got -1"):
        load(stall_factor=-1)
    with pytest.raises(ConfigError, match=r"^faults.heartbeat_s: must be ≤ faults.stall_floor_s / 4 = 1"):
        load(stall_floor_s=4, heartbeat_s=2)
    with pytest.raises(ConfigError, match=r"^faults.stall_long_s: must be ≥ faults.stall_floor_s=60"):
        load(stall_long_s=10)
    with pytest.raises(ConfigError, match=r"^faults.watchdog: "):
        load(watchdog="sometimes")


# -- 4 ranks under torchrun -------------------------------------------------------------------------
def run_config(token_data, run_dir, steps=16, **faults):
    data = tiny_run(token_data, run_dir, max_steps=steps, checkpoint_every=4, keep_checkpoints=0, micro_batch_size=1,
                    log_every=1)
    data["faults"] = {**FAULTS, **faults}
    data["optim"] = {"schedule": "constant", "warmup_steps": 4}  # so a shorter run is the first steps of a longer
    return data


def rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def fault_free(token_data, tmp_path_factory):
    """The reference: 4 ranks, no fault, 100 steps (the straggler monitor's false-positive check)."""
    from test_distributed import WORKER, torchrun, write

    run_dir = tmp_path_factory.mktemp("fault_free") / "run"
    torchrun(4, str(WORKER), str(write(run_dir.parent / "c.yaml", run_config(token_data, run_dir, steps=100))))
    return run_dir


def assert_equal_to(reference, run_dir, steps):
    got, want = rows(run_dir), [r for r in rows(reference) if r["step"] <= steps]
    assert [r["step"] for r in got] == [r["step"] for r in want]  # no step lost, none twice
    for a, b in zip(got, want):
        assert {k: a.get(k) for k in COMPARED} == {k: b.get(k) for k in COMPARED}, a["step"]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("fault,rank", [("hang", 1), ("freeze", 0)])
def test_a_stuck_rank_is_named_and_the_restart_finishes_as_if_nothing_happened(token_data, tmp_path, monkeypatch,
                                                                                 fault_free, fault, rank):
    from test_distributed import WORKER, torchrun, write

    monkeypatch.setenv("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")  # README: restarts
    run_dir = tmp_path / "run"
    cfg = write(tmp_path / "c.yaml", run_config(token_data, run_dir))
    out = torchrun(4, "--max-restarts=1", str(WORKER), str(cfg), f"--{fault}={rank}:6")
    record = read_last(run_dir)
    assert record is not None
    (injected,) = read_injected(run_dir)
    assert record["kind"] == ("behind" if fault == "hang" else "frozen_or_dead")
    assert [s["rank"] for s in record["suspects"]] == [rank]
    assert record["step"] == 6 and record["exit_code"] == HANG_EXIT_CODE
    assert record["time"] - injected["time"] < 2 * record["budget_s"], record
    assert f"hang ({record['kind']}): rank {rank} (" in out.stderr
    for r in range(4):  # every rank dumped its stacks, the stuck one included
        stacks = (run_dir / STACKS / f"rank-{r}.txt").read_text()
        assert f"=== lmforge watchdog: rank {r} " in stacks and "File " in stacks, r
    assert "fault_injection.py" in (run_dir / STACKS / f"rank-{rank}.txt").read_text()  # where it was stuck
    assert f"resumed from {run_dir / 'checkpoints' / 'step-4'} (step 4" in out.stderr
    assert_equal_to(fault_free, run_dir, steps=16)


@pytest.mark.distributed
@pytest.mark.slow
def test_a_fault_free_run_names_no_straggler(fault_free):
    logged = [r for r in rows(fault_free) if "loss" in r]
    assert len(logged) == 100 and all(r["straggler_ranks"] == [] for r in logged)
    assert not (fault_free / STRAGGLERS_FILE).exists()


@pytest.mark.distributed
@pytest.mark.slow
def test_a_slow_rank_is_named_within_five_windows_and_evicted_at_the_next_checkpoint(token_data, tmp_path):
    from test_distributed import WORKER, torchrun, write

    run_dir = tmp_path / "run"
    data = run_config(token_data, run_dir, steps=40, evict_stragglers=True)
    data["trainer"].update(log_every=2, checkpoint_every=8)
    out = torchrun(4, str(WORKER), str(write(tmp_path / "c.yaml", data)), "--slow=2:0.03", check=False)
    logged = [r for r in rows(run_dir) if r["step"] % 2 == 0]
    first = next(i for i, r in enumerate(logged) if r["straggler_ranks"])
    assert first < 5 and all(r["straggler_ranks"] == [2] for r in logged[first:])
    named = [json.loads(line) for line in (run_dir / STRAGGLERS_FILE).read_text().splitlines()]
    assert {r["rank"] for r in named} == {2} and all(r["ratio"] > 1.2 and r["host"] for r in named)
    # Eviction: the first checkpoint after the naming is the last thing the run does.
    stop = -(-logged[first]["step"] // 8) * 8
    assert out.returncode != 0 and (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{stop}"
    assert max(r["step"] for r in rows(run_dir)) == stop
    assert f"stopped after the checkpoint of step {stop} to leave out straggling host(s) " in out.stderr
    record = read_last(run_dir)
    assert record["kind"] == "straggler" and [s["rank"] for s in record["suspects"]] == [2]
    assert record["suspects"][0]["host"] and record["exit_code"] == HANG_EXIT_CODE


def fake_slurm(bin_dir: Path, log: Path, srun_body: str) -> None:
    """`srun` and `scontrol` stand-ins: srun runs `srun_body`, scontrol answers and logs."""
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f"#!/bin/bash\n{srun_body}\n")
    (bin_dir / "scontrol").write_text(f"""#!/bin/bash
case "$1 $2" in
  "show hostnames") echo node1 ;;
  "show job") echo "JobId=7 JobName=lmforge ExcNodeList=node3 NodeList=node[1-8]" ;;
  *) echo "$@" >> {log} ;;
esac
""")
    for f in bin_dir.iterdir():
        f.chmod(0o755)


@pytest.mark.parametrize("hang_recorded", [True, False])
def test_the_sbatch_script_requeues_without_the_suspects_hosts(token_data, tmp_path, hang_recorded):
    import yaml

    run_dir = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run(token_data, run_dir)))
    record = {"kind": "behind", "step": 6, "phase": "forward_backward", "time": "$(date +%s)",
              "suspects": [{"rank": 9, "host": "node5", "where": "x.py:1 f"}]}
    body = json.dumps(record).replace('"$(date +%s)"', "$(date +%s)")
    write_record = f"mkdir -p {run_dir}/faults && echo '{body}' | sed \"s/\\$(date +%s)/$(date +%s)/\" > " \
                   f"{run_dir}/faults/last.json" if hang_recorded else "true"
    log = tmp_path / "scontrol.log"
    fake_slurm(tmp_path / "bin", log, f"{write_record}\nexit 1")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "PYTHON": sys.executable,
           "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node[1-8]", "SLURM_JOB_NUM_NODES": "8"}
    script = Path(__file__).parents[1] / "scripts" / "slurm_train.sbatch"
    out = subprocess.run(["bash", str(script), str(cfg)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr  # torchrun's failure is the job's
    if not hang_recorded:  # a plain failure: nothing named, no requeue
        assert not log.exists()
        return
    assert log.read_text().splitlines() == ["update JobId=7 ExcNodeList=node3,node5", "requeue 7"]
    assert "requeueing job 7 without node3,node5" in out.stderr
    from lmforge.cli import main

    assert main(["analyze", "faults", str(cfg), "--exclude-hosts"]) == 0


def test_the_straggler_clock_counts_the_blocks_forward_only():
    import torch

    from lmforge.train.stragglers import BlockClock

    class Slow(torch.nn.Module):
        def forward(self, x):
            time.sleep(0.02)
            return x

    blocks = torch.nn.ModuleList([Slow(), Slow()])
    clock = BlockClock(blocks, torch.device("cpu"))
    for block in blocks:
        block(torch.zeros(1))
    time.sleep(0.05)  # outside the blocks: not counted
    assert 0.04 <= clock.take() < 0.09 and clock.take() == 0.0
    clock.remove()
    blocks[0](torch.zeros(1))
    assert clock.take() == 0.0


def test_the_collectives_timeout_tightens_after_the_first_step_and_loosens_for_checkpoints(tmp_path):
    import torch
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d

    from lmforge.parallel import World
    from lmforge.train.config import FaultsConfig
    from lmforge.train.progress import Progress
    from lmforge.train.watchdog import Watchdog

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        world = World(rank=0, size=1, device=torch.device("cpu"), mesh=None)
        timeout = c10d._get_default_group()._get_backend(torch.device("cpu")).options

        progress = Progress()
        cfg = FaultsConfig(stall_floor_s=60, stall_long_s=100, collective_timeout_s=90, heartbeat_s=0.05)
        with Watchdog(cfg, tmp_path, world, progress, launch="t"):
            before = timeout._timeout.total_seconds()
            progress.begin_step(1)
            progress.enter("forward_backward")
            assert timeout._timeout.total_seconds() == before  # the first step: the launch's timeout
            progress.enter("callbacks")
            assert timeout._timeout.total_seconds() == 90
            with progress.during("checkpoint"):
                assert timeout._timeout.total_seconds() == 200  # 2 × stall_long_s
            assert timeout._timeout.total_seconds() == 90
            time.sleep(0.3)  # a few heartbeats
        beat = json.loads((tmp_path / "faults" / "heartbeat" / "rank-0.json").read_text())
        assert beat["step"] == 1 and beat["launch"] == "t" and not beat["in_collective"]
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_single_process_that_stalls_exits_with_the_hang_code(token_data, tmp_path):
    """One process, `faults.watchdog: always`: nobody else to blame, the stall is named ("stalled")."""

    from test_distributed import WORKER, write

    run_dir = tmp_path / "run"
    cfg = write(tmp_path / "c.yaml", run_config(token_data, run_dir, watchdog="always"))
    cfg_data = yaml_load(cfg)
    cfg_data["trainer"]["micro_batch_size"] = 4
    write(cfg, cfg_data)
    out = subprocess.run([sys.executable, str(WORKER), str(cfg), "--hang=0:3"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == HANG_EXIT_CODE, out.stderr[-2000:]
    record = read_last(run_dir)
    assert record["kind"] == "stalled" and [s["rank"] for s in record["suspects"]] == [0] and record["step"] == 3
    assert "fault_injection.py" in record["suspects"][0]["where"]
    assert "=== lmforge watchdog: rank 0 " in (run_dir / STACKS / "rank-0.txt").read_text()


def yaml_load(path):
    import yaml

    return yaml.safe_load(Path(path).read_text())


def test_a_hang_record_is_created_once_and_whole(tmp_path, monkeypatch):
    from lmforge.train.watchdog import create_once

    path = tmp_path / "hang-x.json"
    assert create_once(path, '{"by": 1}', rank=1)
    assert not create_once(path, '{"by": 2}', rank=2)
    assert path.read_text() == '{"by": 1}' and [p.name for p in tmp_path.iterdir()] == ["hang-x.json"]

    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # a file system without hard links
    other = tmp_path / "hang-y.json"
    assert create_once(other, "a", rank=0) and not create_once(other, "b", rank=1) and other.read_text() == "a"


FROZEN_CHILD = """
import faulthandler, os, signal, sys, threading, time
faulthandler.register(signal.SIGUSR1, file=open(sys.argv[1], "a"), all_threads=True)
def spin():
    while True:
        sum(range(1000))
for _ in range(3):  # busy threads that could take a process-directed signal
    threading.Thread(target=spin, daemon=True).start()
def frozen_here():
    print(threading.get_native_id(), flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
def moved_on():
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        sum(range(1000))
frozen_here()
moved_on()
"""


def test_a_frozen_process_dumps_the_line_where_it_froze(tmp_path):
    """SIGUSR1 goes to the frozen process's training thread: with a process-directed signal
    another thread may handle it while the training thread has already moved on."""
    dump = tmp_path / "stacks.txt"
    child = subprocess.Popen([sys.executable, "-c", FROZEN_CHILD, str(dump)], stdout=subprocess.PIPE, text=True)
    tid = int(child.stdout.readline())
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] != "T":
        assert time.monotonic() < deadline, "the child never stopped"
        time.sleep(0.01)
    signal_thread(child.pid, tid, signal.SIGUSR1)
    os.kill(child.pid, signal.SIGCONT)
    assert child.wait(timeout=30) == 0
    text = dump.read_text()
    main = text[text.index("Current thread"):]  # the training thread handled it: it is the current one
    assert "in frozen_here" in main.split("\n\n")[0] and "in moved_on" not in text, text
