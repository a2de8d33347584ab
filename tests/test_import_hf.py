"""Continuing a released model: `lmforge import` of a transformers OLMo 2 folder, `--init-from`
a transformers folder (or the imported checkpoint), against transformers' own numbers."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lmforge.cli import main
from lmforge.data.dataset import InstanceDataset, TokenStream
from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import LmforgeError
from lmforge.model.hf import from_hf, import_hf
from lmforge.model.io import load_model, load_model_tokenizer
from lmforge.train.config import RunConfig
from lmforge.train.trainer import Trainer

transformers = pytest.importorskip("transformers")

SHAPE = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


def hf_folder(root, token_data, *, kv_heads: int, dtype=torch.float32):
    """A model transformers itself made and saved (`save_pretrained`), its norms moved off 1 so
    that a mixed-up norm mapping shows, with the tokenizer beside it."""
    torch.manual_seed(kv_heads)
    config = transformers.Olmo2Config(**SHAPE, num_key_value_heads=kv_heads, max_position_embeddings=128,
                                      rope_theta=500_000.0, rms_norm_eps=1e-6,  # OLMo 2's, as lmforge's defaults
                                      eos_token_id=0, pad_token_id=1, initializer_range=0.05)
    model = transformers.Olmo2ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model = model.to(dtype).eval()
    model.save_pretrained(root)
    Tokenizer.load(token_data / "tokenizer.json").save_hf(root)
    return root, model


def run_config(token_data, run_dir, init_from, **model):
    return RunConfig.from_dict({
        "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_hidden": 128, **model},
        "data": {"train": [str(token_data / "train")], "seq_len": 64},
        "optim": {"lr": 1e-3, "warmup_steps": 0, "schedule": "linear"},
        "trainer": {"run_dir": str(run_dir), "batch_tokens": 512, "micro_batch_size": 4, "max_steps": 2,
                    "checkpoint_every": 100, "init_from": str(init_from)},
        "tokenizer": str(token_data / "tokenizer.json"),
    })


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_import_then_export_round_trips_bit_exactly(token_data, tmp_path, dtype, capsys):
    src, _ = hf_folder(tmp_path / "hf", token_data, kv_heads=2, dtype=dtype)
    assert main(["import", str(src), str(tmp_path / "ours")]) == 0
    assert "kv" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    original, back = load_file(src / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(original) == sorted(back)
    for name, tensor in original.items():
        assert back[name].dtype == tensor.dtype == dtype and torch.equal(back[name], tensor), name
    theirs, ours = (json.loads((f / "config.json").read_text()) for f in (src, tmp_path / "back"))
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings"):
        assert ours[key] == theirs[key], key
    # The imported checkpoint computes the logits transformers computes from the folder (both in
    # fp32: bf16 matmuls differ between kernels), and keeps its tokenizer and provenance.
    imported = load_model(tmp_path / "ours")
    assert imported.embed.weight.dtype == dtype
    reference = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ids = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(imported.float()(ids), reference(ids).logits, atol=1e-5, rtol=0)
    assert load_model_tokenizer(tmp_path / "ours").fingerprint == Tokenizer.load(src).fingerprint
    source = json.loads((tmp_path / "ours" / "source.json").read_text())
    assert source["architectures"] == ["Olmo2ForCausalLM"] and "model.safetensors" in source["files"]


@pytest.mark.parametrize("kv_heads, model", [(2, {"n_kv_heads": 2}), (4, {})], ids=["gqa", "mha-unspelled"])
@pytest.mark.parametrize("via", ["hf-folder", "imported"])
def test_init_from_a_transformers_model_starts_at_its_loss(token_data, tmp_path, kv_heads, model, via):
    """The first step's loss is transformers' loss (its own `labels=` path) on that batch. The
    MHA case writes no n_kv_heads while the folder says 4: the same shape, no complaint."""
    src, hf = hf_folder(tmp_path / "hf", token_data, kv_heads=kv_heads)
    start = src if via == "hf-folder" else import_hf(src, tmp_path / "imported")
    cfg = run_config(token_data, tmp_path / "run", start, **model)
    Trainer(cfg).fit()
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    dataset = InstanceDataset(TokenStream(cfg.data.train), cfg.data.seq_len, seed=cfg.trainer.seed)
    instances = dataset.instances_at(0, cfg.batch_instances)
    assert dataset.batch(instances).n_masked_instances == 0
    rows = torch.from_numpy(__import__("numpy").stack([dataset.tokens(int(i)) for i in instances]).astype("int64"))
    with torch.no_grad():
        expected = hf(input_ids=rows, labels=rows).loss
    assert first["step"] == 1 and first["loss"] == pytest.approx(float(expected), rel=1e-5)
    if via == "imported":  # the imported model and the run's last checkpoint are one model, however spelled
        from lmforge.model.soup import soup

        soup([start, tmp_path / "run" / "checkpoints" / "step-2"], tmp_path / "soup")


def test_refused_starts_say_the_fix_and_leave_no_run_folder(token_data, tmp_path, capsys):
    src, _ = hf_folder(tmp_path / "hf", token_data, kv_heads=2)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(token_data, tmp_path / "run", src).to_dict()))
    capsys.readouterr()  # save_pretrained's progress bar
    cases = {
        # the run's config says MHA (n_kv_heads unset = 4), the folder holds GQA with 2
        "shape": ([], r"holds a model of another shape \(n_kv_heads: 2 vs 4: checkpoint vs config\); "
                     r"give this run its shape \(--model.n_kv_heads=2\)"),
        "optimizer": (["--model.n_kv_heads=2", "--init-optimizer"], "holds no optimizer state; drop --init-optimizer"),
        "missing": (["--model.n_kv_heads=2", "--init-from", str(tmp_path / "nowhere")], "nowhere does not exist"),
    }
    for name, (extra, message) in cases.items():
        argv = ["train", str(config), *extra]
        if "--init-from" not in extra:
            argv += ["--init-from", str(src)]
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "resume" not in err, (name, err)
        assert __import__("re").search(message, err), (name, err)
        assert not (tmp_path / "run").exists(), name
    assert main(["train", str(config), "--model.n_kv_heads=2", "--init-from", str(src)]) == 0


def test_init_from_a_run_folder_points_at_its_checkpoint(token_data, tmp_path):
    src, _ = hf_folder(tmp_path / "hf", token_data, kv_heads=2)
    first = run_config(token_data, tmp_path / "a", src, n_kv_heads=2)
    Trainer(first.replace(trainer=first.trainer.replace(checkpoint_every=2))).fit()
    with pytest.raises(LmforgeError, match=r"a is a run folder, not a checkpoint; pass one of its checkpoints, "
                                           r"e\.g\. .*a/checkpoints/step-2$"):
        Trainer(run_config(token_data, tmp_path / "b", tmp_path / "a", n_kv_heads=2)).fit()


def test_from_hf_of_a_non_model_folder_names_what_it_is(tmp_path):
    with pytest.raises(LmforgeError, match="does not exist"):
        from_hf(tmp_path / "missing")
