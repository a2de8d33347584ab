"""Sampling from a model: greedy, temperature, top-k and top-p (nucleus), with eos and stop
sequences.

With `use_cache=True` (the default) the prompt is run once to fill a `KVCache` and each new token
then costs one single-token forward; `use_cache=False` recomputes the whole context for every
token, which is the training forward path and the reference the cached path is tested against.
Both give the same logits up to float rounding (tests/test_generate.py holds them to 1e-5 in fp32).

Past the model's `max_seq_len` the context is the last max_seq_len tokens, re-embedded at
positions 0 … max_seq_len - 1. That window slides, so it cannot be cached: a cached run switches
to recomputation for the tokens past max_seq_len and so stays identical to `use_cache=False`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    vocab_size: int | None = None,
    eos_token_id: int | None = None,
    stop: Sequence[Sequence[int]] | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Extend `prompt` (B, T) by up to `max_new_tokens` ids; returns (B, T + new).

    temperature 0 is greedy (argmax); otherwise the logits are divided by `temperature`, cut to
    the `top_k` largest, then to the smallest set of most likely ids whose probability reaches
    `top_p`, and sampled with `generator`. `vocab_size` excludes the padding rows of the head
    from sampling. All rows share one length, so prompts must not need padding.

    A row finishes once it produces `eos_token_id` or ends its new tokens with one of the `stop`
    sequences (lists of ids; only generated ids count, not the prompt); the eos or stop sequence
    stays in the output. A finished row is padded with `eos_token_id`, or with its own last id
    when there is no eos, while the others continue; generation ends early once every row has
    finished. `use_cache=False` recomputes the whole context for each token (see module doc).
    """
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    stops = [torch.as_tensor(list(s), dtype=prompt.dtype, device=prompt.device) for s in (stop or [])]
    if any(s.numel() == 0 for s in stops):
        raise ValueError("stop sequences must not be empty")
    was_training = model.training
    model.eval()
    max_len = getattr(getattr(model, "cfg", None), "max_seq_len", None)
    B, prompt_len = prompt.shape
    tokens = prompt
    finished = torch.zeros(B, dtype=torch.bool, device=prompt.device)
    cache = None
    if use_cache and hasattr(model, "new_cache") and max_new_tokens > 0:
        # The last new token is sampled but never fed back, hence the - 1.
        cache_len = prompt_len + max_new_tokens - 1
        if max_len is not None:
            cache_len = min(cache_len, max_len)
        if prompt_len <= cache_len:
            cache = model.new_cache(B, cache_len)
    for _ in range(max_new_tokens):
        if cache is not None and tokens.shape[1] <= cache.max_len:
            # The prompt on the first step (prefill), then the one token sampled last.
            logits = model(tokens[:, cache.length :], cache=cache)[:, -1, :].float()  # (B, V)
        else:
            cache = None  # past max_seq_len: the window slides, so recompute (module doc)
            context = tokens if max_len is None else tokens[:, -max_len:]
            logits = model(context)[:, -1, :].float()  # (B, V)
        if vocab_size is not None:
            logits = logits[:, :vocab_size]
        next_id = sample(logits, temperature, top_k, top_p, generator)  # (B,)
        pad = tokens[:, -1] if eos_token_id is None else torch.full_like(next_id, eos_token_id)
        next_id = torch.where(finished, pad, next_id)
        tokens = torch.cat([tokens, next_id[:, None]], dim=1)
        if eos_token_id is not None:
            finished |= next_id == eos_token_id
        generated = tokens.shape[1] - prompt_len
        for s in stops:
            if len(s) <= generated:
                finished |= (tokens[:, -len(s) :] == s).all(dim=-1)
        if (eos_token_id is not None or stops) and bool(finished.all()):
            break
    model.train(was_training)
    return tokens


def sample(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One id per row of `logits` (B, V): argmax when temperature <= 0, else a draw."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop an id when the ids more likely than it already reach top_p; the most likely
        # id is always kept (nothing precedes it), so top_p → 0 is greedy.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
