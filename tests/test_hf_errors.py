"""from_hf on folders that are not OLMo 2 models says what is wrong."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmforge.errors import LmforgeError
from lmforge.model import ModelConfig, from_hf, to_hf
from lmforge.model.transformer import Transformer


@pytest.fixture
def folder(tmp_path):
    cfg = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, mlp_hidden=64)
    return to_hf(Transformer(cfg), tmp_path / "hf")


def edit_weights(folder, fn):
    tensors = load_file(folder / "model.safetensors")
    fn(tensors)
    save_file(tensors, folder / "model.safetensors")


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_missing_key_is_named(folder):
    edit_weights(folder, lambda t: t.pop("model.layers.1.self_attn.q_norm.weight"))
    with pytest.raises(LmforgeError, match=r"missing key 'model.layers.1.self_attn.q_norm.weight'"):
        from_hf(folder)


def test_unexpected_key_is_named(folder):
    edit_weights(folder, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(32)}))
    with pytest.raises(LmforgeError, match=r"unexpected key 'model.layers.0.self_attn.q_proj.bias'"):
        from_hf(folder)


def test_wrong_shape_is_named(folder):
    edit_config(folder, intermediate_size=48)
    with pytest.raises(LmforgeError, match=r"model.layers.0.mlp.(gate|up|down)_proj.weight has shape"):
        from_hf(folder)


def test_other_architecture_is_refused(folder):
    edit_config(folder, model_type="llama")
    with pytest.raises(LmforgeError, match=r"model_type is 'llama', expected 'olmo2'"):
        from_hf(folder)


def test_biases_are_refused(folder):
    edit_config(folder, attention_bias=True)
    with pytest.raises(LmforgeError, match=r"attention_bias=true"):
        from_hf(folder)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(LmforgeError, match=r"config.json is missing"):
        from_hf(tmp_path)


def test_export_refuses_to_clobber(folder):
    cfg = ModelConfig(vocab_size=256, d_model=32, n_layers=1, n_heads=4, mlp_hidden=64)
    with pytest.raises(LmforgeError, match=r"already exists and is not empty"):
        to_hf(Transformer(cfg), folder)
    assert from_hf(folder).cfg.n_layers == 2  # the existing export is untouched
