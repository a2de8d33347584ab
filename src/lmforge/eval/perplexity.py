"""Perplexity and bits per byte of a model on held-out token files (`lmforge data tokenize`
folders).

The stream of the folders (in the order given, as `TokenStream` reads them) is cut as training
cuts it (`InstanceDataset`): window i is tokens [i·T, i·T + T + 1), T inputs and the T targets
shifted by one, so consecutive windows share only a boundary token and every token after the
first is scored exactly once, with at most T - 1 tokens of context. The tail that does not fill
a window is not scored. Nothing is masked: the EOS closing each document is a target like any
other, and a window runs across document boundaries, as in training.

* loss: mean cross-entropy in nats per scored token (the sum is accumulated in float64);
* perplexity: exp(loss);
* bits per byte (with a tokenizer): total nats / ln 2 / UTF-8 bytes of the scored targets
  decoded as text, special tokens (the EOS separators) contributing no bytes. The scored
  tokens are one contiguous span, decoded in pieces cut after EOS tokens, so no character
  is split inside it (a character cut by the span's own ends decodes as U+FFFD, as it would
  decoding the span in one piece).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.data.dataset import InstanceDataset, TokenStream
from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import LmforgeError

DECODE_PIECE_TOKENS = 1 << 16  # decode the scored span in pieces of about this many tokens


@torch.inference_mode()
def perplexity(
    model: torch.nn.Module,
    folders: Sequence[str | Path] | str | Path,
    *,
    seq_len: int,
    batch_size: int,
    max_tokens: int | None = None,
    tokenizer: Tokenizer | None = None,
    progress: bool = True,
    loss_chunk_tokens: int = 4096,
) -> dict[str, Any]:
    """Loss, perplexity (and bits per byte, given the `tokenizer`) of `model` over the token
    `folders`, in windows of `seq_len` targets (module doc), `batch_size` windows per forward.
    `max_tokens` caps the scored tokens: the first max_tokens // seq_len windows (at least one).

    Returns {"folders", "seq_len", "windows", "tokens", "nats", "loss", "perplexity",
    "bits_per_token"} plus, with a tokenizer, {"bytes", "bits_per_byte"}. `model` is an lmforge
    `Transformer` (the head and cross-entropy run fused, `loss_chunk_tokens` at a time) or any
    module mapping tokens (B, T) to logits (B, T, V)."""
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    if seq_len < 1 or batch_size < 1:
        raise LmforgeError(f"perplexity: seq_len and batch_size must be at least 1, got {seq_len} and {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise LmforgeError(f"perplexity: max_tokens must be at least 1, got {max_tokens}")
    cfg = getattr(model, "cfg", None)
    max_seq_len = getattr(cfg, "max_seq_len", None)
    if max_seq_len is not None and seq_len > max_seq_len:
        raise LmforgeError(f"perplexity: seq_len {seq_len} is longer than the model's context ({max_seq_len})")
    stream = TokenStream(folders)
    vocab = getattr(cfg, "vocab_size", None)
    if vocab is not None and stream.vocab_size > vocab:
        raise LmforgeError(
            f"perplexity: the token folders use a vocabulary of {stream.vocab_size} ids, the model has {vocab}"
        )
    if tokenizer is not None and tokenizer.fingerprint != stream.tokenizer_fingerprint:
        raise LmforgeError(
            f"perplexity: the token folders were made with another tokenizer ({stream.tokenizer_fingerprint}) "
            f"than the one given ({tokenizer.fingerprint})"
        )
    data = InstanceDataset(stream, seq_len, seed=0, mask_repetitions=False)
    windows = data.num_instances if max_tokens is None else min(data.num_instances, max(1, max_tokens // seq_len))

    from lmforge.model.transformer import Transformer

    fused = isinstance(model, Transformer)
    device = next(model.parameters()).device
    nats = 0.0
    bar = _progress(windows * seq_len, progress)
    was_training = model.training
    model.eval()
    try:
        for first in range(0, windows, batch_size):
            rows = np.stack([data.tokens(i) for i in range(first, min(first + batch_size, windows))])  # (B, T + 1)
            rows_t = torch.from_numpy(rows).to(device)
            inputs, targets = rows_t[:, :-1], rows_t[:, 1:]
            if fused:
                ce = model(inputs, targets=targets, loss_chunk_tokens=loss_chunk_tokens).ce
            else:
                logits = model(inputs).float()
                ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
            nats += float(ce.double())
            bar.update(targets.numel())
    finally:
        bar.close()
        model.train(was_training)

    tokens = windows * seq_len
    loss = nats / tokens
    out: dict[str, Any] = {
        "folders": [str(f) for f in folders],
        "seq_len": seq_len,
        "windows": windows,
        "tokens": tokens,
        "nats": nats,
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_token": loss / math.log(2),
    }
    if tokenizer is not None:
        n_bytes = scored_bytes(stream, tokenizer, 1, tokens + 1)
        out["bytes"] = n_bytes
        out["bits_per_byte"] = nats / math.log(2) / n_bytes if n_bytes else float("nan")
    return out


def scored_bytes(stream: TokenStream, tokenizer: Tokenizer, start: int, end: int) -> int:
    """UTF-8 bytes of tokens [start, end) of `stream` decoded as text (special tokens skipped),
    decoded in pieces that end after an EOS (a document boundary), so no character is split."""
    eos = tokenizer.eos_token_id
    total, pos = 0, start
    while pos < end:
        stop = min(pos + DECODE_PIECE_TOKENS, end)
        ids = stream.read(pos, stop)
        if stop < end and eos is not None:
            boundaries = np.flatnonzero(ids == eos)
            if len(boundaries):  # else a piece of one long document: read on until a boundary
                stop = pos + int(boundaries[-1]) + 1
                ids = ids[: stop - pos]
            else:
                stop = _next_boundary(stream, eos, stop, end)
                ids = stream.read(pos, stop)
        total += len(tokenizer.hf.decode(ids.tolist(), skip_special_tokens=True).encode("utf-8"))
        pos = stop
    return total


def _next_boundary(stream: TokenStream, eos: int, pos: int, end: int) -> int:
    """The position just after the first EOS at or after `pos` (at most `end`)."""
    while pos < end:
        ids = stream.read(pos, min(pos + DECODE_PIECE_TOKENS, end))
        hits = np.flatnonzero(ids == eos)
        if len(hits):
            return pos + int(hits[0]) + 1
        pos += len(ids)
    return end


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="perplexity", unit="tok", unit_scale=True, disable=not enabled, dynamic_ncols=True)
