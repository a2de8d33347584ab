"""`make demo`: build a tiny OLMo 2 on CPU, export it, and check transformers agrees with it.

(The training demo on the shipped corpus replaces this once the trainer lands.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from lmforge.model import ModelConfig, from_hf, to_hf
from lmforge.model.size import describe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="folder for the demo's outputs")
    args = parser.parse_args(argv)
    out = Path(args.out)

    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny")
    info = describe(cfg, seq_len=256)
    print(f"tiny OLMo 2: {info['params_total']:,} parameters, {info['train_flops_per_token']:.3g} train FLOPs/token")
    model = cfg.build().eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 256))
    start = time.perf_counter()
    with torch.no_grad():
        logits = model(ids)
    print(f"forward pass {tuple(ids.shape)} -> {tuple(logits.shape)} in {time.perf_counter() - start:.3f}s")

    folder = to_hf(model, out / "hf", eos_token_id=0, pad_token_id=1, overwrite=True)
    print(f"exported to {folder}")
    assert torch.equal(from_hf(folder)(ids), logits)
    try:
        import transformers
    except ImportError:
        print("transformers is not installed (pip install 'lmforge[hf]'): skipping the cross-check")
        return 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (hf(ids).logits - logits).abs().max().item()
    print(f"transformers {transformers.__version__} loads it as {type(hf).__name__}; max |logit difference| = {diff:.2e}")
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
