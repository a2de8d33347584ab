"""Training throughput: lmforge's TrainModule against transformers' Olmo2ForCausalLM on the same
shape, in one process (and against OLMo-core's figures from the same machine, if given).

    python3 benchmarks/throughput.py                                   # GPU: olmo2-1b, seq 4096, micro-batch 4
    python3 benchmarks/throughput.py --preset olmo2-190m --seq 2048 --micro-batch 16
    .venv/bin/python benchmarks/throughput.py --preset tiny            # CPU: tiny, seq 256, 16 instances
    .venv/bin/python benchmarks/throughput.py --preset tiny-moe        # CPU: 8 experts, top-2, against FlexOlmoForCausalLM
                                                                       # (its default grouped_mm experts and its eager loop)

Random tokens, one micro-batch per optimizer step, warm-up steps untimed, then `--steps`
timed steps per round; rounds alternate between the cases (`--repeats`) and medians are
reported. lmforge trains through the real path (`TrainModule.train_batch`: FSDP2 bf16
mixed precision, per-block compile and fused AdamW on GPU; the fused chunked head + loss;
z-loss 1e-5, clipping); transformers trains with torch.compile + bf16 autocast + fused AdamW
on GPU (eager fp32 on CPU) and no z-loss. Also printed: lmforge without z-loss and with
materialised logits (what the z-loss and the fused loss cost), MFU against 989 TFLOP/s and
against a bf16 matmul timed here, peak memory, SDPA backends at this shape (GPU), and with
`--find-max-micro-batch` the largest micro-batch that fits with and without activation
checkpointing. `--olmo-core JSON` (what ../shared/peers/olmo_core_throughput.py wrote in
the same device call) adds the lmforge / OLMo-core ratio. Results go to
`--out`/throughput_<preset>_seq<T>_mbs<B>.json (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchlib import REPO

import torch

Step = Callable[[], torch.Tensor]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(args, device: torch.device, **parallel):
    from lmforge.train.config import RunConfig

    tokens = args.micro_batch * args.seq
    return RunConfig.from_dict({
        "model": {"preset": args.preset, "max_seq_len": max(args.seq, 16), **({"vocab_size": args.vocab} if args.vocab else {})},
        "data": {"train": ["unused-random-tokens"], "seq_len": args.seq, "mask_repetitions": False},
        "optim": {"z_loss": parallel.pop("z_loss", 1e-5), "warmup_steps": 0, "schedule": "constant"},
        "trainer": {"run_dir": "unused", "batch_tokens": tokens, "micro_batch_size": args.micro_batch, "max_steps": 1},
        "parallel": {"device": device.type, "compile": args.compile, **parallel},
    })


def random_batch(vocab: int, rows: int, seq: int, seed: int = 0):
    from lmforge.data.dataset import Batch

    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (rows, seq + 1), generator=g)
    return Batch(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous(), instances=None, n_masked_instances=0)


def lmforge_case(args, world, **parallel) -> tuple[Step, dict]:
    from lmforge.model.size import flops_per_token
    from lmforge.train.module import TrainModule

    cfg = run_config(args, world.device, **parallel)
    module = TrainModule(cfg, world)
    batch = random_batch(cfg.model.vocab_size, args.micro_batch, args.seq)
    if world.device.type == "cuda":
        batch = batch.pin_memory()
    info = {"flops_per_token": flops_per_token(cfg.model, args.seq), "module": module}
    return (lambda: module.train_batch(batch, 1e-4)["loss"]), info


def hf_moe_model(cfg, experts: str | None = None):
    """transformers' MoE of our MoE's shape: OlmoeForCausalLM for pre-norm, FlexOlmoForCausalLM
    (the same MLP in an OLMo 2 block) for reordered. `experts`: transformers' experts
    implementation (None: its default, `grouped_mm` in 5.x; 'eager': a Python loop over the
    experts that received tokens)."""
    import transformers

    kwargs = dict(vocab_size=cfg.padded_vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.expert_hidden,
                  num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
                  max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, num_experts=cfg.moe_num_experts,
                  num_experts_per_tok=cfg.moe_top_k, norm_topk_prob=cfg.moe_norm_topk_prob,
                  tie_word_embeddings=cfg.tie_embeddings, pad_token_id=0, eos_token_id=1,
                  rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}, attn_implementation="sdpa")  # fmt: skip
    if experts is not None:
        kwargs["experts_implementation"] = experts
    if cfg.norm_placement == "pre":
        return transformers.OlmoeForCausalLM(transformers.OlmoeConfig(**kwargs))
    return transformers.FlexOlmoForCausalLM(transformers.FlexOlmoConfig(**kwargs))


def transformers_case(args, device: torch.device, experts: str | None = None) -> tuple[Step, dict]:
    from transformers import Olmo2Config, Olmo2ForCausalLM

    from lmforge.model.config import ModelConfig
    from lmforge.model.hf import hf_config
    from lmforge.model.size import flops_per_token

    cfg = ModelConfig.preset(args.preset, max_seq_len=max(args.seq, 16), **({"vocab_size": args.vocab} if args.vocab else {}))
    with torch.device(device):  # initialise where it trains (a 1B model inits slowly on the host)
        model = hf_moe_model(cfg, experts) if cfg.is_moe else Olmo2ForCausalLM(Olmo2Config(
            **{**hf_config(cfg, eos_token_id=0, pad_token_id=1, dtype=torch.float32),
               "vocab_size": cfg.padded_vocab_size}, attn_implementation="sdpa"))  # the same matmul shapes as ours
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=device.type == "cuda")
    forward = torch.compile(model) if args.compile else model
    tokens = random_batch(cfg.vocab_size, args.micro_batch, args.seq).inputs.to(device)
    cuda = device.type == "cuda"

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = forward(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step, {"flops_per_token": flops_per_token(cfg, args.seq), "model": model, "opt": opt}


def time_steps(step: Step, steps: int, device: torch.device) -> float:
    """Seconds per step over `steps` steps (one sync at the end, as training does)."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(loss)
    sync(device)
    return (time.perf_counter() - start) / steps


