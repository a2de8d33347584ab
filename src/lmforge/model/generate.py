"""Sampling from a model: greedy, temperature and top-k. No KV cache: the models lmforge samples
on CPU are small, and recomputing keeps the forward path the one that training uses."""

from __future__ import annotations

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
    vocab_size: int | None = None,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend `prompt` (B, T) by up to `max_new_tokens` ids; returns (B, T + new).

    temperature 0 is greedy (argmax). `vocab_size` excludes the padding rows of the head from
    sampling. Stops early once every row has produced `eos_token_id`.
    """
    was_training = model.training
    model.eval()
    max_len = getattr(getattr(model, "cfg", None), "max_seq_len", None)
    tokens = prompt
    finished = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    for _ in range(max_new_tokens):
        context = tokens if max_len is None else tokens[:, -max_len:]
        logits = model(context)[:, -1, :].float()  # (B, V)
        if vocab_size is not None:
            logits = logits[:, :vocab_size]
        if temperature <= 0:
            next_id = logits.argmax(dim=-1)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            next_id = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        tokens = torch.cat([tokens, next_id[:, None]], dim=1)
        if eos_token_id is not None:
            finished |= next_id == eos_token_id
            if bool(finished.all()):
                break
    model.train(was_training)
    return tokens
