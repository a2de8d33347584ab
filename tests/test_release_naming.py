"""Revision names reproduce real OLMo branch names from their step and batch size.

Each name below was found in a public source (noted per group). Batch sizes are tokens per
optimizer step: instances × sequence length. 4,194,304 = 1024 × 4096 (OLMo 2 7B) or 2048 × 2048
(OLMo 1); 8,388,608 = 2048 × 4096 (OLMo 2 13B, 32B); 2,097,152 = 512 × 4096 (OLMo 2 1B: found by
arithmetic, 4001 × 10^9 / 1,907,359 steps ≈ 2.0977M, and it reproduces every 1B name below);
4,423,680 = 2160 × 2048 (OLMo-7B).
"""

import pytest

from lmforge.errors import LmforgeError
from lmforge.release.naming import UNITS, choose_unit, revision_name

B7, B13, B1, OLMO7B = 4_194_304, 8_388_608, 2_097_152, 4_423_680

# Rounded up (ceil), the rule lmforge follows.
CEIL = [
    # allenai/OLMo README.md, OLMo 2 "Stage 1" table (links to the HF branches)
    ("stage1-", 928646, B7, "stage1-step928646-tokens3896B"),     # OLMo-2-1124-7B
    ("stage1-", 596057, B13, "stage1-step596057-tokens5001B"),    # OLMo-2-1124-13B
    # allenai/OLMo-core src/scripts/official/OLMo2/README.md (OLMo-2-0325-32B)
    ("stage1-", 721901, B13, "stage1-step721901-tokens6056B"),
    ("stage2-ingredient1-", 11921, B13, "stage2-ingredient1-step11921-tokens101B"),
    ("stage2-ingredient2-", 11921, B13, "stage2-ingredient2-step11921-tokens101B"),
    ("stage2-ingredient3-", 35763, B13, "stage2-ingredient3-step35763-tokens301B"),
    # OLMo-2-0425-1B branches quoted in public notes and eval READMEs (code index, find_string
    # "stage1-step"; e.g. "allenai/OLMo-2-0425-1B,revision=stage1-step10000-tokens21B")
    ("stage1-", 1907359, B1, "stage1-step1907359-tokens4001B"),
    ("stage1-", 10000, B1, "stage1-step10000-tokens21B"),
    ("stage1-", 40000, B1, "stage1-step40000-tokens84B"),
    ("stage1-", 140000, B1, "stage1-step140000-tokens294B"),
    ("stage2-ingredient2-", 23852, B1, "stage2-ingredient2-step23852-tokens51B"),
    ("stage1-", 0, B1, "stage1-step0-tokens0B"),
    # OLMo-2-1124-7B intermediate branches, as named by derived models on the hub
    # (https://huggingface.co/models?other=base_model:finetune:allenai/OLMo-2-1124-7B)
    ("stage1-", 928000, B7, "stage1-step928000-tokens3893B"),
    ("stage1-", 865000, B7, "stage1-step865000-tokens3629B"),
]

# Rounded down: OLMo 2 7B/13B stage 2, trained with the first OLMo trainer.
FLOOR = [
    # allenai/OLMo README.md, "Stage 2 for the 7B" / "Stage 2 for the 13B" tables
    ("stage2-ingredient1-", 11931, B7, "stage2-ingredient1-step11931-tokens50B"),   # 50.04
    ("stage2-ingredient3-", 11931, B7, "stage2-ingredient3-step11931-tokens50B"),
    ("stage2-ingredient1-", 11931, B13, "stage2-ingredient1-step11931-tokens100B"),  # 100.08
    ("stage2-ingredient4-", 35773, B13, "stage2-ingredient4-step35773-tokens300B"),  # 300.09
]

# Rounded to nearest: OLMo 1 (no stage prefix).
NEAREST = [
    # huggingface.co/allenai/OLMo-1B revisions.txt
    (117850, B7, "step117850-tokens494B"),    # 494.30
    (337700, B7, "step337700-tokens1416B"),   # 1416.42
    (20000, B7, "step20000-tokens84B"),       # 83.89
    # huggingface.co/allenai/OLMo-7B-Twin-2T revisions.txt
    (2000, B7, "step2000-tokens8B"),          # 8.39
    (33600, B7, "step33600-tokens141B"),      # 140.93
    # huggingface.co/allenai/OLMo-7B revisions.txt; reeceshuttle/deep-learning-proj constants.py
    (2000, OLMO7B, "step2000-tokens9B"),      # 8.85
    (13000, OLMO7B, "step13000-tokens58B"),   # 57.51
    (550000, OLMO7B, "step550000-tokens2433B"),
]


@pytest.mark.parametrize("prefix,step,batch,name", CEIL)
def test_real_olmo2_names_round_up(prefix, step, batch, name):
    assert revision_name(step, batch, "B", prefix=prefix) == name


@pytest.mark.parametrize("prefix,step,batch,name", FLOOR)
def test_real_olmo2_stage2_names_round_down(prefix, step, batch, name):
    assert revision_name(step, batch, "B", prefix=prefix, rounding="floor") == name
    assert revision_name(step, batch, "B", prefix=prefix) != name  # ceil would say one more


@pytest.mark.parametrize("step,batch,name", NEAREST)
def test_real_olmo1_names_round_to_nearest(step, batch, name):
    assert revision_name(step, batch, "B", rounding="nearest") == name


def test_units_are_decimal():
    # the 7B's last stage-1 step is 3895.02 × 10^9 tokens but only 3627.5 × 2^30: the real
    # branch, tokens3896B, is the decimal one
    assert UNITS == {"B": 10**9, "M": 10**6, "K": 10**3}
    assert -(-928646 * B7 // 2**30) == 3628
    assert revision_name(928646, B7, "B") == "step928646-tokens3896B"


@pytest.mark.parametrize("total,unit", [
    (928646 * B7, "B"), (10**9, "B"), (10**9 - 1, "M"), (2_000_000, "M"), (1000, "K"), (999, "K"), (0, "K"),
])
def test_choose_unit(total, unit):
    assert choose_unit(total) == unit


def test_tiny_run_names():
    unit = choose_unit(100 * 16384)   # 1.6M tokens
    assert unit == "M"
    assert revision_name(100, 16384, unit) == "step100-tokens2M"
    assert revision_name(100, 16384, unit, prefix="stage2-") == "stage2-step100-tokens2M"
    assert revision_name(1, 512, "K") == "step1-tokens1K"


def test_exact_integer_arithmetic():
    # a float division would put 10^18 + 1 tokens at exactly 10^9 B
    assert revision_name(10**9 + 1, 10**9, "B") == f"step{10**9 + 1}-tokens{10**9 + 1}B"
    assert revision_name(1, 10**18 + 1, "B") == "step1-tokens1000000001B"


@pytest.mark.parametrize("kwargs,arg", [
    (dict(step=-1), "step"), (dict(step=1.5), "step"), (dict(step=True), "step"),
    (dict(batch_tokens=0), "batch_tokens"), (dict(unit="G"), "unit"), (dict(unit="b"), "unit"),
    (dict(prefix="stage1"), "prefix"), (dict(prefix="stage 1-"), "prefix"), (dict(prefix="a/b-"), "prefix"),
    (dict(rounding="round"), "rounding"),
])
def test_errors_name_the_argument(kwargs, arg):
    args = dict(step=100, batch_tokens=16384, unit="M") | kwargs
    with pytest.raises(LmforgeError, match=rf"^{arg}="):
        revision_name(**args)


def test_choose_unit_rejects_negative():
    with pytest.raises(LmforgeError, match="^total_tokens="):
        choose_unit(-1)
