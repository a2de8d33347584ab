"""Typed configs: bad input fails with one message naming the field and what is allowed."""

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from lmforge.config import Config, apply_overrides
from lmforge.errors import ConfigError
from lmforge.model import ModelConfig

BASE = dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, mlp_hidden=96)


def test_unknown_field_is_named_with_suggestion():
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_dict({**BASE, "d_modle": 64})
    msg = str(e.value)
    assert "d_modle" in msg and "did you mean 'd_model'" in msg and "\n" not in msg


@pytest.mark.parametrize("field", ["d_model", "n_layers", "n_heads", "mlp_hidden", "vocab_size"])
def test_negative_size_names_field(field):
    with pytest.raises(ConfigError, match=rf"^{field}: must be a positive integer, got -3$"):
        ModelConfig.from_dict({**BASE, field: -3})


def test_heads_must_divide_width():
    with pytest.raises(ConfigError, match=r"^n_heads: n_heads=5 must divide d_model=64"):
        ModelConfig.from_dict({**BASE, "n_heads": 5})
    with pytest.raises(ConfigError, match=r"^n_kv_heads: n_kv_heads=3 must divide n_heads=4"):
        ModelConfig.from_dict({**BASE, "n_kv_heads": 3})


def test_wrong_type_names_field_and_value():
    with pytest.raises(ConfigError, match=r"^n_layers: expected an integer, got 'two'$"):
        ModelConfig.from_dict({**BASE, "n_layers": "two"})
    with pytest.raises(ConfigError, match=r"^tie_embeddings: expected true or false"):
        ModelConfig.from_dict({**BASE, "tie_embeddings": "maybe"})


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown preset 'olmo2-2b'; choose one of tiny, small, olmo2-190m"):
        ModelConfig.from_dict({"preset": "olmo2-2b"})


def test_preset_with_overrides_and_round_trip():
    cfg = ModelConfig.from_dict({"preset": "olmo2-1b", "n_layers": 2, "rope_theta": "1e4"})
    assert (cfg.d_model, cfg.n_layers, cfg.rope_theta) == (2048, 2, 10_000.0)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@dataclasses.dataclass(kw_only=True)
class Inner(Config):
    schedule: Literal["cosine", "wsd"] = "cosine"
    steps: int = 10


@dataclasses.dataclass(kw_only=True)
class Outer(Config):
    inner: Inner = dataclasses.field(default_factory=Inner)
    name: str = "run"


def test_nested_errors_carry_the_dotted_path():
    with pytest.raises(ConfigError, match=r"^inner.schedule: 'linear' is not allowed; choose one of 'cosine', 'wsd'$"):
        Outer.from_dict({"inner": {"schedule": "linear"}})
    with pytest.raises(ConfigError, match=r"^inner.stpes: unknown field of Inner; did you mean 'steps'\?"):
        Outer.from_dict({"inner": {"stpes": 3}})


def test_dotted_overrides_parse_values_as_yaml(tmp_path):
    data = apply_overrides({"inner": {"steps": 1}}, ["--inner.steps=20", "name=demo"])
    assert data == {"inner": {"steps": 20}, "name": "demo"}
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  schedule: wsd\n")
    assert Outer.from_yaml(path, ["--inner.steps=5"]).inner == Inner(schedule="wsd", steps=5)
    path.write_text("inner: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c.yaml: line \d+ is not valid YAML"):
        Outer.from_yaml(path)


def test_cli_reports_user_errors_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lmforge.cli", "export", str(tmp_path / "nope"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "does not exist" in result.stderr


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_run_configs_load(path):
    from lmforge.train.config import RunConfig

    cfg = RunConfig.from_yaml(path)
    cfg.check_world_size(1)
    assert cfg.max_steps > 0


def test_parallel_settings_are_checked():
    from lmforge.parallel.config import ParallelConfig

    with pytest.raises(ConfigError, match=r"^parallel.activation_checkpointing: 'some' is not allowed; choose one of "
                                          r"'none', 'full', 'every_k'"):
        ParallelConfig.from_dict({"activation_checkpointing": "some"}, where="parallel.")
    with pytest.raises(ConfigError, match=r"^parallel.dp_shard: must be ≥ 1, or -1"):
        ParallelConfig(dp_shard=0)
