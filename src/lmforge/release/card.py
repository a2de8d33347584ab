"""The model card (README.md) of a release: Hugging Face metadata YAML, then what the model is,
what it was trained on and how, how it scored, and how to reproduce and verify all of it.
A pure function of the run's records, so a second release is byte-identical."""

from __future__ import annotations

from typing import Any

import yaml

from lmforge.model.size import describe
from lmforge.train.config import RunConfig

RECIPE_START = "<!-- crc-recipe -->"
RECIPE_END = "<!-- /crc-recipe -->"

# Reproduces a logged batch_crc and content_crc with numpy and the standard library alone.
# STEP and REL are the only inputs; `tests/test_release.py` runs this very text.
CRC_RECIPE = '''\
import hashlib, json, zlib
import numpy as np

REL, STEP = ".", 1  # the release folder and a logged step
manifest = json.load(open(f"{REL}/data/manifest.json"))
T, B, seed = manifest["seq_len"], manifest["batch_instances"], manifest["seed"]  # (as in training/config.yaml)

# 1. The token stream: every part of every folder, in training order; the fingerprint from the bytes.
parts, folder_fps = [], []
for folder in manifest["folders"]:
    meta = json.load(open(f"{folder['path']}/meta.json"))
    hashes = []
    for part in meta["parts"]:
        raw = open(f"{folder['path']}/{part['tokens']}", "rb").read()
        hashes.append(hashlib.blake2b(raw, digest_size=16).hexdigest())
        parts.append(np.frombuffer(raw, dtype=meta["dtype"]))
    folder_fps.append(hashlib.sha256("".join(hashes).encode()).hexdigest()[:16])
tokens = np.concatenate(parts).astype(np.int64)
fingerprint = hashlib.sha256("".join(folder_fps).encode()).hexdigest()[:16]

# 2. The instances of step STEP: positions (STEP-1)*B .. STEP*B of the epoch orders.
n = (len(tokens) - 1) // T
def order(epoch):
    key = hashlib.sha256(f"{seed}/{epoch}/{fingerprint}".encode()).digest()
    return np.random.default_rng(int.from_bytes(key[:8], "little")).permutation(n)
instances = np.array([order(p // n)[p % n] for p in range((STEP - 1) * B, STEP * B)], dtype=np.int64)

# 3. The two witnesses: of the order, and of the tokens (each instance's T + 1 ids, as int64).
batch_crc = zlib.crc32(instances.tobytes())
content_crc = 0
for i in instances:
    content_crc = zlib.crc32(tokens[i * T : i * T + T + 1].tobytes(), content_crc)
row = next(json.loads(line) for line in open(f"{REL}/logs/metrics.jsonl") if json.loads(line).get("step") == STEP
           and "batch_crc" in json.loads(line))
print(batch_crc == row["batch_crc"], content_crc == row["content_crc"])
'''


def metadata(name: str, cfg: RunConfig, manifest: dict[str, Any], results: dict[str, Any] | None,
             license: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"license": license, "language": ["en"], "library_name": "transformers",
                            "pipeline_tag": "text-generation", "tags": ["lmforge", "olmo2", "fully-open"],
                            "datasets": sorted(manifest["sources"])}
    if cfg.trainer.init_from is not None:
        meta["base_model"] = str(cfg.trainer.init_from)
    if results:
        meta["model-index"] = [{"name": name, "results": [
            {"task": {"type": "text-generation"},
             "dataset": {"name": r["task"], "type": r["task"], "config": r["variant"]},
             "metrics": [{"type": r["primary_metric"], "value": r["primary_score"],
                          "name": f"{spec} {r['primary_metric']}"}]}
            for spec, r in sorted(results["tasks"].items())]}]
    return meta


