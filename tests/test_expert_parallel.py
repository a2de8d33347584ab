"""Expert parallelism on CPU (gloo), started by torchrun as a user would: EP = 2 on 2 ranks and
EP = 2 × FSDP 2 on 4 ranks reproduce one process's loss, auxiliary losses and gradient norm; the
expert gradients have one process's scale (pytorch#160285's trap); a checkpoint of an EP run
resumes on one plain process on the same curve."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import lmforge_train, rows, torchrun, write

from lmforge.errors import ConfigError
from lmforge.parallel.config import ParallelConfig
from lmforge.parallel.mesh import check_ep
from lmforge.train.config import RunConfig
from lmforge.train.trainer import Trainer

TESTS = Path(__file__).parent
KEYS = ("loss", "z_loss", "grad_norm", "moe_lb_loss", "moe_router_z_loss", "val_loss")


def config(token_data, run_dir, **parallel):
    return {
        # 4 experts of 2 layers, top-2: every EP rank receives rows from every rank
        "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_hidden": 128,
                  "moe_num_experts": 4, "moe_top_k": 2, "moe_hidden": 32},
        "data": {"train": [str(token_data / "train")], "validation": [str(token_data / "val")], "seq_len": 64},
        "optim": {"lr": 3e-3, "warmup_steps": 4},
        "trainer": {"run_dir": str(run_dir), "batch_tokens": 512, "micro_batch_size": 2, "max_steps": 16,
                    "eval_every": 4, "eval_batches": 3, "checkpoint_every": 4, "keep_checkpoints": 0},
        "parallel": {"loss_chunk_tokens": 48, **parallel},
    }


def assert_same_curve(reference, other, rel=1e-5):
    assert [r["step"] for r in reference] == [r["step"] for r in other]  # no step lost, none twice
    for a, b in zip(reference, other):
        assert a.get("batch_crc") == b.get("batch_crc"), a["step"]
        for key in KEYS:
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=rel), (a["step"], key, a[key], b[key])
        if "expert_share" in a:
            assert b["expert_share"] == pytest.approx(a["expert_share"], abs=1e-6), a["step"]


@pytest.fixture(scope="module")
def reference(token_data, tmp_path_factory):
    """One process, no process group, all experts local."""
    run_dir = tmp_path_factory.mktemp("moe_reference") / "run"
    Trainer(RunConfig.from_dict(config(token_data, run_dir))).fit()
    return rows(run_dir)


@pytest.mark.distributed
@pytest.mark.slow
def test_ep_two_ranks_with_compile_match_one_process_and_resume_on_one(token_data, tmp_path, reference):
    """EP = 2 on 2 ranks (per-block compile on: the exchange runs outside the graph), a rank
    SIGKILLed after step 12; the run resumes from step 12 on one plain process."""
    run_dir = tmp_path / "run"
    cfg = write(tmp_path / "c.yaml", config(token_data, run_dir, ep=2, compile=True))
    killed = torchrun(2, str(TESTS / "dist_worker.py"), str(cfg), "--kill-rank=1", "--kill-after-step=12", check=False)
    assert killed.returncode != 0, "the run was not killed"
    assert "expert parallel over 2 ranks (2 of 4 experts per rank in 2 layers)" in killed.stderr
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-12"
    assert_same_curve(reference[:13], rows(run_dir))  # steps 0-12 on 2 ranks
    export_loads_in_transformers(run_dir / "checkpoints" / "step-12", tmp_path / "hf")
    resumed = lmforge_train(1, cfg, "--parallel.ep=1", "--parallel.compile=false")
    assert f"resumed from {run_dir / 'checkpoints' / 'step-12'} (step 12" in resumed.stderr
    assert_same_curve(reference, rows(run_dir))


def export_loads_in_transformers(step: Path, out: Path) -> None:
    """A checkpoint written by EP ranks exports whole: transformers' FlexOlmo gives our logits."""
    from transformers import AutoModelForCausalLM

    from lmforge.cli import main
    from lmforge.model.io import load_model

    assert main(["export", str(step), str(out)]) == 0
    ours = load_model(step).eval()
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "FlexOlmoForCausalLM"
    tokens = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, ours(tokens)[..., :512], rtol=0, atol=1e-5)


@pytest.mark.distributed
@pytest.mark.slow
def test_ep_two_by_fsdp_two_on_four_ranks_with_activation_checkpointing(token_data, tmp_path, reference):
    data = config(token_data, tmp_path / "run", ep=2, activation_checkpointing="full")
    out = lmforge_train(4, write(tmp_path / "c.yaml", data))
    assert "expert parallel over 2 ranks" in out.stderr and "FSDP2 over mesh 4" in out.stderr
    assert_same_curve(reference, rows(tmp_path / "run"))


@pytest.mark.distributed
@pytest.mark.slow
def test_expert_gradients_have_the_one_process_scale(token_data, tmp_path):
    """The raw gradients of one step, gathered: with EP each expert's gradient sums the tokens
    of its EP group, and FSDP averages over only the ranks holding that expert; unless corrected
    the expert gradients come out ep = 2 times too large (the dense ones stay right)."""
    cfg = write(tmp_path / "c.yaml", config(token_data, tmp_path / "run"))
    worker = str(TESTS / "ep_grads_worker.py")
    one = subprocess.run([sys.executable, worker, str(cfg), str(tmp_path / "one.safetensors")],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun(4, worker, str(cfg), str(tmp_path / "ep.safetensors"), "--parallel.ep=2")
    single, ep = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "ep.safetensors")
    assert single.keys() == ep.keys() and any(".experts." in k for k in single)
    for name, grad in single.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(ep[name], grad, rtol=1e-5, atol=1e-5 * float(grad.abs().max()), msg=name)


# -- bad settings: one line naming the field ----------------------------------------------------------


def test_ep_settings_that_cannot_work_name_the_field(token_data, tmp_path):
    base = config(token_data, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^parallel.ep: 3 does not divide model.moe_num_experts=4; pick a divisor"):
        RunConfig.from_dict({**base, "parallel": {"ep": 3}})
    dense = {**base, "model": {**base["model"], "moe_num_experts": 0}, "parallel": {"ep": 2}}
    with pytest.raises(ConfigError, match=r"^parallel.ep: 2 spreads experts over ranks, but the model is dense"):
        RunConfig.from_dict(dense)
    with pytest.raises(ConfigError, match=r"^parallel.ep: must be ≥ 1"):
        ParallelConfig.from_dict({"ep": 0})
    with pytest.raises(ConfigError, match=r"^parallel.ep: expert parallelism runs on plain FSDP meshes; set "
                                          r"parallel.dp_replicate: 1"):
        ParallelConfig.from_dict({"ep": 2, "dp_replicate": 2})
    with pytest.raises(ConfigError, match=r"^parallel.ep=4 does not divide the world size 6 .*pick a divisor of 6"):
        check_ep(ParallelConfig(ep=4), 6)
    one_process = subprocess.run([sys.executable, "-m", "lmforge", "train", str(write(tmp_path / "c.yaml", {
        **base, "parallel": {"ep": 2}}))], capture_output=True, text=True, timeout=120)
    assert one_process.returncode != 0
    (line,) = [ln for ln in one_process.stderr.splitlines() if ln.strip()]
    assert "parallel.ep=2 does not divide the world size 1" in line

