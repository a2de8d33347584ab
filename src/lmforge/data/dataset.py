"""Training instances cut from token files, their order, and the loader position.

Instance i is tokens [i·T, i·T + T + 1) of the concatenated stream of all token folders:
T inputs and T shifted targets, so every token is predicted exactly once per epoch.
The order of instances in epoch e is a permutation that is a pure function of
(seed, e, data fingerprint), and the loader's whole state is one integer (instances
consumed), so resuming, and finding what step N saw, need nothing but the config.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from lmforge.data.token_files import DocumentSpan, TokenFiles, read_span
from lmforge.data.repetition import is_repetitive
from lmforge.errors import LmforgeError

IGNORE_INDEX = -100
"""Target value whose position contributes nothing to the loss (PyTorch's and transformers'
convention). Defined here, where targets are made; the loss imports it."""


class TokenStream:
    """Several token folders read as one stream (in the order given)."""

    def __init__(self, folders: list[str | Path]):
        if not folders:
            raise LmforgeError("data: no token folders given")
        self.files = [TokenFiles(f) for f in folders]
        fingerprints = {f.tokenizer_fingerprint for f in self.files}
        if len(fingerprints) > 1:
            names = ", ".join(f"{f.folder} ({f.tokenizer_fingerprint})" for f in self.files)
            raise LmforgeError(f"token folders were made with different tokenizers: {names}")
        self.starts = np.cumsum([0] + [f.num_tokens for f in self.files])  # each folder's offset
        self.num_tokens = int(self.starts[-1])
        # Every part of every folder, as one list, so reading is one `read_span`.
        self.parts = [part for f in self.files for part in f.parts]
        self.part_offsets = np.cumsum([0] + [len(part) for part in self.parts])
        digest = hashlib.sha256("".join(f.fingerprint for f in self.files).encode())
        self.fingerprint = digest.hexdigest()[:16]

    @property
    def tokenizer_fingerprint(self) -> str:
        return self.files[0].tokenizer_fingerprint

    @property
    def vocab_size(self) -> int:
        return self.files[0].vocab_size

    def read(self, start: int, end: int) -> np.ndarray:
        """Tokens [start, end) of the stream as int64."""
        return read_span(self.parts, self.part_offsets, start, end)

    def documents_in(self, start: int, end: int) -> list[tuple[str, DocumentSpan]]:
        """(folder, span in stream positions) for every document touching [start, end)."""
        found = []
        for f, lo in zip(self.files, self.starts.tolist()):
            if start < lo + f.num_tokens and end > lo:
                for span in f.documents_in(max(start, lo) - lo, min(end, lo + f.num_tokens) - lo):
                    found.append((str(f.folder), replace(span, start=span.start + lo, end=span.end + lo)))
        return found


@dataclass
class Batch:
    inputs: torch.Tensor  # (B, T) int64
    targets: torch.Tensor  # (B, T) int64, IGNORE_INDEX where the loss is masked
    instances: np.ndarray  # (B,) instance indices of these rows, for tracing back to documents
    n_masked_instances: int  # instances whose loss the repetition filter masked
    step_instances: np.ndarray | None = None
    """(global batch,) every instance of the optimizer step, on every rank (this rank's rows
    are a slice of it): what `batch_crc` and `inspect-batch` describe."""
    content_crc: int | None = None
    """CRC-32 of the tokens of every instance of the step (`content_crc`), where the loader
    was asked for it (rank 0): a witness of the content, as `batch_crc` is of the order."""

    @property
    def counts(self) -> torch.Tensor:
        """[counted target tokens, masked instances] of these rows, as one int64 tensor (one
        all-reduce gives the global batch's totals)."""
        return torch.tensor([int((self.targets != IGNORE_INDEX).sum()), self.n_masked_instances])

    def pin_memory(self) -> Batch:
        return replace(self, inputs=self.inputs.pin_memory(), targets=self.targets.pin_memory())


class InstanceDataset:
    """Fixed-length instances over a `TokenStream`, in a seeded per-epoch order."""

    def __init__(self, stream: TokenStream, seq_len: int, *, seed: int, mask_repetitions: bool = True):
        self.stream = stream
        self.seq_len = seq_len
        self.seed = seed
        self.mask_repetitions = mask_repetitions
        self.num_instances = (stream.num_tokens - 1) // seq_len
        if self.num_instances < 1:
            raise LmforgeError(
                f"data: {stream.num_tokens} tokens make no instance of seq_len={seq_len} (+1 target); "
                "add data or lower seq_len"
            )
        self._order_cache: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        """Permutation of instance indices for `epoch`: f(seed, epoch, data fingerprint)."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            key = hashlib.sha256(f"{self.seed}/{epoch}/{self.stream.fingerprint}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(key[:8], "little"))
            self._order_cache = (epoch, rng.permutation(self.num_instances))
        return self._order_cache[1]

    def instances_at(self, position: int, count: int) -> np.ndarray:
        """Indices of the `count` instances starting at global position `position` (crossing
        epochs as needed)."""
        out = np.empty(count, dtype=np.int64)
        for k in range(count):
            epoch, offset = divmod(position + k, self.num_instances)
            out[k] = self.order(epoch)[offset]
        return out

    def tokens(self, instance: int) -> np.ndarray:
        start = instance * self.seq_len
        return self.stream.read(start, start + self.seq_len + 1)

    def content_crc(self, instances: np.ndarray) -> int:
        """CRC-32 of the instances' tokens (each its seq_len + 1 ids, as int64, in the given
        order): what a release's `content_crc` is, reproducible with numpy and zlib alone."""
        crc = 0
        for i in instances:
            crc = zlib.crc32(np.ascontiguousarray(self.tokens(int(i)), dtype=np.int64).tobytes(), crc)
        return crc

    def token_range(self, instance: int) -> tuple[int, int]:
        start = instance * self.seq_len
        return start, start + self.seq_len + 1

    def batch(self, instances: np.ndarray) -> Batch:
        rows = np.stack([self.tokens(int(i)) for i in instances])  # (B, T + 1)
        inputs = torch.from_numpy(rows[:, :-1].copy())
        targets = torch.from_numpy(rows[:, 1:].copy())
        masked = 0
        if self.mask_repetitions:
            for b in range(len(rows)):
                if is_repetitive(rows[b]):
                    targets[b] = IGNORE_INDEX  # OLMo 2: such instances teach nothing and cause spikes
                    masked += 1
        return Batch(inputs, targets, instances, masked)


