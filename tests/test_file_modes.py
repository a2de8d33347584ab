"""Files a team can share: everything lmforge writes gets the mode the user's umask gives
(0644 / 0755 under 022), temporary files and staged folders included."""

import os
import stat
from pathlib import Path

import pytest
from conftest import tiny_run
from sample_corpus import build_sample_corpus, write_sample_corpus

from lmforge.curate.pipeline import CurateConfig, curate
from lmforge.data.split import ValidationSplit
from lmforge.data.tokenize import tokenize
from lmforge.fsutil import current_umask
from lmforge.model.hf import import_hf, to_hf
from lmforge.model.io import consolidate, load_model, load_model_tokenizer
from lmforge.model.soup import soup
from lmforge.train.config import RunConfig
from lmforge.train.trainer import Trainer


def modes(folder: Path) -> dict[str, tuple[str, int]]:
    """Every entry under `folder` (itself included) → (kind, permission bits)."""
    found = {".": ("dir", stat.S_IMODE(folder.stat().st_mode))}
    for path in folder.rglob("*"):
        found[path.relative_to(folder).as_posix()] = ("dir" if path.is_dir() else "file",
                                                      stat.S_IMODE(path.lstat().st_mode))
    return found


@pytest.fixture
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


@pytest.mark.parametrize("umask", [0o022, 0o027], indirect=True, ids=["022", "027"])
def test_every_output_gets_the_umask_mode(token_data, tmp_path, umask):
    assert current_umask() == umask
    outputs = {}
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_sample_corpus(build_sample_corpus(n_docs=60, near_duplicates=4, exact_duplicates=2, seed=3), corpus,
                        n_files=2)
    tokenize([corpus], str(token_data / "tokenizer.json"), tmp_path / "tokens", workers=1, progress=False)
    outputs["tokenize"] = tmp_path / "tokens"
    tokenize([corpus], str(token_data / "tokenizer.json"), tmp_path / "split", workers=1, progress=False,
             validation=ValidationSplit(fraction=0.2))
    outputs["tokenize --validation"] = tmp_path / "split"
    curate(CurateConfig.from_dict({
        "input": [str(corpus)], "output": str(tmp_path / "curated"), "workers": 1,
        "steps": [{"gopher_quality": {}}, {"minhash_dedup": {}}],
        "tokenize": {"tokenizer": str(token_data / "tokenizer.json"), "validation": 0.2},
    }), progress=False)
    outputs["curate"] = tmp_path / "curated"

    run = tmp_path / "run"
    Trainer(RunConfig.from_dict(tiny_run(token_data, run, keep_checkpoints=1))).fit()
    outputs["run"] = run
    step = run / "checkpoints" / "step-2"
    outputs["export"] = to_hf(load_model(step), tmp_path / "hf", load_model_tokenizer(step))
    outputs["import"] = import_hf(tmp_path / "hf", tmp_path / "imported")
    outputs["consolidate"] = consolidate(step, tmp_path / "consolidated")
    outputs["soup"] = soup([step, tmp_path / "consolidated"], tmp_path / "soup")

    want = {"dir": 0o777 & ~umask, "file": 0o666 & ~umask}
    for name, folder in outputs.items():
        found = modes(Path(folder))
        wrong = {path: oct(mode) for path, (kind, mode) in found.items() if mode != want[kind]}
        assert not wrong, f"{name}: not {oct(want['file'])}/{oct(want['dir'])}: {wrong}"
        assert any(kind == "file" for kind, _ in found.values()), name
