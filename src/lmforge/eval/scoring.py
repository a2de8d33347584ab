"""Log-likelihood of continuations: Σ log p(continuation tokens | context), as lm-eval's and
OLMES's transformers models compute it, so the numbers agree with theirs.

Tokenization follows lm-eval 0.4.13 (`LM._encode_pair`, `LM.loglikelihood`):

* trailing whitespace of the context moves to the front of the continuation;
* context and context+continuation are encoded separately (no special tokens added) and the
  continuation's tokens are the whole encoding past the context's length, so a merge across
  the boundary is scored as the continuation's;
* an empty context becomes the prefix token (BOS, else EOS; our exported tokenizers give
  BOS = EOS), unless the continuation itself starts with that token;
* inputs longer than the model's `max_seq_len` + 1 are cut from the left.

The log-softmax runs over the model's whole (padded) output, as for the exported model and
the training loss. Scoring: identical inputs run once, an input that is a prefix of another
(e.g. one-token continuations of the same context) is read off the longer one's forward, and
rows run longest first, padded on the right, batched by count and by logits memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import LmforgeError
from lmforge.eval.tasks import Request


@dataclass(frozen=True)
class Score:
    logprob: float  # Σ log p of the continuation tokens
    num_tokens: int  # continuation tokens (as lm-eval splits them)
    is_greedy: bool  # every continuation token is the argmax


def encode_requests(
    tokenizer: Tokenizer, requests: Sequence[Request], *, prefix_token_id: int | None = None
) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) of each request, by lm-eval's rule (module doc);
    `prefix_token_id` (default: EOS) stands for an empty context."""
    prefix = tokenizer.eos_token_id if prefix_token_id is None else prefix_token_id
    split: list[tuple[str, str]] = []
    for r in requests:
        context, continuation = r.context, r.continuation
        n_spaces = len(context) - len(context.rstrip())
        if context and n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        split.append((context, continuation) if r.context else ("", continuation))
    texts = sorted({t for c, k in split for t in ((c, c + k) if c else (k,))})
    ids = dict(zip(texts, tokenizer.encode_batch(texts), strict=True))
    out = []
    for context, continuation in split:
        if not context:
            cont = ids[continuation]
            out.append((cont[:1], cont[1:]) if cont and cont[0] == prefix else ([prefix], cont))
        else:
            ctx = ids[context]
            out.append((ctx, ids[context + continuation][len(ctx):]))
    return out


@torch.inference_mode()
def score_requests(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    requests: Sequence[Request],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    max_logits_bytes: int = 1 << 30,
    progress: bool = True,
    desc: str = "scoring",
    prefix_token_id: int | None = None,
) -> list[Score]:
    """The `Score` of every request, in order. `model(tokens)` (B, T) → logits (B, T, V)."""
    if batch_size < 1:
        raise LmforgeError(f"batch_size must be at least 1, got {batch_size}")
    cfg = getattr(model, "cfg", None)
    max_length = max_length or getattr(cfg, "max_seq_len", None) or 2048
    vocab = getattr(cfg, "padded_vocab_size", None) or 1
    encoded = encode_requests(tokenizer, requests, prefix_token_id=prefix_token_id)

    # Each request reads log-probs at the last len(cont) positions of its input row.
    rows: dict[tuple[int, ...], int] = {}
    wants: list[tuple[tuple[int, ...], tuple[int, ...]] | None] = []  # (input, continuation) per request
    for (ctx, cont), request in zip(encoded, requests, strict=True):
        if not cont:
            wants.append(None)
            continue
        if len(cont) > max_length:
            raise LmforgeError(
                f"a continuation of {len(cont)} tokens is longer than the model's context ({max_length}): "
                f"{request.continuation[:60]!r}"
            )
        inp = tuple((ctx + cont)[-(max_length + 1) :][:-1])
        rows.setdefault(inp, len(rows))
        wants.append((inp, tuple(cont)))

    # An input that is a prefix of another is computed within it: in sorted order, a prefix of
    # any sequence is a prefix of its successor, so each chain is owned by its last member.
    ordered = sorted(rows)
    owner: dict[tuple[int, ...], tuple[int, ...]] = {}
    for i in range(len(ordered) - 1, -1, -1):
        seq = ordered[i]
        nxt = ordered[i + 1] if i + 1 < len(ordered) else None
        owner[seq] = owner[nxt] if nxt is not None and nxt[: len(seq)] == seq else seq
    forward_rows = sorted(set(owner.values()), key=lambda s: (-len(s), s))  # longest first: OOM shows at once
    readers: dict[tuple[int, ...], list[int]] = {}
    for i, want in enumerate(wants):
        if want is not None:
            readers.setdefault(owner[want[0]], []).append(i)

    device = next(model.parameters()).device
    results: list[Score | None] = [Score(0.0, 0, True) if w is None else None for w in wants]
    batches = _batches(forward_rows, batch_size, max(1, max_logits_bytes // (4 * vocab)))
    bar = _progress(len(wants) - wants.count(None), desc, progress)
    model_was_training = model.training
    model.eval()
    try:
        for batch in batches:
            width = len(batch[0])
            tokens = torch.zeros((len(batch), width), dtype=torch.long)
            for b, seq in enumerate(batch):
                tokens[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            logits = model(tokens.to(device))  # (B, T, V)
            # Gather only the positions some continuation reads, then log-softmax those rows.
            b_idx, t_idx, targets, owners = [], [], [], []
            for b, seq in enumerate(batch):
                for i in readers[seq]:
                    inp, cont = wants[i]  # type: ignore[misc]
                    start = len(inp) - len(cont)
                    b_idx += [b] * len(cont)
                    t_idx += range(start, len(inp))
                    targets += cont
                    owners += [i] * len(cont)
            picked = logits[torch.tensor(b_idx, device=device), torch.tensor(t_idx, device=device)].float()
            logp = F.log_softmax(picked, dim=-1)  # (N, V)
            target = torch.tensor(targets, device=device)
            token_lp = logp.gather(1, target[:, None])[:, 0].double().cpu().tolist()
            greedy = (logp.argmax(-1) == target).cpu().tolist()
            sums: dict[int, list] = {}
            for i, lp, g in zip(owners, token_lp, greedy, strict=True):
                acc = sums.setdefault(i, [0.0, 0, True])
                acc[0] += lp
                acc[1] += 1
                acc[2] = acc[2] and g
            for i, (lp, n, g) in sums.items():
                results[i] = Score(lp, n, bool(g))
            bar.update(len(sums))
    finally:
        bar.close()
        model.train(model_was_training)
    return results  # type: ignore[return-value]


def _batches(rows: list[tuple[int, ...]], batch_size: int, max_tokens: int) -> list[list[tuple[int, ...]]]:
    """Consecutive rows (longest first), at most `batch_size` of them and, padded to the first
    one's width, at most `max_tokens` positions (always at least one row)."""
    batches: list[list[tuple[int, ...]]] = []
    for seq in rows:
        if batches and len(batches[-1]) < batch_size and (len(batches[-1]) + 1) * len(batches[-1][0]) <= max_tokens:
            batches[-1].append(seq)
        else:
            batches.append([seq])
    return batches


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="req", disable=not enabled, dynamic_ncols=True)
