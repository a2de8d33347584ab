"""`lmforge export`: an lmforge checkpoint becomes a folder transformers uses as is."""

import json

import pytest
import torch
import transformers
from safetensors import safe_open

from lmforge.cli import main
from lmforge.data.tokenizer import train_bpe
from lmforge.model import ModelConfig, from_hf, generate, save_model
from lmforge.model.transformer import Transformer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    docs = root / "docs.txt"
    docs.write_text("It was the best of times, it was the worst of times, it was the age of wisdom. " * 50)
    tokenizer = train_bpe([docs], vocab_size=320, show_progress=False)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      mlp_hidden=128, max_seq_len=128, init_std=0.1)
    model = Transformer(cfg).eval()
    save_model(model, root / "ckpt", tokenizer)
    return root, model, tokenizer


def test_export_then_transformers_generates_what_we_generate(checkpoint, capsys):
    root, model, tokenizer = checkpoint
    assert main(["export", str(root / "ckpt"), str(root / "hf")]) == 0
    assert "Olmo2ForCausalLM" in capsys.readouterr().out

    hf = transformers.AutoModelForCausalLM.from_pretrained(root / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(root / "hf")
    prompt = "It was the best"
    ids = torch.tensor([hf_tok(prompt)["input_ids"]])
    assert ids.tolist()[0] == tokenizer.encode(prompt)
    with torch.no_grad():
        theirs = hf.generate(ids, max_new_tokens=15, min_new_tokens=15, do_sample=False)
    ours = generate(model, ids, 15)
    assert ours.tolist() == theirs.tolist()
    assert hf_tok.decode(theirs[0]) == tokenizer.decode(ours[0].tolist())
    # The tokenizer in the folder restores the unpadded vocabulary on the way back.
    assert from_hf(root / "hf").cfg == model.cfg


def test_export_in_bfloat16(checkpoint):
    root, model, _ = checkpoint
    assert main(["export", str(root / "ckpt"), str(root / "hf16"), "--dtype", "bfloat16"]) == 0
    assert json.loads((root / "hf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    with safe_open(root / "hf16" / "model.safetensors", "pt") as f:
        assert f.get_tensor("lm_head.weight").dtype == torch.bfloat16
    back = from_hf(root / "hf16")
    torch.testing.assert_close(back.embed.weight.float(), model.embed.weight.bfloat16().float(), atol=0, rtol=0)
