"""Writing files and folders so that readers never see them half-done."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: Path, data: bytes | str) -> None:
    """Replace `path` with `data` in one rename (a temp file beside it first)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


@contextmanager
def staged_folder(out_dir: Path) -> Iterator[Path]:
    """A hidden sibling folder to fill; when the block succeeds it replaces `out_dir`, when it
    fails it is deleted, so `out_dir` is only ever absent, the old version, or complete."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield staging
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
