"""`make demo` end to end in its fast mode: learns below the unigram entropy, exports, and
transformers generates the same text."""

import pytest

from lmforge.demo import main


@pytest.mark.slow
def test_demo_fast_mode(tmp_path, capsys):
    assert main(["--fast", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "texts match" in out
    assert (tmp_path / "run" / "loss.png").stat().st_size > 10_000
    assert (tmp_path / "hf" / "model.safetensors").exists()
    assert "   verified: " in out and (tmp_path / "release" / "revisions" / "step30-tokens123K").is_dir()
