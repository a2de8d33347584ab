"""`lmforge eval` on held-out token files, and a model/tokenizer mismatch refused in one line."""

import json

from lmforge.cli import main
from lmforge.data.tokenizer import Tokenizer
from lmforge.model import ModelConfig
from lmforge.model.io import save_model
from lmforge.model.transformer import Transformer


def tiny(vocab_size):
    return Transformer(ModelConfig(vocab_size=vocab_size, d_model=32, n_layers=1, n_heads=2, mlp_hidden=64, max_seq_len=64))


def test_perplexity_from_the_command_line(token_data, tmp_path, capsys):
    save_model(tiny(512), tmp_path / "model", Tokenizer.load(token_data / "tokenizer.json"))
    assert main(["eval", str(tmp_path / "model"), "--ppl-data", str(token_data / "val"), "--ppl-seq-len", "64",
                 "--quiet", "--out", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())["perplexity"]
    assert result["tokens"] > 0 and result["bits_per_byte"] > 0 and result["perplexity"] > 1
    assert "perplexity" in capsys.readouterr().out


def test_a_tokenizer_that_is_not_the_models_is_refused(token_data, tmp_path, capsys):
    save_model(tiny(300), tmp_path / "model", Tokenizer.load(token_data / "tokenizer.json"))  # 512 ids > 300 rows
    assert main(["eval", str(tmp_path / "model"), "--ppl-data", str(token_data / "val")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the tokenizer has 512 ids but the model's vocabulary is 300" in err
    assert main(["analyze", "undertrained", str(tmp_path / "model"), "--no-verify"]) == 2
    assert "the tokenizer has 512 ids" in capsys.readouterr().err
