"""Where a stage's tasks run: this process, a pool of local processes, or a Ray cluster.

Every executor runs the same task function on the same task list; tasks write their own files,
so which executor ran them (and in what order they finished) never changes the output.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

from lmforge.errors import LmforgeError


class _Progress:
    """Shards done, documents/s and ETA for one stage."""

    def __init__(self, total: int, done: int, desc: str, enabled: bool):
        self.bar = tqdm(total=total, initial=done, desc=desc, unit="shard", disable=not enabled, dynamic_ncols=True)
        self.docs = 0
        self.started = time.perf_counter()

    def update(self, stats: dict[str, Any]) -> None:
        self.docs += stats.get("read", 0)
        rate = self.docs / max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{rate:,.0f} docs/s", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class InProcess:
    def run(self, fn: Callable, tasks: list, *, total: int, done: int, desc: str, progress: bool) -> None:
        bar = _Progress(total, done, desc, progress)
        try:
            for task in tasks:
                bar.update(fn(task))
        finally:
            bar.close()


class LocalProcesses:
    """A pool of spawned processes (spawn, not fork: safe with threads and torch loaded)."""

    def __init__(self, workers: int):
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))

    def run(self, fn: Callable, tasks: list, *, total: int, done: int, desc: str, progress: bool) -> None:
        bar = _Progress(total, done, desc, progress)
        futures: set[Future] = {self.pool.submit(fn, t) for t in tasks}
        try:
            while futures:
                finished, futures = wait(futures, return_when=FIRST_COMPLETED)
                for f in finished:
                    bar.update(f.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            bar.close()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


class RayTasks:
    """Tasks as Ray remote functions on a cluster (or a local Ray started here)."""

    def __init__(self, workers: int, address: str | None):
        try:
            import ray
        except ImportError:
            raise LmforgeError("executor: ray needs Ray installed: pip install 'lmforge[ray]'") from None
        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
            if address is None:
                kwargs["num_cpus"] = workers
            ray.init(address=address, **kwargs)
        self.workers = workers

    def run(self, fn: Callable, tasks: list, *, total: int, done: int, desc: str, progress: bool) -> None:
        ray = self.ray
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        bar = _Progress(total, done, desc, progress)
        pending = [remote.remote(t) for t in tasks]
        try:
            while pending:
                finished, pending = ray.wait(pending, num_returns=1)
                for ref in finished:
                    try:
                        bar.update(ray.get(ref))
                    except ray.exceptions.RayTaskError as e:
                        # A user error inside a task: show it as one line, as the local executors do.
                        if isinstance(e.cause, LmforgeError):
                            raise e.cause from None
                        raise
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            bar.close()

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


@contextmanager
def make_executor(config: Any) -> Iterator[Any]:
    workers = config.workers or os.cpu_count() or 1
    if config.executor == "ray":
        ex: Any = RayTasks(workers, config.ray_address)
    elif workers == 1:
        ex = InProcess()
    else:
        ex = LocalProcesses(workers)
    try:
        yield ex
    finally:
        if hasattr(ex, "close"):
            ex.close()