def model_card(name: str, cfg: RunConfig, manifest: dict[str, Any], revisions: list[dict[str, Any]],
               results: dict[str, Any] | None, *, architecture: str, license: str, pruned: list[int],
               skipped: list[int]) -> str:
    """The card; `architecture` is the transformers class the revisions export as."""
    size = describe(cfg.model, cfg.data.seq_len)
    final = revisions[-1]
    o, t = cfg.optim, cfg.trainer
    lines = ["---", yaml.safe_dump(metadata(name, cfg, manifest, results, license), sort_keys=False).strip(), "---",
             "", f"# {name}", "",
             "An OLMo 2-style language model trained with lmforge: every token it saw is traceable to its "
             "document, every checkpoint below is a revision of this repository, and `lmforge verify` checks "
             "the data order against the training log.", "",
             "## Model", "",
             "| | |", "|---|---|",
             f"| architecture | {architecture}{' (mixture of experts)' if cfg.model.is_moe else ''}: "
             f"{cfg.model.n_layers} layers, d_model {cfg.model.d_model}, {cfg.model.n_heads} heads |",
             f"| parameters | {size['params_total']:,} total, "
             f"{size.get('params_active', size['params_total']):,} active, "
             f"{size['params_non_embedding']:,} non-embedding |",
             f"| training FLOPs per token | {size['train_flops_per_token']:,} (at {cfg.data.seq_len} tokens) |",
             f"| final revision | `{final['name']}` (step {final['step']:,}, {final['tokens']:,} tokens) |", "",
             "## Data", "",
             f"Token folders, in training order (SHA-256 of every file in `data/manifest.json`; data "
             f"fingerprint `{manifest['fingerprint']}`):", ""]
    lines += [f"- `{f.get('released', f['name'])}` ({f['num_tokens']:,} tokens, fingerprint `{f['fingerprint']}`)"
              for f in manifest["folders"]]
    included = all("released" in f for f in manifest["folders"])  # lmforge release --include-data
    lines += ["", "The token folders (tokens as numpy memmaps, a document index with id, source and span per "
              "document) are in this repository under `data/tokens/`." if included else
              "The token folders are not in this repository: `data/manifest.json` names every file with its "
              "SHA-256, and `lmforge verify . --data DIR` checks a copy of them."]
    lines += ["", "| source | available tokens | trained tokens | multiplier |", "|---|---|---|---|"]
    for source, s in manifest["sources"].items():
        lines.append(f"| {source} | {s['available_tokens']:,} | {s['trained_tokens']:,} | {s['multiplier']} |")
    lines += ["", "The instance order of every epoch is in `data/order/` (one `.npy` per epoch)."
              + (f" Steps {skipped} were read but not applied (non-finite steps rolled back, or "
                 "`trainer.skip_steps`)." if skipped else ""), "",
              "## Training", "",
              f"AdamW (lr {o.lr:g}, betas {o.beta1}/{o.beta2}, weight decay {o.weight_decay:g}, clip {o.grad_clip:g}), "
              f"{o.schedule} schedule with {o.warmup_steps} warmup steps, z-loss {o.z_loss:g}; "
              f"{t.batch_tokens:,} tokens per step ({cfg.batch_instances} × {cfg.data.seq_len}), seed {t.seed}. "
              "The whole config is `training/config.yaml`; the log, one row per logged step, `logs/metrics.jsonl`.",
              "", "![loss](loss.png)", ""]
    if results:
        lines += ["## Evaluation", "", "| task | metric | score |", "|---|---|---|"]
        lines += [f"| {spec} | {r['primary_metric']} | {r['primary_score']:.4f} |"
                  for spec, r in sorted(results["tasks"].items())]
        lines += ["", "All numbers are in `results.json`.", ""]
    lines += ["## Revisions", "",
              "Each is a branch of this repository: `AutoModelForCausalLM.from_pretrained(REPO, revision=NAME)`. "
              "Names follow OLMo's rule, tokens = ceil(step × batch tokens / unit).", "",
              "| revision | step | tokens | loss |", "|---|---|---|---|"]
    lines += [f"| `{r['name']}` | {r['step']:,} | {r['tokens']:,} | "
              f"{'' if r['loss'] is None else format(r['loss'], '.4f')} |" for r in revisions]
    if all("scores" in r for r in revisions):  # --score-revisions
        specs = sorted(revisions[-1]["scores"])
        lines += ["", "Every revision scored on the same tasks (`scores` in `revisions.json`):", "",
                  "| revision | tokens | " + " | ".join(f"{s} {revisions[-1]['scores'][s]['primary_metric']}"
                                                       for s in specs) + " |",
                  "|---|---|" + "---|" * len(specs)]
        lines += [f"| `{r['name']}` | {r['tokens']:,} | "
                  + " | ".join(f"{r['scores'][s]['primary_score']:.4f}" for s in specs) + " |" for r in revisions]
        lines += ["", "![scores by revision](scores.png)"]
    if pruned:
        lines += ["", f"Missing: the checkpoints of steps {pruned} were deleted during training "
                  "(`trainer.keep_checkpoints`)."]
    lines += ["", "## Reproduce and verify", "",
              "```bash", "pip install lmforge", "lmforge train training/config.yaml   # the same run, step for step",
              "lmforge verify .                     # sums, data fingerprint, order, every logged step's CRCs",
              "sha256sum -c SHA256SUMS", "```", "",
              "Without lmforge: this reproduces a logged step's `batch_crc` (the instances) and `content_crc` "
              "(their tokens) with numpy alone:", "", RECIPE_START, "```python", CRC_RECIPE.rstrip(), "```",
              RECIPE_END, "", "Openness: `OPENNESS.md` (the Model Openness Framework's components).", ""]
    return "\n".join(lines)
