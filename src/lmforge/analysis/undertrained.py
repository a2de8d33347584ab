"""Under-trained ("glitch") tokens: ids the tokenizer has but the model barely learned.

After Land & Bartolo (2024), "Fishing for Magikarp: Automatically Detecting Under-trained
Tokens in Large Language Models". Two stages:

1. **Indicators** from the weights alone.
   * Unembedding (main): every id that never appears as a training target gets the same
     gradient, "be less likely everywhere", so their rows of the output head drift together
     (Adam makes even tiny gradients move a row at full speed; weight decay shrinks what set
     them apart at init). We centre the head U (real ids only), project out its first
     principal component (a direction shared by all rows that would otherwise dominate every
     cosine; kept when it *is* the unused tokens' direction, see `unembedding_scores`),
     average the rows of *reference* tokens known to be unused, and score each id by the
     cosine similarity of its row to that average: high = looks unused.
   * Input-embedding L2 norm (untied models only): an id never seen as input gets no gradient,
     and lmforge never decays the embedding, so its row keeps its small init norm: low =
     looks unused. With tied embeddings the one matrix is the head, so this is not reported.
2. **Verification**: prompts in which the candidate is repeated in a pattern the model can copy
   by induction; the probability the model gives to the candidate where the pattern predicts it
   is its *repeat probability*. A model that learned a token copies it readily; one that never
   saw it has pushed its logit down everywhere and cannot. A candidate whose best probability
   over the prompts is below `threshold` is *verified* under-trained (default 1%, the paper's
   cut-off; a tiny model that has not yet learned to copy gives trained tokens only about their
   unigram probability, so pass a lower threshold for it, e.g. 1e-4 against 1/V ≈ 2e-3).

Reference tokens, in order of preference: `reference_ids` given by the caller; else the ids
with a zero count in `token_counts` (never in the training data, so certainly untrained, EOS
aside); else added/special tokens other than EOS that look reserved or padding-like (`<|pad|>`,
`<unused3>`, `<|reserved_special_token_7|>`, ...), which a pretraining corpus never contains.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.data.token_files import TokenFiles
from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import LmforgeError

DEFAULT_PERCENTILE = 2.0
"""Candidates: ids in the top 2% by the indicator (the paper verifies a few percent of the
vocabulary; 2% of 100k ids is 2,000 prompts' worth)."""
DEFAULT_THRESHOLD = 0.01
"""Verified under-trained when the best repeat probability is below 1% (the paper's cut-off:
a trained token copied in an obvious pattern gets tens of percent; an untrained one gets about
as much as a random id)."""
DEFAULT_MAX_VERIFY = 500

RESERVED_PATTERN = re.compile(r"pad|unused|reserved|extra_id|placeholder|dummy|unk", re.IGNORECASE)

# Filler words of the verification prompts: frequent English words, so any tokenizer trained on
# text has them (each becomes one or a few ids; the prompts are built from ids).
FILLERS = (
    (" the", " of", " and"),
    (" in", " to", " was"),
    (" he", " it", " for"),
)


# -- indicators ---------------------------------------------------------------------------------


def first_pc(centred: torch.Tensor) -> torch.Tensor:
    """Unit first principal direction of an already centred (N, D) matrix (the covariance, D×D,
    is eigendecomposed in float64: cheap even for a 100k-row head)."""
    cov = (centred.T @ centred).double()
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    return vecs[:, -1].to(centred.dtype)


def remove_first_pc(matrix: torch.Tensor) -> torch.Tensor:
    """`matrix` (N, D) in float32, centred (column means subtracted), with its first principal
    component projected out."""
    m = matrix.float()
    centred = m - m.mean(dim=0, keepdim=True)
    pc1 = first_pc(centred)
    return centred - torch.outer(centred @ pc1, pc1)


PC_ALIGNMENT_LIMIT = 0.8
"""`remove_pc="auto"` keeps the first PC when the reference direction lies this much along it."""


def unembedding_scores(unembedding: torch.Tensor, reference_ids: Sequence[int],
                       *, remove_pc: bool | str = "auto") -> tuple[np.ndarray, dict[str, Any]]:
    """Cosine similarity of each row of `unembedding` (real ids only) to the mean of the
    reference rows, after centring and (see below) removing the first principal component.
    High = like the known unused tokens. Also returns what was done, for the report.

    The paper removes the first PC because in large models it is a component shared by all
    rows that says nothing about training. When unused ids are a large share of the vocabulary
    (small tokenizers: most of the 256 byte tokens and many intermediate BPE merges never
    occur), the first PC instead *is* the direction separating them from trained tokens, and
    removing it erases the signal. `remove_pc="auto"` therefore removes it unless the centred
    reference mean lies mostly along it (|cos| > `PC_ALIGNMENT_LIMIT`)."""
    if len(reference_ids) == 0:
        raise LmforgeError("the unembedding indicator needs at least one reference (known unused) token")
    m = unembedding.float()
    centred = m - m.mean(dim=0, keepdim=True)
    pc1 = first_pc(centred)
    index = torch.as_tensor(list(reference_ids), dtype=torch.long, device=centred.device)
    ref_dir = centred[index].mean(dim=0)
    alignment = float((ref_dir @ pc1).abs() / ref_dir.norm().clamp_min(1e-12))
    removed = alignment <= PC_ALIGNMENT_LIMIT if remove_pc == "auto" else bool(remove_pc)
    u = centred - torch.outer(centred @ pc1, pc1) if removed else centred
    ref = u[index].mean(dim=0)
    cos = (u @ ref) / (u.norm(dim=1) * ref.norm()).clamp_min(1e-12)
    return cos.double().cpu().numpy(), {"first_pc_removed": removed, "reference_pc1_alignment": round(alignment, 4)}


def special_token_ids(tokenizer: Tokenizer) -> set[int]:
    """Added tokens marked special (EOS, pad, ...): never candidates."""
    return {i for i, tok in tokenizer.hf.get_added_tokens_decoder().items() if tok.special}


def default_reference_ids(
    tokenizer: Tokenizer, vocab_size: int, token_counts: np.ndarray | None
) -> tuple[list[int], str]:
    """The known-unused tokens to compare against, and a one-line description of the choice."""
    if token_counts is not None:
        ids = [i for i in np.flatnonzero(token_counts[:vocab_size] == 0).tolist() if i != tokenizer.eos_token_id]
        if ids:
            return ids, "ids with zero count in the training data"
    added = tokenizer.hf.get_added_tokens_decoder()
    ids = sorted(
        i for i, tok in added.items()
        if i < vocab_size and i != tokenizer.eos_token_id
        and (i == tokenizer.pad_token_id or RESERVED_PATTERN.search(tok.content))
    )
    if ids:
        return ids, "reserved/padding-like added tokens (never in a pretraining corpus)"
    raise LmforgeError(
        "no known-unused reference tokens: the tokenizer has no pad/reserved tokens; pass token counts of the "
        "training data (token_counts_from_run) or reference_ids"
    )


# -- token counts -------------------------------------------------------------------------------


def token_counts_from_folders(folders: Sequence[str | Path], vocab_size: int | None = None,
                              *, chunk: int = 1 << 24) -> np.ndarray:
    """How often each id occurs in lmforge token folders (int64, length `vocab_size`, or the
    folders' tokenizer vocabulary size)."""
    if not folders:
        raise LmforgeError("give at least one token folder to count")
    counts: np.ndarray | None = None
    for folder in folders:
        files = TokenFiles(folder)
        size = vocab_size or files.vocab_size
        if counts is None:
            counts = np.zeros(size, dtype=np.int64)
        for part in files.parts:
            for start in range(0, len(part), chunk):
                piece = np.asarray(part[start : start + chunk])
                binned = np.bincount(piece, minlength=len(counts))
                if len(binned) > len(counts):
                    raise LmforgeError(f"{folder}: holds id {int(piece.max())}, beyond vocab_size={len(counts)}")
                counts += binned
    assert counts is not None
    return counts


def token_counts_from_run(run_dir: str | Path, vocab_size: int | None = None) -> np.ndarray:
    """Token counts of a run's training data (`data.train` of its config.yaml; a checkpoint
    folder `runs/x/checkpoints/step-N` works too, it carries the config)."""
    from lmforge.analysis.batches import load_run_config

    cfg = load_run_config(run_dir)
    return token_counts_from_folders(cfg.data.train, vocab_size or cfg.model.vocab_size)


# -- verification -------------------------------------------------------------------------------


def _filler_ids(tokenizer: Tokenizer) -> list[list[int]]:
    groups = []
    for words in FILLERS:
        ids = [i for w in words for i in tokenizer.encode(w)]
        groups.append(ids)
    return groups


def repeat_prompts(candidate: int, tokenizer: Tokenizer) -> list[tuple[list[int], int]]:
    """Prompts (ids, position whose next-token prediction should be `candidate`).

    Base models trained on text copy through induction: once `a b X c` has been seen twice,
    after `a b` comes `X`. The three prompts put the candidate at different places in the
    pattern (after fillers, first, between repeats of itself) with different fillers, each
    starting after EOS as a document does."""
    eos = tokenizer.eos_token_id
    f1, f2, f3 = _filler_ids(tokenizer)
    x = [candidate]
    prompts = [
        [eos] + (f1 + x + f2) * 3 + f1,  # ... the of and X in to was | the of and -> X
        [eos] + (x + f3 + f1[:1]) * 3,  # X he it for the | ... the -> X
        [eos] + (f2[:2] + x + x) * 3 + f2[:2],  # in to X X | ... in to -> X
    ]
    return [(p, len(p) - 1) for p in prompts]


@torch.no_grad()
def repeat_probabilities(model: torch.nn.Module, tokenizer: Tokenizer, ids: Sequence[int],
                         *, batch_size: int = 32) -> np.ndarray:
    """(len(ids), n_prompts) probabilities that the model repeats each id where its prompt's
    pattern says it comes next."""
    ids = list(ids)
    if not ids:
        return np.zeros((0, 3))
    device = next(model.parameters()).device
    per_prompt = []
    n_prompts = len(repeat_prompts(ids[0], tokenizer))
    was_training = model.training
    model.eval()
    try:
        for k in range(n_prompts):
            probs = []
            for start in range(0, len(ids), batch_size):
                chunk = ids[start : start + batch_size]
                rows = [repeat_prompts(c, tokenizer)[k] for c in chunk]
                tokens = torch.tensor([r[0] for r in rows], dtype=torch.long, device=device)
                pos = rows[0][1]
                logits = model(tokens)[:, pos, :].float()
                logits = logits[:, : model.cfg.vocab_size]  # padding rows are no ids
                p = torch.softmax(logits, dim=-1)
                probs.append(p[torch.arange(len(chunk), device=device), torch.tensor(chunk, device=device)].cpu())
            per_prompt.append(torch.cat(probs))
    finally:
        model.train(was_training)
    return torch.stack(per_prompt, dim=1).double().numpy()


# -- the whole method ---------------------------------------------------------------------------


def token_text(tokenizer: Tokenizer, token_id: int) -> dict[str, str]:
    """The vocabulary entry (byte-level form, e.g. 'Ġthe') and its decoded text, both as
    printable `repr`-style strings (raw bytes and control characters escaped)."""
    piece = tokenizer.hf.id_to_token(token_id)
    decoded = tokenizer.decode([token_id])
    return {"token": _printable(piece if piece is not None else ""), "text": _printable(decoded)}


def _printable(s: str) -> str:
    return repr(s)[1:-1] if not s.isprintable() or "\\" in s else s


@torch.no_grad()
def find_undertrained(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    *,
    token_counts: np.ndarray | None = None,
    reference_ids: Sequence[int] | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    indicator: str = "unembedding",
    remove_pc: bool | str = "auto",
    verify: bool = True,
    max_verify: int = DEFAULT_MAX_VERIFY,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Rank the vocabulary by how under-trained each id looks, verify the top `percentile`
    percent (at most `max_verify`, best-ranked first) by prompting, and return a JSON-ready
    dict: `method` (parameters), `summary` (counts), `candidates` (rank order).

    `indicator` picks the ranking: "unembedding" (cosine to the unused reference, the
    default) or "embedding_norm" (input-embedding L2 norm, low first; untied models only).
    `reference_ids` overrides the known-unused set (see the module docstring for the default);
    `token_counts` (per id, e.g. `token_counts_from_run`) also adds each candidate's count;
    `remove_pc` is True, False or "auto" (see `unembedding_scores`).
    Special tokens are never candidates; reference tokens are, flagged `reference`."""
    cfg = model.cfg
    n = min(cfg.vocab_size, tokenizer.vocab_size)
    if not 0 < percentile <= 100:
        raise LmforgeError(f"percentile must be in (0, 100], got {percentile}")
    if indicator not in ("unembedding", "embedding_norm"):
        raise LmforgeError(f"indicator must be 'unembedding' or 'embedding_norm', got {indicator!r}")
    tied = bool(cfg.tie_embeddings)
    if indicator == "embedding_norm" and tied:
        raise LmforgeError("embedding_norm needs an untied model: with tied embeddings use 'unembedding'")
    if token_counts is not None:
        token_counts = np.asarray(token_counts)
        if len(token_counts) < n:
            raise LmforgeError(f"token_counts has {len(token_counts)} entries, the vocabulary {n}")

    if reference_ids is not None:
        ref = sorted({int(i) for i in reference_ids})
        if any(not 0 <= i < n for i in ref):
            raise LmforgeError(f"reference_ids must be ids in [0, {n})")
        ref_source = "given by the caller"
    else:
        ref, ref_source = default_reference_ids(tokenizer, n, token_counts)

    cos, pc_info = unembedding_scores(model.head_weight.detach()[:n], ref, remove_pc=remove_pc)
    norms = None if tied else model.embed.weight.detach()[:n].float().norm(dim=1).double().cpu().numpy()
    # "Badness" ordering: larger = more under-trained-looking.
    badness = cos if indicator == "unembedding" else -norms
    specials = special_token_ids(tokenizer)
    eligible = np.array([i for i in range(n) if i not in specials], dtype=np.int64)
    order = eligible[np.argsort(-badness[eligible], kind="stable")]
    n_candidates = max(1, math.ceil(len(eligible) * percentile / 100))
    candidates = order[:n_candidates].tolist()
    cutoff = float(badness[candidates[-1]])

    to_verify = candidates[:max_verify] if verify else []
    probs = repeat_probabilities(model, tokenizer, to_verify, batch_size=batch_size) if to_verify else None

    ref_set = set(ref)
    norm_rank = None
    if norms is not None:
        norm_rank = np.empty(n, dtype=np.int64)
        norm_rank[eligible[np.argsort(norms[eligible], kind="stable")]] = np.arange(1, len(eligible) + 1)
    rows = []
    for rank, token_id in enumerate(candidates, start=1):
        row: dict[str, Any] = {"rank": rank, "id": int(token_id), **token_text(tokenizer, token_id),
                               "unembedding_cosine": round(float(cos[token_id]), 6)}
        if norms is not None:
            row["embedding_norm"] = round(float(norms[token_id]), 6)
            row["embedding_norm_rank"] = int(norm_rank[token_id])
        if token_counts is not None:
            row["count"] = int(token_counts[token_id])
        row["reference"] = token_id in ref_set
        if probs is not None and rank <= len(to_verify):
            p = probs[rank - 1]
            row["repeat_prob_max"] = float(p.max())
            row["repeat_prob_mean"] = float(p.mean())
            row["verified"] = bool(p.max() < threshold)
        else:
            row["repeat_prob_max"] = row["repeat_prob_mean"] = row["verified"] = None
        rows.append(row)

    verified = [r for r in rows if r["verified"]]
    return {
        "method": {
            "name": "fishing-for-magikarp (Land & Bartolo 2024)",
            "indicator": indicator,
            "percentile": percentile,
            "indicator_cutoff": cutoff,
            "threshold": threshold,
            "verify": verify,
            "max_verify": max_verify,
            "reference": ref_source,
            "reference_count": len(ref),
            "remove_pc": remove_pc,
            **pc_info,
            "tied_embeddings": tied,
            "prompts": len(repeat_prompts(0, tokenizer)),
        },
        "summary": {
            "vocab_size": n,
            "special_tokens": len(specials),
            "candidates": len(rows),
            "verified_candidates": len(to_verify),
            "verified_undertrained": len(verified),
            "verified_undertrained_non_reference": sum(1 for r in verified if not r["reference"]),
            **({"never_seen": int((token_counts[:n] == 0).sum())} if token_counts is not None else {}),
        },
        "candidates": rows,
    }


def undertrained_from_checkpoint(
    checkpoint: str | Path, *, tokenizer: str | Path | None = None, count_tokens: bool = False,
    device: str | torch.device = "cpu", **kwargs: Any,
) -> dict[str, Any]:
    """`find_undertrained` on a model folder (training checkpoint or consolidated). The
    tokenizer is the one saved with it unless given; with `count_tokens`, the training data
    named by the checkpoint's config.yaml is counted (one pass over it) for the reference set."""
    from lmforge.data.tokenizer import load_tokenizer
    from lmforge.model.io import check_tokenizer_fits, load_model, load_model_tokenizer

    model = load_model(checkpoint, device=device)
    tok = load_tokenizer(tokenizer) if tokenizer is not None else load_model_tokenizer(checkpoint)
    if tok is None:
        raise LmforgeError(f"{checkpoint}: no tokenizer.json saved with the model; pass a tokenizer")
    check_tokenizer_fits(model.cfg, tok, str(checkpoint))
    counts = token_counts_from_run(checkpoint, model.cfg.vocab_size) if count_tokens else None
    return find_undertrained(model, tok, token_counts=counts, **kwargs)


# -- report -------------------------------------------------------------------------------------


def write_report(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """`undertrained.json` (the result as is) and `undertrained.md` (every candidate) in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "undertrained.json", out_dir / "undertrained.md"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    md_path.write_text("\n".join(["# Under-trained tokens", "", *_summary_lines(result), "",
                                   *_table_lines(result["candidates"])]) + "\n")
    return json_path, md_path


def format_summary(result: dict[str, Any], top: int = 20) -> str:
    """What the console shows: the summary and the `top` highest-ranked candidates (a large
    vocabulary has thousands; the files hold them all)."""
    rows = result["candidates"]
    lines = [*_summary_lines(result), "", *_table_lines(rows[:top])]
    if len(rows) > top:
        lines.append(f"... {len(rows) - top:,} more candidates in undertrained.md / undertrained.json")
    return "\n".join(lines)


def _summary_lines(result: dict[str, Any]) -> list[str]:
    m, s = result["method"], result["summary"]
    return [
        f"Method: {m['name']}; indicator `{m['indicator']}`, top {m['percentile']}% of {s['vocab_size']} ids; "
        f"reference: {m['reference_count']} tokens ({m['reference']}); verified when the repeat probability "
        f"is below {m['threshold']:g} in all {m['prompts']} prompts.",
        "",
        f"{s['candidates']} candidates, {s['verified_candidates']} verified by prompting, "
        f"**{s['verified_undertrained']} under-trained** "
        f"({s['verified_undertrained_non_reference']} outside the reference set).",
    ]


def _table_lines(rows: list[dict[str, Any]]) -> list[str]:
    has_norm = any("embedding_norm" in r for r in rows)
    has_count = any("count" in r for r in rows)
    header = ["rank", "id", "token", "text", "unembedding cos"]
    if has_norm:
        header += ["embedding norm"]
    if has_count:
        header += ["count"]
    header += ["repeat prob (max)", "verified"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [str(r["rank"]), str(r["id"]), f"`{_md(r['token'])}`", f"`{_md(r['text'])}`",
                 f"{r['unembedding_cosine']:.3f}"]
        if has_norm:
            cells.append(f"{r['embedding_norm']:.4f}")
        if has_count:
            cells.append(str(r.get("count", "")))
        p = r["repeat_prob_max"]
        cells.append("" if p is None else f"{p:.2e}")
        v = r["verified"]
        cells.append("" if v is None else ("yes" if v else "no") + (" (ref)" if r["reference"] else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("`", "'")
