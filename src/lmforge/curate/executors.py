"""Where a stage's tasks run: this process, a pool of local processes, or a Ray cluster.

Every executor runs the same task function on the same task list; tasks write their own files,
so which executor ran them (and in what order they finished) never changes the output.

Progress inside a stage: a running task calls `documents_read(n)` every so many documents. In
this process that moves the stage's bar at once; in local processes it adds to a shared counter
(a `multiprocessing.Value` handed to each process by the pool's initializer) that the parent
reads twice a second; on Ray it goes to a counter actor the driver asks as often. So the bar
moves, with tqdm's rate and ETA, while a long task runs, not only when a shard finishes.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, TextIO

from tqdm import tqdm

from lmforge.errors import LmforgeError

POLL_SECONDS = 0.5
"""How often the parent reads the shared document counter while tasks run."""

# Where `documents_read` sends counts in this process: set by the executor that runs the task
# (the pool initializer, the in-process executor, the Ray task wrapper); None: nobody listens.
_report: Callable[[int], None] | None = None


def documents_read(n: int) -> None:
    """Called by a running task: `n` more documents read (moves its stage's progress bar)."""
    if _report is not None and n:
        _report(n)


def _init_worker(counter: Any) -> None:
    """Pool initializer: this process's tasks add to the parent's shared counter."""
    global _report

    def add(n: int) -> None:
        with counter.get_lock():
            counter.value += n

    _report = add


class StageProgress:
    """One stage's bar, in documents: `expected` holds each task's documents (by shard; None if
    unknown: then no total and no ETA). Between task ends it moves by the documents tasks report
    (`add_live`/`set_live`); when a task ends it settles on that task's expected count, so the
    bar ends at its total even where bad or blank lines were counted but not read."""

    def __init__(self, desc: str, expected: dict[int, int | None], *, done_docs: int, shards: int,
                 done_shards: int, enabled: bool, file: TextIO | None = None):  # fmt: skip
        known = all(v is not None for v in expected.values())
        total = done_docs + sum(v or 0 for v in expected.values()) if known else None
        self.bar = tqdm(total=total, initial=done_docs, desc=desc, unit="doc", disable=not enabled,
                        dynamic_ncols=True, file=file)  # fmt: skip
        self.expected = expected
        self.position = done_docs
        self.settled = done_docs  # finished tasks, at their expected counts
        self.finished_read = 0  # documents the finished tasks reported
        self.live = 0  # documents all of this stage's tasks reported so far
        self.shards, self.done_shards = shards, done_shards
        self.bar.set_postfix_str(self._shards(), refresh=False)

    def _shards(self) -> str:
        return f"{self.done_shards}/{self.shards} shards"

    def add_live(self, n: int) -> None:
        self.set_live(self.live + n)

    def set_live(self, live: int) -> None:
        """The counter's value: documents this stage's tasks have reported so far."""
        self.live = live
        self._move()

    def finished(self, stats: dict[str, Any]) -> None:
        """A task ended; `stats` is what it returned (its shard and documents read)."""
        read = stats.get("read", 0)
        expected = self.expected.get(stats["shard"])
        self.settled += read if expected is None else max(expected, read)
        self.finished_read += read
        self.done_shards += 1
        self.bar.set_postfix_str(self._shards(), refresh=False)
        self._move()

    def _move(self) -> None:
        # Counts of a task may arrive after its end (Ray's counter is asynchronous): never negative.
        position = self.settled + max(0, self.live - self.finished_read)
        if position > self.position:
            self.bar.update(position - self.position)
            self.position = position

    def close(self) -> None:
        self.bar.close()


def _map_bar(n: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=n, desc=desc, unit="file", disable=not enabled or n < 2, dynamic_ncols=True)


class InProcess:
    """Tasks one after another in this process (`workers: 1`)."""

    def map(self, fn: Callable, items: list, *, desc: str, progress: bool) -> list:
        results = []
        with _map_bar(len(items), desc, progress) as bar:
            for x in items:
                results.append(fn(x))
                bar.update(1)
        return results

    def run(self, fn: Callable, tasks: list, bar: StageProgress) -> None:
        global _report
        _report = bar.add_live
        try:
            for task in tasks:
                bar.finished(fn(task))
        finally:
            _report = None
            bar.close()


class LocalProcesses:
    """A pool of spawned processes (spawn, not fork: safe with threads and torch loaded)."""

    def __init__(self, workers: int):
        context = multiprocessing.get_context("spawn")
        self.counter = context.Value("q", 0)  # documents read by all tasks, all stages
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                                        initargs=(self.counter,))  # fmt: skip

    def map(self, fn: Callable, items: list, *, desc: str, progress: bool) -> list:
        futures = [self.pool.submit(fn, x) for x in items]
        with _map_bar(len(items), desc, progress) as bar:
            for _ in _as_done(futures):
                bar.update(1)
        return [f.result() for f in futures]

    def run(self, fn: Callable, tasks: list, bar: StageProgress) -> None:
        base = self.counter.value
        futures: set[Future] = {self.pool.submit(fn, t) for t in tasks}
        try:
            while futures:
                finished, futures = wait(futures, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                bar.set_live(self.counter.value - base)  # after `wait`: includes the finished tasks' counts
                for f in finished:
                    bar.finished(f.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            bar.close()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


def _as_done(futures: list[Future]) -> Iterator[Future]:
    pending = set(futures)
    try:
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                f.result()  # a failure stops the map at once
                yield f
    except BaseException:
        for f in pending:
            f.cancel()
        raise


def _ray_call(fn: Callable, item: Any, counter: Any = None) -> Any:
    """A task as Ray runs it: its `documents_read` counts go to the driver's counter actor."""
    global _report
    _report = (lambda n: counter.add.remote(n)) if counter is not None else None
    try:
        return fn(item)
    finally:
        _report = None


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
        self.remote = ray.remote(num_cpus=1, max_retries=0)(_ray_call)
        self.counter: Any = None

    def _counter(self) -> Any:
        """The documents counter: an actor that takes no CPU, made on first use."""
        if self.counter is None:

            class Counter:
                def __init__(self) -> None:
                    self.n = 0

                def add(self, n: int) -> None:
                    self.n += n

                def get(self) -> int:
                    return self.n

            self.counter = self.ray.remote(num_cpus=0)(Counter).remote()
        return self.counter

    def map(self, fn: Callable, items: list, *, desc: str, progress: bool) -> list:
        refs = [self.remote.remote(fn, x) for x in items]
        with _map_bar(len(items), desc, progress) as bar:
            pending = list(refs)
            while pending:
                finished, pending = self._wait(pending, None)
                for ref in finished:
                    self._get(ref)  # a failure stops the map at once
                    bar.update(1)
        return [self._get(r) for r in refs]

    def run(self, fn: Callable, tasks: list, bar: StageProgress) -> None:
        ray, counter = self.ray, self._counter()
        base = ray.get(counter.get.remote())
        pending = [self.remote.remote(fn, t, counter) for t in tasks]
        try:
            while pending:
                finished, pending = self._wait(pending, POLL_SECONDS)
                bar.set_live(ray.get(counter.get.remote()) - base)
                for ref in finished:
                    bar.finished(self._get(ref))
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            bar.close()

    def _wait(self, pending: list, timeout: float | None) -> tuple[list, list]:
        return self.ray.wait(pending, num_returns=1, timeout=timeout)

    def _get(self, ref: Any) -> Any:
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:
            # A user error inside a task: show it as one line, as the local executors do.
            if isinstance(e.cause, LmforgeError):
                raise e.cause from None
            raise

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


def worker_count(config: Any) -> int:
    """Processes (or Ray tasks in flight) a run uses: `workers`, or one per CPU core."""
    return config.workers or os.cpu_count() or 1


@contextmanager
def make_executor(config: Any) -> Iterator[Any]:
    workers = worker_count(config)
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
