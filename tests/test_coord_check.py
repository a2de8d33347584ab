"""µP coordinate check: activation sizes flat in width under mup, growing under standard.

Widths 64–512 (the issue's acceptance range), 2 layers of 4 heads, seq 32, micro-batch 8,
5 Adam steps at lr 1e-2, one CPU thread; about 20 s for the file on 2 shared cores.
"""

import json

import pytest
import yaml

from lmforge.cli import main
from lmforge.experiments.coord_check import KINDS, coord_check, spread, values
from lmforge.train.config import RunConfig

WIDTHS = [64, 128, 256, 512]
LR = 1e-2


def run_config(token_data, tmp_path, **model) -> RunConfig:
    return RunConfig.from_dict(config_dict(token_data, tmp_path, **model))


def config_dict(token_data, tmp_path, **model) -> dict:
    return {
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_hidden": 192, "vocab_size": 512,
                  "max_seq_len": 32, **model},
        "data": {"train": [str(token_data / "train")], "seq_len": 32},
        "optim": {"lr": LR},
        "trainer": {"run_dir": str(tmp_path / "run"), "batch_tokens": 256, "micro_batch_size": 8, "max_steps": 5},
    }


def increasing(xs: list[float]) -> bool:
    return all(a < b for a, b in zip(xs, xs[1:]))


def test_standard_parametrization_grows_with_width(token_data, tmp_path, one_thread):
    result = coord_check(run_config(token_data, tmp_path), WIDTHS, steps=5, seeds=1)
    assert result["widths"] == WIDTHS and result["mlp_hidden"] == [192, 384, 768, 1536]
    assert len(result["rms"]["logits"][0]) == 6  # steps 0 … 5
    assert all(v == 0 for v in values(result, "logits", 0, "delta"))  # no change before the first update
    # Adam moves every coordinate by ~lr, so a d-wide dot product moves by ~d·lr: the change
    # of the logits and of the hidden sublayers' outputs grows with width.
    for layer in ["logits", "attn", "mlp", *(f"blocks.{i}.{s}" for i in range(2) for s in ("attn", "mlp"))]:
        change = values(result, layer, -1, "delta")
        assert increasing(change), (layer, change)
        assert spread(result, layer, -1, "delta") > 2, (layer, change)


def test_mup_is_flat_across_widths(token_data, tmp_path, one_thread):
    cfg = run_config(token_data, tmp_path, parametrization="mup", mup_base_d_model=WIDTHS[0])
    result = coord_check(cfg, WIDTHS, steps=5, seeds=3)
    assert result["parametrization"] == "mup"
    # The acceptance criterion: after 5 steps every layer's activation RMS, and the RMS
    # of its change from init, varies by less than 2x across widths 64–512.
    spreads = {(layer, stat): spread(result, layer, -1, stat)
               for layer in result["layers"] for stat in ("rms", "delta")}
    worst = max(spreads, key=spreads.get)
    assert spreads[worst] < 2, (worst, spreads[worst], values(result, worst[0], -1, worst[1]))
    for kind in KINDS:
        assert spread(result, kind, -1, "delta") < 2


def test_cli_writes_json_png_and_table(token_data, tmp_path, one_thread, capsys):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(config_dict(token_data, tmp_path)))
    out = tmp_path / "cc"
    code = main(["analyze", "coord-check", str(config), "--widths", "32,64", "--steps", "2", "--seeds", "1",
                 "--lr", "1e-3", "--out", str(out), "--set", "model.parametrization=mup",
                 "--set", "model.mup_base_d_model=32"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "coordinate check: mup, lr 0.001" in printed and "logits" in printed
    result = json.loads((out / "coord_check.json").read_text())
    assert result["widths"] == [32, 64] and result["steps"] == 2 and result["lr"] == 1e-3
    assert result["config"]["model"]["parametrization"] == "mup"
    assert set(result["rms"]) == set(result["layers"]) and len(result["rms"]["blocks.1.mlp"][1]) == 3
    assert (out / "coord_check.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("widths", "needle"),
    [("64", "at least two widths"), ("64,66", "width 66"), ("64,68", "width 68"), ("64,x", "comma-separated")],
)
def test_cli_bad_widths_is_one_line(token_data, tmp_path, capsys, widths, needle):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(config_dict(token_data, tmp_path)))
    code = main(["analyze", "coord-check", str(config), "--widths", widths, "--out", str(tmp_path / "cc")])
    assert code != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--widths" in lines[0] and needle in lines[0], err
    assert not (tmp_path / "cc").exists()


MOE = {"moe_num_experts": 4, "moe_top_k": 2}
"""A mixture of experts in place of each MLP: its router and experts are hidden matrices for µP."""


def test_moe_mlp_is_flat_under_mup_and_grows_under_standard(token_data, tmp_path, one_thread):
    widths = WIDTHS[:3]
    mup = coord_check(run_config(token_data, tmp_path, parametrization="mup", mup_base_d_model=64, **MOE), widths,
                      steps=5, seeds=1)  # fmt: skip
    standard = coord_check(run_config(token_data, tmp_path, **MOE), widths, steps=5, seeds=1)
    assert spread(mup, "mlp", -1, "delta") < 2 and spread(mup, "logits", -1, "delta") < 2
    assert increasing(values(standard, "mlp", -1, "delta")) and spread(standard, "mlp", -1, "delta") > 2
