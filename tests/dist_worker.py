"""What `lmforge train` does under torchrun, plus faults: SIGKILL (or SIGTERM) one rank right after a given
step (after that step's checkpoint, if any), as a crashed node would die; or a bad batch at a
given step (see test_spikes.InjectBadBatch), or the faults of `fault_injection` (NaN steps, a rank
hung or frozen in compute, a slow rank, a full disk). Test-only.

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/dist_worker.py CONFIG \
        [--kill-rank R --kill-after-step N] [--override ...]
"""

import argparse
import logging
import os
import signal
import sys

import fault_injection as inject  # this script's folder, tests/

from lmforge.errors import RollbackRequested, StragglersEvicted
from lmforge.train.callback import Callback
from lmforge.train.callbacks import default_callbacks
from lmforge.train.config import RunConfig
from lmforge.train.trainer import Trainer


class SignalRank(Callback):
    """Sends a signal to one rank's own process right after a given step: SIGKILL (a crashed
    node, after that step's checkpoint, if any) or SIGTERM (a preemption notice); under
    torchrun's restarts, on the first attempt only."""

    priority = -100  # after the checkpointer

    def __init__(self, rank: int, step: int, signum: int, name: str):
        self.rank, self.step, self.signum, self.name = rank, step, signum, name

    def post_step(self, trainer, metrics):
        if trainer.step == self.step and trainer.world.rank == self.rank and inject.first_attempt():
            inject.record(trainer, self.name.removesuffix("_rank"))
            os.kill(os.getpid(), self.signum)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--kill-rank", type=int, default=-1)
    parser.add_argument("--kill-after-step", type=int, default=-1)
    parser.add_argument("--sigterm-rank", type=int, default=-1, help="send SIGTERM to this rank after --sigterm-after-step")
    parser.add_argument("--sigterm-after-step", type=int, default=-1)
    parser.add_argument("--inject-bad-batch-at", type=int, default=-1, help="see test_spikes.InjectBadBatch")
    parser.add_argument("--inject-nan-at", default="", help="steps, e.g. 9,10,11: NaN forwards on the first "
                                                            "attempt only (fault_injection.InjectNaN)")
    parser.add_argument("--hang", default="", help="RANK:STEP: that rank sleeps in compute (first attempt)")
    parser.add_argument("--freeze", default="", help="RANK:STEP: that rank SIGSTOPs itself (first attempt)")
    parser.add_argument("--slow", default="", help="RANK:SECONDS: that rank sleeps this long in each block forward")
    parser.add_argument("--fill-disk-at", type=int, default=-1, help="fill the run dir's disk before this step")
    args, overrides = parser.parse_known_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # as the CLI logs: rank 0's progress lines
    cfg = RunConfig.from_yaml(args.config, overrides)
    callbacks = default_callbacks(cfg) + [
        SignalRank(args.kill_rank, args.kill_after_step, signal.SIGKILL, "kill_rank"),
        SignalRank(args.sigterm_rank, args.sigterm_after_step, signal.SIGTERM, "sigterm_rank"),
    ]
    if args.inject_bad_batch_at > 0:
        from test_spikes import InjectBadBatch  # this script's folder, tests/, is on sys.path

        callbacks.append(InjectBadBatch(args.inject_bad_batch_at))
    if args.inject_nan_at:
        callbacks.append(inject.InjectNaN([int(x) for x in args.inject_nan_at.split(",")], first_attempt_only=True))
    if args.hang:
        callbacks.append(inject.HangRank(*map(int, args.hang.split(":"))))
    if args.freeze:
        callbacks.append(inject.FreezeRank(*map(int, args.freeze.split(":"))))
    if args.slow:
        rank, seconds = args.slow.split(":")
        callbacks.append(inject.SlowRank(int(rank), float(seconds)))
    if args.fill_disk_at > 0:
        callbacks.append(inject.FillDisk(args.fill_disk_at))
    trainer = Trainer(cfg, callbacks=callbacks)
    try:
        trainer.fit()
    except (RollbackRequested, StragglersEvicted) as e:  # as the CLI exits on them
        print(f"lmforge: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    finally:
        trainer.close()


if __name__ == "__main__":
    main()
