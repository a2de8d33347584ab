"""An lm-evaluation-harness (lm-eval 0.4.13) model backed by lmforge: `--model lmforge`.

    lm_eval.simple_evaluate(model="lmforge", model_args="checkpoint=PATH,batch_size=32", tasks=[...])

Importing this module registers `LmforgeLM` under the name "lmforge" (lm-eval only knows the
models it has imported: 0.4.13 reads no entry points, its registry is filled by `@register_model`
and a fixed table inside `lm_eval.models`). So from Python, import this module before calling
`simple_evaluate`; from the shell, use the launcher, which imports it and then runs lm-eval's own
command line (`lm_eval.__main__.cli_evaluate`) with the same arguments:

    python -m lmforge.eval.lm_eval_model --model lmforge \\
        --model_args checkpoint=runs/x/final,batch_size=32 --tasks arc_easy --limit 100

Model arguments (`--model_args key=value,...`):

* `checkpoint` (or `pretrained`): an lmforge checkpoint folder (model.yaml + weights, consolidated
  or sharded) or a transformers OLMo 2 folder, with its tokenizer beside it (`load_for_eval`);
* `batch_size` (default 32; "auto" means the default; lm-eval's CLI passes its own default, 1,
  unless given `--batch_size`), `device` (default cuda when available, else cpu; lm-eval's CLI
  passes `--device`, default cuda:0, which falls back to cpu without CUDA), `dtype` (float32,
  bfloat16, float16; default: as stored);
* `max_length`: the context in tokens (default: the model's `max_seq_len`, which is what
  lm-eval's `hf` model reads from the exported config); `max_gen_toks` (default 256, as `hf`);
* `seed`: seeds a private generator for sampled generation (default: torch's global generator,
  which lm-eval seeds).

What each request type computes, equal to lm-eval's `hf` model on the exported checkpoint:

* `loglikelihood`: `score_requests` (tokenized as lm-eval does, see `scoring`), returning
  (Σ log p, is_greedy) per request;
* `loglikelihood_rolling`: the document's tokens in disjoint windows of `max_length` predictions
  (`get_rolling_token_windows` with context_len 1, then `make_disjoint_window`), the first window
  after the prefix token (BOS, else EOS); the sum over all windows;
* `generate_until`: the context (left-cut to `max_length - max_gen_toks` tokens) extended with
  `generate` (KV cache), greedy unless the request's gen_kwargs sample (`do_sample`, or a
  positive `temperature`; `top_k`, `top_p` honoured). It stops at EOS, at `max_gen_toks`, or once
  a stop string's tokens appear (its own encoding or one token per character); the decoded text
  (special tokens dropped) is then cut at the first occurrence of any `until` string, as `hf`
  does, so a stop string produced in another tokenization still ends the answer where it
  starts. Greedy argmax runs over the model's whole (padded) output, as for the exported model.
  Requests with the same gen_kwargs and context length run as one batch.
"""

from __future__ import annotations

# The launcher guard below must run before the model class is defined, hence imports after it.
# ruff: noqa: E402

if __name__ == "__main__":  # `python -m`: run from the importable module so the model registers once
    import sys

    from lmforge.eval.lm_eval_model import main

    sys.exit(main())

import json
import logging
from collections.abc import Sequence
from typing import Any

import lm_eval.models  # noqa: F401  (fills lm-eval's registry first: it only does so while the registry is empty)
import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from lmforge.errors import LmforgeError
from lmforge.eval.harness import load_for_eval
from lmforge.eval.scoring import score_requests
from lmforge.eval.tasks import Request
from lmforge.model.generate import generate
from lmforge.parallel import cuda

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's `hf` default
_GEN_KWARGS_USED = {"until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p"}


