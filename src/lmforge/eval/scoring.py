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

For an lmforge `Transformer` (what `from_hf` and `load_model` give) the requests that share a
context run as one packed row, a prefix tree: the context once, then each continuation after
it, at the positions it would have had alone, attending to the context and causally to
itself only (a per-row attention mask and per-token RoPE positions). The head and the
log-softmax run only on the positions some continuation reads, and everything but attention
only on real (not padding) tokens. Rows run widest first; on a CPU a forward holds at most
`CPU_BATCH_POSITIONS` padded positions (within `batch_size` rows). This computes the same
quantities as one forward per request (up to float rounding: tests hold it to the plain path
and to lm-eval's numbers); other models (`model(tokens)` → logits) take the plain padded path.
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

    if _tree_ok(model):
        return _score_tree(model, wants, batch_size=batch_size, max_logits_bytes=max_logits_bytes, vocab=vocab,
                           progress=progress, desc=desc)  # fmt: skip

    # An input that is a prefix of another is computed within it.
    owner = _chain_owners(list(rows))
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
            token_lp, greedy = _target_logprobs(picked, torch.tensor(targets, device=device))  # picked: (N, V)
            bar.update(_collect(results, owners, token_lp, greedy))
    finally:
        bar.close()
        model.train(model_was_training)
    assert all(r is not None for r in results)  # every request was read off some row
    return [r for r in results if r is not None]


def _collect(results: list[Score | None], owners: list[int], token_lp: list[float], greedy: list[bool]) -> int:
    """Sum per-token log-probs into each request's Score (greedy only if every token was);
    returns how many requests were completed."""
    sums: dict[int, list] = {}
    for i, lp, g in zip(owners, token_lp, greedy, strict=True):
        acc = sums.setdefault(i, [0.0, 0, True])
        acc[0] += lp
        acc[1] += 1
        acc[2] = acc[2] and g
    for i, (lp, n, g) in sums.items():
        results[i] = Score(lp, n, bool(g))
    return len(sums)


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


# -- the packed (prefix-tree) path for lmforge Transformers ------------------------------------


CPU_BATCH_POSITIONS = 2048  # see _score_tree's batching


def _tree_ok(model: torch.nn.Module) -> bool:
    """The packed path runs the model's own modules, so only on an lmforge `Transformer`."""
    from lmforge.model.transformer import Transformer

    return type(model) is Transformer


def _chain_owners(seqs: list[tuple[int, ...]]) -> dict[tuple[int, ...], tuple[int, ...]]:
    """Each sequence → the longest one it is a prefix of (sorted order: a prefix of any
    sequence is a prefix of its successor, so each chain is owned by its last member)."""
    ordered = sorted(seqs)
    owner: dict[tuple[int, ...], tuple[int, ...]] = {}
    for i in range(len(ordered) - 1, -1, -1):
        seq = ordered[i]
        nxt = ordered[i + 1] if i + 1 < len(ordered) else None
        owner[seq] = owner[nxt] if nxt is not None and nxt[: len(seq)] == seq else seq
    return owner


@dataclass
class _Row:
    """One packed row: a shared prefix (the context up to and including the token that
    predicts the first continuation token), then suffixes (the continuations but their last
    token), each placed after the prefix as if alone."""

    prefix: tuple[int, ...]
    suffixes: list[tuple[int, ...]]
    offsets: list[int]  # where each suffix starts in the row
    width: int


def _score_tree(
    model: torch.nn.Module,
    wants: list[tuple[tuple[int, ...], tuple[int, ...]] | None],
    *,
    batch_size: int,
    max_logits_bytes: int,
    vocab: int,
    progress: bool,
    desc: str,
) -> list[Score]:
    # Request i reads the last len(cont) positions of its input inp: the last prefix position
    # (len(inp) - len(cont)), then the suffix inp[len(prefix):] = cont[:-1] (or its truncation).
    groups: dict[tuple[int, ...], dict[tuple[int, ...], list[int]]] = {}
    for i, want in enumerate(wants):
        if want is None:
            continue
        inp, cont = want
        cut = len(inp) - len(cont) + 1
        groups.setdefault(inp[:cut], {}).setdefault(inp[cut:], []).append(i)

    rows: list[_Row] = []
    readers: list[list[tuple[int, int]]] = []  # per row: (request, index of the suffix it reads)
    for prefix, by_suffix in groups.items():
        owner = _chain_owners(list(by_suffix))  # a suffix that is a prefix of another is read off it
        kept = sorted({s for s in owner.values()}, key=lambda s: (-len(s), s))
        index = {s: k for k, s in enumerate(kept)}
        offsets, pos = [], len(prefix)
        for s in kept:
            offsets.append(pos)
            pos += len(s)
        rows.append(_Row(prefix, kept, offsets, pos))
        readers.append([(i, index[owner[s]]) for s, ids in by_suffix.items() for i in ids])
    order = sorted(range(len(rows)), key=lambda r: (-rows[r].width, rows[r].prefix))

    n_reads = {r: sum(len(wants[i][1]) for i, _ in readers[r]) for r in range(len(rows))}  # type: ignore[index]
    # A batch holds at most batch_size rows, at most max_reads read positions (their fp32
    # logits) and an attention mask (B, T, T) of at most max_logits_bytes in fp32; on a CPU,
    # also at most CPU_BATCH_POSITIONS padded positions (past that, activations fall out of
    # cache and padding grows: smaller forwards are faster there). Always at least one row.
    device = next(model.parameters()).device
    max_reads = max(1, max_logits_bytes // (4 * vocab))
    max_positions = CPU_BATCH_POSITIONS if device.type == "cpu" else None
    batches: list[list[int]] = []
    reads = 0
    for r in order:
        last = batches[-1] if batches else None
        if (
            last
            and len(last) < batch_size
            and reads + n_reads[r] <= max_reads
            and (len(last) + 1) * rows[last[0]].width ** 2 * 4 <= max_logits_bytes
            and (max_positions is None or (len(last) + 1) * rows[last[0]].width <= max_positions)
        ):
            last.append(r)
            reads += n_reads[r]
        else:
            batches.append([r])
            reads = n_reads[r]

    results: list[Score | None] = [Score(0.0, 0, True) if w is None else None for w in wants]
    bar = _progress(len(wants) - wants.count(None), desc, progress)
    model_was_training = model.training
    model.eval()
    try:
        for batch in batches:
            width = rows[batch[0]].width
            tokens = torch.zeros((len(batch), width), dtype=torch.long)
            positions = torch.full((len(batch), width), -1, dtype=torch.long)  # -1: padding
            segment = torch.full((len(batch), width), -1, dtype=torch.long)  # 0 prefix, k + 1 suffix k, -1 pad
            b_idx, t_idx, targets, owners = [], [], [], []
            for b, r in enumerate(batch):
                row = rows[r]
                p = len(row.prefix)
                tokens[b, :p] = torch.tensor(row.prefix)
                positions[b, :p] = torch.arange(p)
                segment[b, :p] = 0
                for k, (s, o) in enumerate(zip(row.suffixes, row.offsets, strict=True)):
                    if s:
                        tokens[b, o : o + len(s)] = torch.tensor(s)
                        positions[b, o : o + len(s)] = torch.arange(p, p + len(s))
                        segment[b, o : o + len(s)] = k + 1
                for i, k in readers[r]:
                    cont = wants[i][1]  # type: ignore[index]
                    o = row.offsets[k]
                    b_idx += [b] * len(cont)
                    t_idx.append(p - 1)
                    t_idx += range(o, o + len(cont) - 1)
                    targets += cont
                    owners += [i] * len(cont)
            # Query q sees key j when j is not after q and j is in the prefix or q's own
            # segment; a padding position sees itself only (no empty softmax rows).
            positions, segment = positions.to(device), segment.to(device)
            seg_q, seg_k = segment[:, :, None], segment[:, None, :]
            mask = (positions[:, None, :] <= positions[:, :, None]) & ((seg_k == 0) | (seg_k == seg_q))
            mask &= (seg_k >= 0) & (seg_q >= 0)
            mask |= torch.eye(width, dtype=torch.bool, device=device)[None] & (seg_q < 0)
            dtype = model.embed.weight.dtype  # an additive mask: SDPA converts a boolean one every layer
            mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, float("-inf"))
            picked = _tree_hidden(model, tokens.to(device), positions, mask[:, None],
                                  torch.tensor(b_idx, device=device), torch.tensor(t_idx, device=device))  # fmt: skip
            logits = F.linear(model.output_features(picked), model.head_weight).float()  # (N, V)
            target = torch.tensor(targets, device=device)
            token_lp, greedy = _target_logprobs(logits, target)
            bar.update(_collect(results, owners, token_lp, greedy))
    finally:
        bar.close()
        model.train(model_was_training)
    assert all(r is not None for r in results)  # every request was read off some row
    return [r for r in results if r is not None]


def _target_logprobs(logits: torch.Tensor, target: torch.Tensor) -> tuple[list[float], list[bool]]:
    """log_softmax(logits)[target] per row, and whether target is the argmax of the log-probs
    (their first largest, as lm-eval takes it). A full argmax costs more than the log-softmax,
    so it runs only on the rows whose target log-prob equals the row's largest."""
    logp = F.log_softmax(logits, dim=-1)  # (N, V)
    picked = logp.gather(1, target[:, None])[:, 0]
    tied = (picked == logp.amax(dim=-1)).nonzero()[:, 0]
    greedy = torch.zeros(len(target), dtype=torch.bool, device=logits.device)
    if len(tied):
        greedy[tied] = logp[tied].argmax(-1) == target[tied]
    return picked.double().cpu().tolist(), greedy.cpu().tolist()


def _tree_hidden(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    mask: torch.Tensor,
    b_idx: torch.Tensor,
    t_idx: torch.Tensor,
) -> torch.Tensor:
    """The model's last hidden states (before the final norm) at (b_idx, t_idx): the blocks of
    `Transformer.forward` with per-token RoPE `positions` (B, T) and a boolean attention
    `mask` (B, 1, T, T) in place of the causal one; padding has position -1. Everything but
    attention is per token, so it runs on the real tokens only, and the last MLP only on the
    positions read."""
    from lmforge.model.transformer import apply_rope, rope_cos_sin

    B, T = tokens.shape
    real = (positions.reshape(-1) >= 0).nonzero()[:, 0]  # flat indices of real tokens
    flat_of = torch.full((B * T,), -1, dtype=torch.long, device=tokens.device)
    flat_of[real] = torch.arange(len(real), device=tokens.device)
    reads = flat_of[b_idx * T + t_idx]
    cos, sin = rope_cos_sin(positions.reshape(-1)[real], model.rope_inv_freq)
    cos, sin = cos[:, None], sin[:, None]  # (N, 1, d)
    x = model.embed(tokens.reshape(-1)[real])  # (N, D)
    N = len(real)
    last = len(model.blocks) - 1

    def padded(t: torch.Tensor) -> torch.Tensor:  # (N, heads, d) → (B, heads, T, d), zeros at padding
        out = t.new_zeros((B * T, *t.shape[1:]))
        out[real] = t
        return out.view(B, T, *t.shape[1:]).transpose(1, 2)

    def attend(attn, h: torch.Tensor) -> torch.Tensor:  # (N, D) → (N, D), under `mask`
        H, K, d = attn.n_heads, attn.n_kv_heads, attn.head_dim
        q, k, v = attn.qkv(h)
        q, k, v = q.view(N, H, d), k.view(N, K, d), v.view(N, K, d)
        q, k, v = padded(apply_rope(q, cos, sin)), padded(apply_rope(k, cos, sin)), padded(v)
        if K != H:
            k, v = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)  # (B, H, T, d)
        return attn.wo(y.transpose(1, 2).reshape(B * T, H * d)[real])

    for n, block in enumerate(model.blocks):
        x = block.residual(x, lambda h, attn=block.attn: attend(attn, h), block.attn_norm)
        if n == last:  # the last MLP runs only where a position is read
            x = x[reads]
        x = block.residual(x, block.mlp, block.mlp_norm)
    if not len(model.blocks):
        x = x[reads]
    return x
