"""Rank-classification metrics exactly as OLMES computes them (`oe_eval.metrics.metric.MCAccuracy`,
allenai/olmes): per document, from the summed log-probability of each answer choice,

* acc_raw:       argmax of sum_logits;
* acc_per_token: argmax of sum_logits / max(num_tokens, 1);
* acc_per_char:  argmax of sum_logits / max(len(continuation), 1)  (lm-eval's acc_norm);
* acc_per_byte:  argmin of bits_per_byte = -log2(e) · sum_logits / max(utf-8 bytes of continuation, 1);
* acc_uncond:    argmax of sum_logits - sum_logits_uncond, the same continuation scored after
                 the bare "Answer:" (PMI); only where the task file carries those requests
                 (`uncond_docid_offset`), else None;

ties go to the first choice (Python's `list.index(max(...))`, as OLMES); each is 1 when the pick
is the gold index. Also the gold choice's sum_logits_corr, logits_per_token_corr,
logits_per_char_corr and bits_per_byte_corr. A task's score is the mean over documents.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lmforge.eval.scoring import Score

LOG2_E = 1 / math.log(2)

ACC_METRICS = ("acc_raw", "acc_per_token", "acc_per_char", "acc_per_byte", "acc_uncond")
CORR_METRICS = ("sum_logits_corr", "logits_per_token_corr", "logits_per_char_corr", "bits_per_byte_corr")


def doc_metrics(
    gold: int, continuations: Sequence[str], scores: Sequence[Score], uncond: Sequence[Score] | None = None
) -> dict[str, Any]:
    """OLMES's per-document record: predicted indices, accuracies and the gold choice's scores."""
    sum_logits = [s.logprob for s in scores]
    per_token = [s.logprob / max(s.num_tokens, 1) for s in scores]
    per_char = [s.logprob / max(len(c), 1) for s, c in zip(scores, continuations, strict=True)]
    bpb = [-LOG2_E * s.logprob / max(len(c.encode("utf-8")), 1) for s, c in zip(scores, continuations, strict=True)]
    pred_raw = sum_logits.index(max(sum_logits))
    pred_token = per_token.index(max(per_token))
    pred_char = per_char.index(max(per_char))
    pred_byte = bpb.index(min(bpb))
    pred_uncond = None
    if uncond is not None:
        pmi = [s.logprob - u.logprob for s, u in zip(scores, uncond, strict=True)]
        pred_uncond = pmi.index(max(pmi))
    return {
        "gold": gold,
        "predicted_index_raw": pred_raw,
        "predicted_index_per_token": pred_token,
        "predicted_index_per_char": pred_char,
        "predicted_index_per_byte": pred_byte,
        "predicted_index_uncond": pred_uncond,
        "acc_raw": int(pred_raw == gold),
        "acc_per_token": int(pred_token == gold),
        "acc_per_char": int(pred_char == gold),
        "acc_per_byte": int(pred_byte == gold),
        "acc_uncond": None if pred_uncond is None else int(pred_uncond == gold),
        "sum_logits_corr": sum_logits[gold],
        "logits_per_token_corr": per_token[gold],
        "logits_per_char_corr": per_char[gold],
        "bits_per_byte_corr": bpb[gold],
        "sum_logits": sum_logits,
        "num_tokens": [s.num_tokens for s in scores],
        "num_chars": [len(c) for c in continuations],
        "sum_logits_uncond": None if uncond is None else [u.logprob for u in uncond],
    }


def aggregate(records: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Mean of each metric over documents (None for a metric no document has)."""
    out: dict[str, float | None] = {}
    for name in (*ACC_METRICS, *CORR_METRICS):
        values = [r[name] for r in records if r.get(name) is not None]
        out[name] = sum(values) / len(values) if values else None
    return out