@register_model("lmforge")
class LmforgeLM(LM):
    """lm-eval's LM interface over an lmforge model (module doc)."""

    def __init__(
        self,
        checkpoint: str | None = None,
        *,
        pretrained: str | None = None,
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        max_batch_size: int | None = None,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        seed: int | None = None,
        **unused: Any,
    ):
        super().__init__()
        path = checkpoint or pretrained
        if not path:
            raise LmforgeError("lmforge model: name the model with model_args checkpoint=PATH")
        if unused:
            log.warning("lmforge model: ignoring model_args %s", ", ".join(f"{k}={v}" for k, v in unused.items()))
        del max_batch_size  # batches are sized by count and logits memory, never searched for
        if device and str(device).startswith("cuda") and not cuda.is_available():
            log.warning("lmforge model: device %s (lm-eval's CLI default) but no CUDA here; using cpu", device)
            device = "cpu"
        self.model, self.tokenizer, self.prefix_token_id = load_for_eval(
            path, device=device or None, dtype=_dtype(dtype)
        )
        self.model.eval()
        self.checkpoint = str(path)
        self._device = next(self.model.parameters()).device
        self.batch_size = _batch_size(batch_size)
        cfg = getattr(self.model, "cfg", None)
        self.max_length = int(max_length or getattr(cfg, "max_seq_len", None) or 2048)
        self.max_gen_toks = int(max_gen_toks)
        if self.prefix_token_id is None:
            self.prefix_token_id = self.tokenizer.eos_token_id
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator(device=self._device).manual_seed(int(seed))

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name.replace("/", "__")

    def get_model_info(self) -> dict[str, Any]:
        return {"model_checkpoint": self.checkpoint, "max_length": self.max_length}

    # -- loglikelihood -------------------------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        args = [req.args for req in requests]
        scores = score_requests(
            self.model, self.tokenizer, [Request(context, continuation) for context, continuation in args],
            batch_size=self.batch_size, max_length=self.max_length, progress=not disable_tqdm,
            desc="lmforge loglikelihood", prefix_token_id=self.prefix_token_id,
        )  # fmt: skip
        out = []
        for arg, score in zip(args, scores, strict=True):
            result = (score.logprob, score.is_greedy)
            self.cache_hook.add_partial("loglikelihood", arg, result)
            out.append(result)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        strings = [req.args[0] for req in requests]
        windows: list[tuple[list[int], list[int]]] = []
        owners: list[int] = []
        for i, ids in enumerate(self.tokenizer.encode_batch(strings)):
            for window in get_rolling_token_windows(
                token_list=ids, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1
            ):
                windows.append(make_disjoint_window(window))
                owners.append(i)
        totals = [0.0] * len(strings)
        for i, (logprob, _) in zip(owners, self._score_tokens(windows), strict=True):
            totals[i] += logprob
        for string, total in zip(strings, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        return totals

    @torch.inference_mode()
    def _score_tokens(
        self, pairs: Sequence[tuple[list[int], list[int]]], max_logits_bytes: int = 1 << 30
    ) -> list[tuple[float, bool]]:
        """(Σ log p, is_greedy) of each (context ids, continuation ids): one forward over
        (context + continuation)[-(max_length + 1):][:-1], as lm-eval's `hf` model runs it."""
        rows = [(list(ctx) + list(cont))[-(self.max_length + 1) :][:-1] for ctx, cont in pairs]
        order = sorted(range(len(pairs)), key=lambda i: -len(rows[i]))  # longest first: OOM shows at once
        vocab = getattr(getattr(self.model, "cfg", None), "padded_vocab_size", None) or 1
        max_tokens = max(1, max_logits_bytes // (4 * vocab))
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        start = 0
        while start < len(order):
            width = max(1, len(rows[order[start]]))
            n = max(1, min(self.batch_size, max_tokens // width))
            batch = order[start : start + n]
            start += n
            tokens = torch.zeros((len(batch), width), dtype=torch.long)
            for b, i in enumerate(batch):
                tokens[b, : len(rows[i])] = torch.tensor(rows[i], dtype=torch.long)
            logits = self.model(tokens.to(self._device))  # (B, T, V)
            for b, i in enumerate(batch):
                cont = list(pairs[i][1])
                if not cont:
                    continue
                end = len(rows[i])
                logp = F.log_softmax(logits[b, end - len(cont) : end].float(), dim=-1)  # (n cont, V)
                target = torch.tensor(cont, device=logp.device)
                # Summed in float32 per window, as lm-eval's `hf` model does: its totals, to the last digits.
                total = float(logp.gather(1, target[:, None]).sum())
                results[i] = (total, bool((logp.argmax(-1) == target).all()))
        return results

    # -- generation ----------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from tqdm.auto import tqdm

        args = [req.args for req in requests]
        eos_text = self.tokenizer.eos_token
        groups: dict[tuple[str, int], list[int]] = {}
        prepared = []
        for i, (context, gen_kwargs) in enumerate(args):
            kwargs = dict(normalize_gen_kwargs(dict(gen_kwargs or {}), self.max_gen_toks))
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_gen_toks = int(kwargs.pop("max_gen_toks"))
            max_ctx = self.max_length - max_gen_toks
            if max_ctx <= 0:
                raise LmforgeError(
                    f"max_gen_toks={max_gen_toks} leaves no room for the context in max_length={self.max_length}"
                )
            ids = self.tokenizer.encode(context)[-max_ctx:] or [self.prefix_token_id]
            ignored = sorted(set(kwargs) - _GEN_KWARGS_USED)
            if ignored:
                log.warning("lmforge generate_until: ignoring gen_kwargs %s", ", ".join(ignored))
            prepared.append((ids, until, max_gen_toks, kwargs))
            key = json.dumps([until, max_gen_toks, {k: kwargs[k] for k in sorted(kwargs)}], default=str)
            groups.setdefault((key, len(ids)), []).append(i)

        out: list[str | None] = [None] * len(args)
        bar = tqdm(total=len(args), desc="lmforge generate_until", disable=disable_tqdm, dynamic_ncols=True)
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                _, until, max_gen_toks, kwargs = prepared[batch[0]]
                prompt = torch.tensor([prepared[i][0] for i in batch], dtype=torch.long, device=self._device)
                tokens = generate(
                    self.model, prompt, max_gen_toks, **self._sampling(kwargs),
                    eos_token_id=self.tokenizer.eos_token_id, stop=self._stop_ids(until, eos_text),
                    generator=self.generator, use_cache=True,
                )  # fmt: skip
                for row, i in zip(tokens[:, prompt.shape[1] :].tolist(), batch, strict=True):
                    if self.tokenizer.eos_token_id in row:
                        row = row[: row.index(self.tokenizer.eos_token_id)]
                    text = self.tokenizer.hf.decode(row, skip_special_tokens=True)
                    text = postprocess_generated_text(text, until, None)
                    self.cache_hook.add_partial("generate_until", args[i], text)
                    out[i] = text
                bar.update(len(batch))
        bar.close()
        return out  # type: ignore[return-value]

    @staticmethod
    def _sampling(kwargs: dict[str, Any]) -> dict[str, Any]:
        """`generate`'s temperature/top_k/top_p for normalized gen_kwargs: greedy unless do_sample."""
        if not kwargs.get("do_sample"):
            return {"temperature": 0.0}
        temperature = float(kwargs.get("temperature") or 0.0)
        top_k, top_p = kwargs.get("top_k"), kwargs.get("top_p")
        return {
            "temperature": temperature if temperature > 0 else 1.0,
            "top_k": int(top_k) if top_k else None,
            "top_p": float(top_p) if top_p is not None and float(top_p) < 1.0 else None,
        }

    def _stop_ids(self, until: list[str], eos_text: str) -> list[list[int]]:
        """Token sequences that end generation early: each stop string's encoding and its
        one-token-per-character spelling (EOS is `generate`'s eos_token_id)."""
        stops: set[tuple[int, ...]] = set()
        for text in until:
            if not text or text == eos_text:
                continue
            stops.add(tuple(self.tokenizer.encode(text)))
            stops.add(tuple(i for ch in text for i in self.tokenizer.encode(ch)))
        return [list(s) for s in sorted(stops) if s]


def _dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    name = str(value).removeprefix("torch.")
    if name in ("", "auto"):
        return None
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise LmforgeError(f"lmforge model: unknown dtype {value!r} (float32, bfloat16, float16)")
    return dtype


def _batch_size(value: int | str | None) -> int:
    if value is None or str(value).startswith("auto"):
        return DEFAULT_BATCH_SIZE
    size = int(value)
    if size < 1:
        raise LmforgeError(f"lmforge model: batch_size must be at least 1, got {value}")
    return size


def main(argv: Sequence[str] | None = None) -> int:
    """lm-eval's command line with the "lmforge" model registered (module doc)."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0