def matmul_peak(device: torch.device) -> float:
    """FLOP/s of a large matmul here (bf16 on GPU, fp32 on CPU): what this device really reaches."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = 20 if device.type == "cuda" else 5
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def sdpa_backends(args, device: torch.device) -> dict[str, float | str]:
    """Milliseconds of one causal SDPA forward+backward at this shape under each backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from lmforge.model.config import ModelConfig

    cfg = ModelConfig.preset(args.preset)
    shape = (args.micro_batch, cfg.n_heads, args.seq, cfg.head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    out: dict[str, float | str] = {}
    for name in ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION"):
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue
        try:
            with sdpa_kernel([backend]):
                def once():
                    torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
                    return q.grad
                once()
                out[name] = round(1000 * time_steps(once, 5, device), 3)
        except RuntimeError as e:
            out[name] = f"unavailable ({str(e).splitlines()[0][:80]})"
    return out


def max_micro_batch(args, world, ac: str) -> int:
    """Largest micro-batch (doubling from 1, then one bisection step) whose step fits in memory."""
    def attempt(mbs: int) -> bool:
        trial = argparse.Namespace(**{**vars(args), "micro_batch": mbs, "compile": False})
        try:
            step, _ = lmforge_case(trial, world, activation_checkpointing=ac)
            step()
            sync(world.device)
            return True
        except torch.OutOfMemoryError:
            return False

    def fits(mbs: int) -> bool:
        ok = attempt(mbs)  # its module is unreachable once it returns
        gc.collect()
        torch.cuda.empty_cache()
        return ok

    best, mbs = 0, 1
    while mbs <= 256 and fits(mbs):
        best, mbs = mbs, mbs * 2
    if best >= 2 and fits(best * 3 // 2):  # one step between the last fit and the first failure
        best = best * 3 // 2
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="model preset (default olmo2-1b on GPU, tiny on CPU)")
    parser.add_argument("--seq", type=int, default=None, help="sequence length (default 4096 on GPU, 256 on CPU)")
    parser.add_argument("--micro-batch", type=int, default=None, help="instances per step (default 4 GPU, 16 CPU)")
    parser.add_argument("--vocab", type=int, default=None, help="override the preset's vocabulary size")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default 10 GPU, 5 CPU)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds, cases alternating (default 1 GPU, 5 CPU)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile both (default: on GPU only)")
    parser.add_argument("--cases", default=None,
                        help="comma list of: lmforge, no-z-loss, materialised, transformers, transformers-loop "
                             "(MoE: transformers with its eager expert loop); default all that apply")
    parser.add_argument("--find-max-micro-batch", action="store_true",
                        help="GPU: largest micro-batch with/without AC (searched eagerly: no recompiles per size)")
    parser.add_argument("--olmo-core", type=Path, help="JSON written by olmo_core_throughput.py on this machine")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    from lmforge.parallel import ParallelConfig, init_world

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    args.preset = args.preset or ("olmo2-1b" if cuda else "tiny")
    args.seq = args.seq or (4096 if cuda else 256)
    args.micro_batch = args.micro_batch or (4 if cuda else 16)
    args.steps = args.steps or (10 if cuda else 5)
    args.repeats = args.repeats or (1 if cuda else 5)
    args.compile = cuda if args.compile is None else args.compile
    if not cuda:
        torch.set_num_threads(max(1, torch.get_num_threads()))
    world = init_world(ParallelConfig(device=device.type))
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    command = "python3 benchmarks/throughput.py " + " ".join(sys.argv[1:])
    print(f"{name}, torch {torch.__version__}: {args.preset}, seq {args.seq}, micro-batch {args.micro_batch}, "
          f"compile {args.compile}, {args.steps} steps × {args.repeats} rounds after {args.warmup} warm-up")

    every_case: dict[str, tuple[str, Callable[[], tuple[Step, dict]]]] = {
        "lmforge": ("lmforge", lambda: lmforge_case(args, world)),
        "no-z-loss": ("lmforge no z-loss", lambda: lmforge_case(args, world, z_loss=0.0)),
        "materialised": ("lmforge materialised logits", lambda: lmforge_case(args, world, loss_chunk_tokens=0)),
        "transformers": ("transformers (no z-loss)", lambda: transformers_case(args, device)),
        "transformers-loop": ("transformers experts loop", lambda: transformers_case(args, device, "eager")),
    }
    if args.cases is None:
        from lmforge.model.config import ModelConfig

        is_moe = ModelConfig.preset(args.preset).is_moe
        args.cases = ",".join(c for c in every_case if is_moe or c != "transformers-loop")
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in every_case]
    if unknown or "lmforge" not in chosen:
        parser.error(f"--cases: {', '.join(unknown) or 'lmforge is required'}; choose from {', '.join(every_case)}")
    cases = dict(every_case[c] for c in chosen)
    # On GPU one case lives at a time (memory), its rounds back to back; on CPU all are built
    # first and the rounds alternate between cases, so machine noise hits all alike.
    seconds: dict[str, list[float]] = {case: [] for case in cases}
    fpt: dict[str, int] = {}
    memory: dict[str, float] = {}

    def build(case: str) -> Step:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        step, info = cases[case]()
        fpt[case] = info["flops_per_token"]
        for _ in range(args.warmup):
            step()
        return step

    if cuda:
        for case in cases:
            step = build(case)
            seconds[case] = [time_steps(step, args.steps, device) for _ in range(args.repeats)]
            memory[case] = torch.cuda.max_memory_allocated() / 2**30
            step = None
            gc.collect()
            torch.cuda.empty_cache()
    else:
        steps = {case: build(case) for case in cases}
        for _ in range(args.repeats):
            for case, step in steps.items():
                seconds[case].append(time_steps(step, args.steps, device))
    peak_measured = matmul_peak(device)
    tokens = args.micro_batch * args.seq
    result = {"device": name, "torch": torch.__version__, "preset": args.preset, "seq": args.seq,
              "micro_batch": args.micro_batch, "compile": args.compile, "command": command,
              "matmul_peak_tflops": peak_measured / 1e12, "cases": {}}
    print(f"{'case':<30} {'tokens/s':>11} {'MFU/989T':>9} {'MFU/matmul':>11} {'peak GiB':>9}")
    for case, runs in seconds.items():
        rate = tokens / statistics.median(runs)
        row = {"tokens_per_s": rate, "runs_s_per_step": runs, "flops_per_token": fpt[case],
               "mfu_vs_989": rate * fpt[case] / 989e12 if cuda else None,
               "mfu_vs_matmul": rate * fpt[case] / peak_measured, "peak_mem_gib": memory.get(case)}
        result["cases"][case] = row
        mfu989 = f"{row['mfu_vs_989']:.1%}" if cuda else "-"
        mem = f"{row['peak_mem_gib']:.1f}" if row["peak_mem_gib"] is not None else "-"
        print(f"{case:<30} {rate:>11,.0f} {mfu989:>9} {row['mfu_vs_matmul']:>11.1%} {mem:>9}")
    rates = {case: r["tokens_per_s"] for case, r in result["cases"].items()}
    ratios = {}
    for label, other, cost in (("lmforge / transformers", "transformers (no z-loss)", False),
                               ("lmforge / transformers experts loop", "transformers experts loop", False),
                               ("z-loss cost (1 - with / without)", "lmforge no z-loss", True),
                               ("fused loss / materialised logits", "lmforge materialised logits", False)):
        if other in rates:
            ratios[label] = 1 - rates["lmforge"] / rates[other] if cost else rates["lmforge"] / rates[other]
    if args.olmo_core and args.olmo_core.exists():
        peer = json.loads(args.olmo_core.read_text())
        oc = next((v["tokens_per_s"] for k, v in peer.items() if k.startswith("olmo_core_") and isinstance(v, dict)), None)
        if oc:
            result["olmo_core_tokens_per_s"] = oc
            ratios["lmforge / OLMo-core"] = rates["lmforge"] / oc
    result["ratios"] = ratios
    for key, value in ratios.items():
        print(f"{key:<34} {value:8.3f}" + ("" if key.startswith("z-loss") else "x"))
    if cuda:
        result["sdpa_ms_fwd_bwd"] = sdpa_backends(args, device)
        print(f"SDPA at this shape (ms fwd+bwd): {result['sdpa_ms_fwd_bwd']}")
        if args.find_max_micro_batch:
            result["max_micro_batch"] = {ac: max_micro_batch(args, world, ac) for ac in ("none", "full")}
            print(f"largest micro-batch that fits: {result['max_micro_batch']} (activation checkpointing none / full)")
    print(f"command: {command}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"throughput_{args.preset}_seq{args.seq}_mbs{args.micro_batch}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    world.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