class BatchLoader:
    """Yields this rank's slice of each global batch of `batch_size` instances, from
    `position` on. `position` (instances of the global order consumed by finished steps) is
    the whole loader state a checkpoint needs, and it does not depend on the world size.

    With `prefetch` > 0 a background thread reads the next batches (memmap reads, repetition
    mask, pinning) while the current step computes; batches are a pure function of the
    position, so prefetching changes nothing but timing.
    """

    def __init__(self, dataset: InstanceDataset, batch_size: int, position: int = 0, *, rank: int = 0,
                 world_size: int = 1, prefetch: int = 0, pin_memory: bool = False, content_crc: bool = False):
        if batch_size % world_size:
            raise LmforgeError(
                f"a global batch of {batch_size} instances cannot be split evenly over {world_size} ranks; "
                f"use a world size that divides {batch_size}, or change trainer.batch_tokens"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.position = position
        self.rank, self.world_size = rank, world_size
        self.prefetch, self.pin_memory = prefetch, pin_memory
        self.with_content_crc = content_crc  # reads the whole step's tokens: one rank is enough

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.world_size

    def batch_at(self, position: int) -> Batch:
        """This rank's rows of the global batch that starts at `position`."""
        everything = self.dataset.instances_at(position, self.batch_size)
        per = self.local_batch_size
        batch = self.dataset.batch(everything[self.rank * per : (self.rank + 1) * per])
        batch.step_instances = everything
        if self.with_content_crc:
            batch.content_crc = self.dataset.content_crc(everything)
        return batch.pin_memory() if self.pin_memory else batch

    def __iter__(self) -> Iterator[Batch]:
        if self.prefetch <= 0:
            while True:
                batch = self.batch_at(self.position)
                self.position += self.batch_size
                yield batch
        reader = _Prefetcher(self.batch_at, self.position, self.batch_size, self.prefetch)
        try:
            while True:
                batch = reader.next()
                self.position += self.batch_size  # counted when handed over, as without prefetch
                yield batch
        finally:
            reader.stop()

    def state_dict(self) -> dict:
        return {"position": self.position, "data_fingerprint": self.dataset.stream.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        if state["data_fingerprint"] != self.dataset.stream.fingerprint:
            raise LmforgeError(
                "the checkpoint was trained on different data (fingerprint "
                f"{state['data_fingerprint']} vs {self.dataset.stream.fingerprint}); resume with the same data"
            )
        self.position = state["position"]


class _Prefetcher:
    """A daemon thread filling a bounded queue with batch_at(position), batch_at(position + step), …
    An exception in the thread is re-raised in the consumer."""

    def __init__(self, batch_at, position: int, step: int, depth: int):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(batch_at, position, step), daemon=True,
                                       name="lmforge-prefetch")
        self.thread.start()

    def _run(self, batch_at, position: int, step: int) -> None:
        while not self.stopped.is_set():
            try:
                item: object = batch_at(position)
            except BaseException as e:  # handed to the consumer, which raises it
                item = e
            while not self.stopped.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return
            position += step

    def next(self) -> Batch:
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        """End the thread and wait for it: a daemon thread still inside torch when the
        interpreter exits can abort the process."""
        self.stopped.set()
        self.thread.join()
