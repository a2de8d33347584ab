"""Writing files and folders so that readers never see them half-done; hashing files.

Everything lmforge writes gets the mode the user's umask gives a plain `open`/`mkdir`
(0644 files and 0755 folders under umask 022), so a team can share checkpoints, exports and
data. The traps are writers that stage through a private temporary file and rename it:
`tempfile.mkdtemp`/`mkstemp` create 0700/0600 on purpose and a rename keeps that mode, and
safetensors' `save_file` (0.8) leaves 0600 the same way. A staged folder is given its umask
mode before it is filled, and such a file after it is written (`give_umask_mode`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: Path, data: bytes | str, *, durable: bool = False) -> None:
    """Replace `path` with `data` in one rename (a temp file beside it first). `durable`
    also fsyncs the file before the rename and the folder after it, so a power cut leaves
    the old or the new content, never an empty file (checkpoint pointers need this)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def staged_folder(out_dir: Path) -> Iterator[Path]:
    """A hidden sibling folder to fill; when the block succeeds it replaces `out_dir`, when it
    fails it is deleted, so `out_dir` is only ever absent, the old version, or complete."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    give_umask_mode(staging)  # mkdtemp's 0700 would survive the rename
    try:
        yield staging
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def give_umask_mode(path: Path) -> None:
    """The mode a plain `open`/`mkdir` would have given `path` (0644 / 0755 under umask 022)."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~current_umask())


def current_umask() -> int:
    """The process's umask, read without changing it where the kernel tells it (Linux ≥ 4.7:
    /proc/self/status); elsewhere set and restored at once (`os.umask` has no getter)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (wheels, input files checked on resume)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
