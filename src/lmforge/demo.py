"""`make demo`: the whole path on the shipped corpus, on CPU, in a few minutes.

train a BPE tokenizer → tokenize → train a tiny OLMo 2 → validation loss before/after, against
the corpus's unigram entropy → samples → loss.png → export → transformers generates the same → a
release (revisions, data order, card, sums) that `lmforge verify` checks.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lmforge.data.token_files import TokenFiles
from lmforge.data.tokenize import tokenize
from lmforge.data.tokenizer import Tokenizer, train_bpe
from lmforge.model.generate import generate
from lmforge.model.hf import to_hf
from lmforge.model.io import load_model
from lmforge.plot import plot_run
from lmforge.release.bundle import build_release
from lmforge.release.verify import verify
from lmforge.train.checkpoint import find_resumable
from lmforge.train.config import RunConfig
from lmforge.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "data" / "demo"
CONFIG = REPO / "configs" / "demo.yaml"
PROMPTS = ["ROMEO.\n", "And God said", "Of Man's first disobedience"]


def unigram_entropy(files: TokenFiles) -> float:
    """Entropy (nats/token) of the token frequencies: the loss of a model that ignores context."""
    counts = np.zeros(files.vocab_size, dtype=np.int64)
    for part in files.parts:
        counts += np.bincount(part, minlength=files.vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def prepare_data(out: Path, *, verbose: bool = True) -> tuple[Tokenizer, float]:
    """The demo corpus's BPE tokenizer (OUT/tokenizer.json) and token folders
    (OUT/tokens/train, OUT/tokens/val), made once and reused; returns the tokenizer and the
    training tokens' unigram entropy. The experiments under experiments/ train on these too."""
    say = print if verbose else (lambda *a, **k: None)
    say("== 1. tokenizer: byte-level BPE trained on the demo corpus")
    tok_path = out / "tokenizer.json"
    if tok_path.exists():
        tokenizer = Tokenizer.load(tok_path)
    else:
        tokenizer = train_bpe([CORPUS / "train.jsonl.gz"], vocab_size=4096, show_progress=False)
        tokenizer.save(tok_path)
    say(f"   {tok_path}: {tokenizer.vocab_size} ids")

    say("== 2. tokenize train and validation splits")
    for split in ("train", "val"):
        folder = out / "tokens" / split
        meta_ok = (folder / "meta.json").exists() and TokenFiles(folder).tokenizer_fingerprint == tokenizer.fingerprint
        if not meta_ok:
            tokenize([CORPUS / f"{split}.jsonl.gz"], tokenizer, folder, workers=1, overwrite=True, progress=False)
        files = TokenFiles(folder)
        say(f"   {folder}: {files.meta['num_documents']:,} documents, {files.num_tokens:,} tokens")
    entropy = unigram_entropy(TokenFiles(out / "tokens" / "train"))
    say(f"   unigram entropy of the training tokens: {entropy:.3f} nats/token")

    return tokenizer, entropy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="folder for everything the demo makes")
    parser.add_argument("--fast", action="store_true", help="a short run (for tests): 30 steps")
    args = parser.parse_args(argv)
    out = Path(args.out)
    started = time.perf_counter()

    tokenizer, entropy = prepare_data(out)
    tok_path = out / "tokenizer.json"

    print("== 3. train a tiny OLMo 2 on CPU")
    overrides = [f"--trainer.run_dir={out / 'run'}", f"--data.train=[{out / 'tokens' / 'train'}]",
                 f"--data.validation=[{out / 'tokens' / 'val'}]", f"--tokenizer={tok_path}"]
    if args.fast:
        overrides += ["--trainer.max_steps=30", "--trainer.eval_every=15", "--trainer.checkpoint_every=15",
                      "--optim.warmup_steps=5"]
    cfg = RunConfig.from_yaml(CONFIG, overrides)
    shutil.rmtree(cfg.trainer.run_dir, ignore_errors=True)  # the demo always starts afresh
    trainer = Trainer(cfg)
    metrics = trainer.fit()
    before, after = trainer.callback("validator").initial_loss, float(metrics["val_loss"])
    print(f"   validation loss {before:.3f} → {after:.3f} nats/token "
          f"(unigram entropy {entropy:.3f}; perplexity {math.exp(after):.1f})")

    print("== 4. samples (temperature 0.8, top-k 40)")
    checkpoint = find_resumable(cfg.trainer.run_dir / "checkpoints")
    assert checkpoint is not None
    model = load_model(checkpoint).eval()
    gen = torch.Generator().manual_seed(0)
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt)])
        text = tokenizer.decode(generate(model, ids, 60, temperature=0.8, top_k=40, vocab_size=tokenizer.vocab_size,
                                         generator=gen)[0].tolist())
        print("   " + text.replace("\n", "\n   ") + "\n   ---")

    print("== 5. loss curve")
    print(f"   {plot_run(cfg.trainer.run_dir)}")

    print("== 6. export to transformers and compare")
    hf_dir = to_hf(model, out / "hf", tokenizer, overwrite=True)
    print(f"   {hf_dir}")
    matched = compare_with_transformers(model, tokenizer, hf_dir)

    print("== 7. release it fully open, then verify it as anyone would")
    release = build_release(cfg.trainer.run_dir, out / "release", overwrite=True)
    names = [r["name"] for r in json.loads((release / "revisions.json").read_text())["revisions"]]
    print(f"   {release}: revisions {', '.join(names)}, data order, card, SHA256SUMS")
    report = verify(release)
    print("   " + "\n   ".join([*report.problems, report.summary()]))
    matched = matched and report.ok
    print(f"== done in {time.perf_counter() - started:.0f}s; everything is under {out}/")
    ok = matched and after < entropy
    if after >= entropy:
        print(f"   validation loss {after:.3f} did not get below the unigram entropy {entropy:.3f}")
    return 0 if ok else 1


def compare_with_transformers(model, tokenizer: Tokenizer, hf_dir: Path) -> bool:
    try:
        import transformers
    except ImportError:
        print("   transformers is not installed (pip install 'lmforge[hf]'): skipping the comparison")
        return True
    transformers.logging.set_verbosity_error()
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    all_match = True
    for prompt in PROMPTS:
        ids = torch.tensor([hf_tok(prompt)["input_ids"]])
        with torch.no_grad():
            theirs = hf_tok.decode(hf.generate(ids, max_new_tokens=30, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                               eos_token_id=None)[0])
        ours = tokenizer.decode(generate(model, ids, 30)[0].tolist())
        match = ours == theirs
        all_match &= match
        print(f"   {prompt.strip()!r}: transformers {'matches' if match else 'DIFFERS from'} lmforge (greedy, 30 tokens)")
    print(f"   transformers loaded {type(hf).__name__}; texts {'match' if all_match else 'differ'}")
    return all_match


if __name__ == "__main__":
    sys.exit(main())
