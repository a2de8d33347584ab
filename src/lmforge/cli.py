"""The `lmforge` command. Each subcommand parses its arguments and calls one library function;
user mistakes (`LmforgeError`) print one line and exit with status 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lmforge.cli_data import add_data_commands
from lmforge.errors import LmforgeError, RollbackRequested, StragglersEvicted

log = logging.getLogger("lmforge")

DTYPES = ("float32", "bfloat16", "float16")


# -- subcommands ----------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> None:
    import torch

    from lmforge.data.tokenizer import load_tokenizer
    from lmforge.model.hf import to_hf
    from lmforge.model.io import load_model, load_model_tokenizer

    model = load_model(args.checkpoint)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else load_model_tokenizer(args.checkpoint)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    out = to_hf(model, args.out_dir, tokenizer, dtype=dtype, overwrite=args.overwrite)
    note = "" if tokenizer else " (no tokenizer: pass --tokenizer to include one)"
    stored = str(dtype or model.embed.weight.dtype).removeprefix("torch.")
    print(f"wrote {out} (Olmo2ForCausalLM, {stored}){note}")


def cmd_import(args: argparse.Namespace) -> None:
    import torch
    import yaml

    from lmforge.model.config import ModelConfig
    from lmforge.model.hf import import_hf
    from lmforge.model.io import CONFIG_FILE, load_model_tokenizer

    dtype = getattr(torch, args.dtype) if args.dtype else None
    out = import_hf(args.hf_folder, args.out_dir, dtype=dtype, overwrite=args.overwrite)
    cfg = ModelConfig.from_dict(yaml.safe_load((out / CONFIG_FILE).read_text()))
    tokenizer = load_model_tokenizer(out)
    shape = (f"d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads ({cfg.kv_heads} kv), "
             f"mlp {cfg.mlp_hidden}, vocab {cfg.vocab_size:,}")
    note = f"tokenizer {tokenizer.vocab_size:,} ids" if tokenizer else "no tokenizer (the folder has no tokenizer.json)"
    print(f"wrote {out}: {shape}; {note}")
    print(f"continue pretraining it: lmforge train CONFIG --init-from {out}  (or --init-from {args.hf_folder})")


def cmd_consolidate(args: argparse.Namespace) -> None:
    from lmforge.model.io import consolidate

    out = consolidate(args.checkpoint, args.out_dir, overwrite=args.overwrite)
    print(f"wrote {out} (one model.safetensors + model.yaml)")


def cmd_model_info(args: argparse.Namespace) -> None:
    from lmforge.model.config import PRESETS, ModelConfig
    from lmforge.model.size import describe

    names = args.presets or list(PRESETS)
    rows = {name: describe(ModelConfig.preset(name), args.seq_len) for name in names}
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'preset':<12} {'params':>14} {'active':>14} {'non-embedding':>14} {'vocab':>8} {'seq':>6} "
          f"{'train FLOPs/token':>18}")  # fmt: skip
    for name, r in rows.items():
        active = r.get("params_active", r["params_total"])  # MoE: what one token uses (k of E experts)
        print(
            f"{name:<12} {r['params_total']:>14,} {active:>14,} {r['params_non_embedding']:>14,} "
            f"{r['padded_vocab_size']:>8,} {r['seq_len']:>6} {r['train_flops_per_token']:>18.4g}"
        )


def cmd_train(args: argparse.Namespace) -> None:
    from lmforge.experiments.train_run import train
    from lmforge.train.config import RunConfig

    overrides = list(args.overrides)
    if args.init_from:
        overrides += [f"--trainer.init_from={args.init_from}"] + (["--trainer.init_optimizer=true"] if args.init_optimizer else [])
    cfg = RunConfig.from_yaml(args.config, overrides)
    metrics = train(cfg)
    if metrics and int(os.environ.get("RANK", 0)) == 0:
        print(f"done: step {cfg.max_steps}, loss {float(metrics['loss']):.4f}; run in {cfg.trainer.run_dir}")


def cmd_inspect_batch(args: argparse.Namespace) -> None:
    from lmforge.analysis.batches import batch_documents, format_instance

    rows = batch_documents(args.run, args.step)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    for row in rows:
        if args.ids_only or "covered" not in (row["documents"] or [{}])[0]:
            print(f"instance {row['instance']} (tokens {row['start']}:{row['end']})")
            for doc in row["documents"]:
                words = f"  {doc['first_words']!r}" if "first_words" in doc else ""
                print(f"  {doc['id']:<40} {doc['source']:<14}{words}")
        else:
            print(format_instance(row))


def cmd_analyze_undertrained(args: argparse.Namespace) -> None:
    from lmforge.analysis.undertrained import format_summary, undertrained_from_checkpoint, write_report

    result = undertrained_from_checkpoint(args.checkpoint, tokenizer=args.tokenizer, count_tokens=args.count_tokens,
                                          percentile=args.percentile, threshold=args.threshold,
                                          verify=not args.no_verify, max_verify=args.max_verify)
    json_path, md_path = write_report(result, args.out or args.checkpoint)
    print(format_summary(result, top=args.top))
    print(f"wrote {json_path} and {md_path} (every candidate)")


def cmd_soup(args: argparse.Namespace) -> None:
    from lmforge.model.soup import soup

    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    print(f"wrote {soup(args.checkpoints, args.out, weights=weights, overwrite=args.overwrite)}")


def cmd_analyze_spikes(args: argparse.Namespace) -> None:
    from lmforge.analysis.spikes import format_report, plot_spikes, spike_report

    report = spike_report(args.run, top=args.top)
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(format_report(report, args.run))
    print(f"wrote {plot_spikes(args.run, report['spikes'], args.out, stretches=report['stretches'])}")


def cmd_release(args: argparse.Namespace) -> None:
    from lmforge.release.bundle import build_release

    out = build_release(Path(args.run), Path(args.out), checkpoints=args.checkpoints, tasks=args.tasks,
                        eval_limit=args.eval_limit, score_revisions=args.score_revisions,
                        include_data=args.include_data, stage=args.stage,
                        license=args.license, overwrite=args.overwrite)
    index = json.loads((out / "revisions.json").read_text())
    names = ", ".join(r["name"] for r in index["revisions"])
    print(f"wrote {out}: {len(index['revisions'])} revision(s) ({names}); check it with `lmforge verify {out}`")


def cmd_release_push(args: argparse.Namespace) -> None:
    from lmforge.release.push import push_release

    pushed = push_release(Path(args.release), args.repo, token=args.token, private=args.private)
    print(f"pushed {args.repo}: {', '.join(pushed)}")


def cmd_verify(args: argparse.Namespace) -> int:
    from lmforge.release.verify import verify

    report = verify(Path(args.release), step=args.step, sample=None if args.all else args.sample,
                    data_dir=Path(args.data) if args.data else None, scores=args.scores)
    for line in report.problems:
        print(line)
    print(report.summary())
    return 0 if report.ok else 1


def cmd_analyze_faults(args: argparse.Namespace) -> None:
    from lmforge.analysis.faults import fault_report, format_report, hosts_to_exclude

    run_dir = Path(args.run)
    if run_dir.is_file():  # a run config (what the sbatch script has): its trainer.run_dir
        from lmforge.train.config import RunConfig

        run_dir = RunConfig.from_yaml(run_dir, args.overrides).trainer.run_dir
    if args.exclude_hosts:
        print(",".join(hosts_to_exclude(run_dir, since=args.since)))
        return
    report = fault_report(run_dir)
    print(json.dumps(report, indent=1) if args.json else format_report(report))


def cmd_analyze_coord_check(args: argparse.Namespace) -> None:
    from lmforge.experiments.coord_check import coord_check, format_table, write_coord_check
    from lmforge.train.config import RunConfig

    try:
        widths = [int(w) for w in args.widths.split(",") if w.strip()]
    except ValueError:
        raise LmforgeError(f"--widths: expected comma-separated integers like 64,128,256, got {args.widths!r}") \
            from None
    cfg = RunConfig.from_yaml(args.config, args.set)
    result = coord_check(cfg, widths, steps=args.steps, seeds=args.seeds, lr=args.lr, progress=True)
    print(format_table(result))
    out = Path(args.out) if args.out else Path(args.config).parent / "coord-check"
    json_path, png_path = write_coord_check(result, out)
    print(f"wrote {json_path} and {png_path}")


def cmd_plot(args: argparse.Namespace) -> None:
    from lmforge.plot import plot_run

    print(f"wrote {plot_run(args.run, args.out)}")


def cmd_ablate(args: argparse.Namespace) -> None:
    from lmforge.experiments.ablate import load_ablation, run_ablation
    from lmforge.experiments.ablate_report import REPORT_FILES, verdict

    cfg = load_ablation(args.config, args.set)
    summary = run_ablation(cfg, report_only=args.report_only)
    for pair in summary["pairs"]:
        print(f"  {verdict(pair)}")
    if summary["missing"]:
        print(f"  not yet trained: {', '.join(summary['missing'])}")
    print(f"wrote {', '.join(str(Path(cfg.out) / f) for f in ('results.jsonl', *REPORT_FILES))}")


def cmd_ladder(args: argparse.Namespace) -> None:
    from lmforge.experiments.ladder import load_ladder, parse_count, predict, run_ladder

    target, predicting = list(args.target), args.target[0] == "predict"
    if predicting:
        if len(target) != 2 or args.fit_only:
            raise LmforgeError("usage: lmforge ladder predict LADDER.yaml --params N --tokens D")
        if args.params is None or args.tokens is None:
            raise LmforgeError("lmforge ladder predict needs --params N and --tokens D "
                               "(e.g. --params 1.2e9 --tokens 2.4e10)")
        cfg = load_ladder(target[1], args.set)
        result = predict(cfg, parse_count(args.params), parse_count(args.tokens))
        n, d = result["params"], result["tokens"]
        print(f"N={n:.4g} params, D={d:.4g} tokens ({d / n:.3g} per param):")
        print(f"  loss {_interval_text(result['loss'], 4)}")
        for spec, t in result["tasks"].items():
            print(f"  {spec}: accuracy {_interval_text(t['acc'], 3)}, gold bits/byte {_interval_text(t['bpb'], 4)}")
        return
    if len(target) != 1:
        raise LmforgeError(f"lmforge ladder takes one LADDER.yaml (or `ladder predict LADDER.yaml ...`), "
                           f"got {' '.join(target)}")
    if args.params is not None or args.tokens is not None:
        raise LmforgeError("--params and --tokens go with `lmforge ladder predict LADDER.yaml`")
    cfg = load_ladder(target[0], args.set)
    fit = run_ladder(cfg, fit_only=args.fit_only)
    law = fit["law"]
    print(f"L(N, D) = {law['E']:.4g} + {law['A']:.4g}/N^{law['alpha']:.4g} + {law['B']:.4g}/D^{law['beta']:.4g} "
          f"from {len(fit['points'])} points ({fit['bootstrap']['fits']} bootstrap fits)")
    for h in fit["holdout"]:
        inside = {True: "inside", False: "OUTSIDE", None: "no"}[h["inside"]]
        print(f"  held out {h['name']}: actual {h['actual']:.4f}, predicted {_interval_text(h['predicted'], 4)}, "
              f"error {h['relative_error']:.2%} ({inside} the interval)")
    if fit["missing"]:
        print(f"  not yet trained: {', '.join(fit['missing'])}")
    files = ("results.jsonl", "fit.json", "ladder.png", "ladder.md")
    print(f"wrote {', '.join(str(Path(cfg.out) / f) for f in files)}")


def _interval_text(p: dict, digits: int) -> str:
    if p["low"] is None:
        return f"{p['value']:.{digits}f} (no interval: no bootstrap fits)"
    return f"{p['value']:.{digits}f} ({p['level']:.0%} interval {p['low']:.{digits}f} to {p['high']:.{digits}f})"


def cmd_eval(args: argparse.Namespace) -> None:
    import torch

    from lmforge.eval.harness import DEFAULT_EVAL_TASKS, evaluate, format_table, write_json

    dtype = getattr(torch, args.dtype) if args.dtype else None
    # Held-out token files alone mean perplexity only; otherwise OLMES's core tasks by default.
    tasks = args.tasks or (None if args.ppl_data else list(DEFAULT_EVAL_TASKS))
    results = evaluate(args.model, tasks, limit=args.limit, batch_size=args.batch_size, variant=args.variant,
                       device=args.device, dtype=dtype, progress=not args.quiet, token_folders=args.ppl_data,
                       ppl_seq_len=args.ppl_seq_len, ppl_max_tokens=args.ppl_max_tokens)  # fmt: skip
    print(format_table(results))
    if args.out:
        print(f"wrote {write_json(results, args.out)}")


# -- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmforge", description="Train fully open OLMo 2-style language models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], int | None], help: str, parent=sub) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        return p

    p = add("export", cmd_export, "Export a checkpoint as a transformers Olmo2ForCausalLM folder.")
    p.add_argument("checkpoint", help="checkpoint folder: a training checkpoint (sharded) or model.safetensors + model.yaml")
    p.add_argument("out_dir", help="folder to create")
    p.add_argument("--tokenizer", help="tokenizer.json, folder or known name (default: the checkpoint's own)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="cast the weights (default: as stored)")
    p.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")

    p = add("import", cmd_import, "Import a transformers OLMo 2 folder as an lmforge checkpoint (to continue "
            "pretraining it: lmforge train … --init-from OUT).")
    p.add_argument("hf_folder", help="transformers folder: config.json, model.safetensors (or shards), tokenizer")
    p.add_argument("out_dir", help="folder to create: model.safetensors + model.yaml + tokenizer + source.json")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="cast the weights (default: as stored)")
    p.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")

    p = add("eval", cmd_eval, "Score OLMES tasks (rank classification, as OLMES and lm-eval) on a model.")
    p.add_argument("model", help="lmforge checkpoint (model.yaml + weights) or transformers OLMo 2 folder + tokenizer")
    p.add_argument("--tasks", help="comma-separated OLMES tasks, each optionally TASK:VARIANT (default: OLMES's "
                   "core set: arc_easy, arc_challenge, boolq, csqa, hellaswag, openbookqa, piqa, sciq, socialiqa, "
                   "winogrande)")
    p.add_argument("--variant", default="rc_0shot", help="variant of tasks named without one (rc_0shot, rc_5shot, ...)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N documents of each task")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="cast the weights (default: as stored)")
    p.add_argument("--out", help="write metrics and per-instance predictions to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--ppl-data", action="append", metavar="FOLDER",
                   help="held-out token folder for perplexity / bits per byte (repeatable; alone: no tasks)")
    p.add_argument("--ppl-seq-len", type=int, default=None, help="perplexity window (default: the model's max_seq_len)")
    p.add_argument("--ppl-max-tokens", type=int, default=None, help="score at most this many tokens")

    ckpt = sub.add_parser("checkpoint", help="Work with training checkpoints.").add_subparsers(
        dest="checkpoint_command", required=True
    )
    p = add("consolidate", cmd_consolidate, "Write a sharded checkpoint's model as one safetensors file.", ckpt)
    p.add_argument("checkpoint", help="checkpoint folder (checkpoints/step-N, written by any number of ranks)")
    p.add_argument("out_dir", help="folder to create: model.safetensors + model.yaml (+ tokenizer.json)")
    p.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")

    p = add("train", cmd_train, "Train (or resume) the run a YAML config describes (under torchrun: every rank).")
    p.add_argument("config", help="run config YAML")
    p.add_argument("overrides", nargs="*", help="--section.field=value overrides")
    p.add_argument("--init-from", help="start from the weights of this checkpoint or transformers OLMo 2 folder "
                   "(trainer.init_from), e.g. for an anneal or to continue pretraining a released model")
    p.add_argument("--init-optimizer", action="store_true", help="with --init-from: also its optimizer state")

    p = add("release", cmd_release, "Make a fully open release of a run: a Hugging Face model repository with every "
            "kept checkpoint as a revision, the data manifest and order, logs, card, openness and sums. "
            "(`lmforge release push REL --repo ORG/NAME` uploads one.)")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--checkpoints", default="all", help="all, or comma-separated steps (the last is always included)")
    p.add_argument("--tasks", help="OLMES tasks to score the final model on (results.json, the card's model-index)")
    p.add_argument("--eval-limit", type=int, default=None, help="score only the first N documents of each task")
    p.add_argument("--score-revisions", action="store_true",
                   help="score every revision on --tasks, not only the final model (revisions.json, the card, "
                        "scores.png)")
    p.add_argument("--include-data", action="store_true",
                   help="copy the token folders into data/tokens/ (the release then holds the data it was trained on)")
    p.add_argument("--stage", default="", help="revision name prefix, e.g. stage2-ingredient1 (anneals)")
    p.add_argument("--license", default="apache-2.0", help="the card's license (default apache-2.0)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p = add("release-push", cmd_release_push, "Upload a release to the Hugging Face hub: a branch per revision, then "
            "main (`lmforge release push REL --repo ORG/NAME`).")
    p.add_argument("release", help="release folder (from `lmforge release`)")
    p.add_argument("--repo", required=True, help="ORG/NAME on the hub")
    p.add_argument("--token", help="hub token (default: HF_TOKEN or `huggingface-cli login`)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p = add("verify", cmd_verify, "Check a release: sums, the data fingerprint from the token bytes, the order, every "
            "logged step's batch_crc and content_crc, the revision index.")
    p.add_argument("release", help="release folder")
    p.add_argument("--step", type=int, help="check this step only")
    p.add_argument("--sample", type=int, default=None, help="check K logged steps drawn at random (seeded)")
    p.add_argument("--all", action="store_true", help="check every logged step (the default)")
    p.add_argument("--data", help="folder holding the token folders, when they are not at the manifest's paths")
    p.add_argument("--scores", action="store_true",
                   help="also rescore results.json and every scored revision from the released weights (slow)")

    p = add("soup", cmd_soup, "Average checkpoints of one model into one (a model soup).")
    p.add_argument("checkpoints", nargs="+", help="checkpoint folders (training checkpoints or model folders)")
    p.add_argument("--out", required=True, help="folder to create (model.safetensors + model.yaml)")
    p.add_argument("--weights", help="comma-separated weights, one per checkpoint (normalised; default equal)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    p = add("inspect-batch", cmd_inspect_batch, "Show the documents an optimizer step trained on.")
    p.add_argument("run", help="run directory")
    p.add_argument("--step", type=int, required=True, help="optimizer step (from 1)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--ids-only", action="store_true", help="document ids and first words, not the covered text")

    analyze = sub.add_parser("analyze", help="Find out what happened in a run or a model.").add_subparsers(
        dest="analyze_command", required=True
    )
    p = add("spikes", cmd_analyze_spikes, "Loss/grad-norm spikes of a run, the documents behind them, a PNG.", analyze)
    p.add_argument("run", help="run directory (without spikes.enabled it is judged from metrics.jsonl if that has every step)")
    p.add_argument("--top", type=int, default=10, help="documents to list")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--out", help="PNG path (default RUN/spikes.png)")
    p = add("faults", cmd_analyze_faults, "Launches, restarts, hangs (with the suspects), rollbacks and stragglers "
            "of a run.", analyze)
    p.add_argument("run", help="run directory, or a run config YAML (+ its overrides): its trainer.run_dir")
    p.add_argument("overrides", nargs="*", help="with a config: --section.field=value overrides")
    p.add_argument("--exclude-hosts", action="store_true",
                   help="print only the suspects' hosts of the latest hang or eviction, comma-separated (for a requeue)")
    p.add_argument("--since", type=float, default=0.0, help="with --exclude-hosts: ignore a record older than this "
                   "(seconds since the epoch; the job's start)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = add("undertrained", cmd_analyze_undertrained,
            "Under-trained tokens of a model (Fishing for Magikarp): indicators, then a repeat test.", analyze)
    p.add_argument("checkpoint", help="checkpoint folder (training checkpoint or model folder)")
    p.add_argument("--tokenizer", help="tokenizer.json (default: the checkpoint's own)")
    p.add_argument("--count-tokens", action="store_true",
                   help="count the run's training tokens (config.yaml beside the checkpoint) for the reference set")
    p.add_argument("--percentile", type=float, default=2.0, help="candidates: the top PERCENT by the indicator")
    p.add_argument("--threshold", type=float, default=0.01, help="verified when the repeat probability is below this")
    p.add_argument("--max-verify", type=int, default=500, help="candidates to verify by prompting")
    p.add_argument("--no-verify", action="store_true", help="indicators only")
    p.add_argument("--top", type=int, default=20, help="candidates to print (the files hold all of them)")
    p.add_argument("--out", help="folder for undertrained.json and undertrained.md (default: the checkpoint)")
    p = add("coord-check", cmd_analyze_coord_check,
            "µP coordinate check: train a config at several widths a few steps; activation sizes per width.", analyze)
    p.add_argument("config", help="run config YAML (its model is resized to each width)")
    p.add_argument("--widths", required=True, help="comma-separated d_model values, e.g. 64,128,256,512")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per width")
    p.add_argument("--seeds", type=int, default=2, help="seeds averaged per width")
    p.add_argument("--lr", type=float, default=None, help="constant learning rate (default: the config's optim.lr)")
    p.add_argument("--out", help="folder for coord_check.json and .png (default: coord-check/ beside the config)")
    p.add_argument("--set", action="append", default=[], metavar="DOTTED=VALUE",
                   help="config override, e.g. --set model.parametrization=mup (repeatable)")

    p = add("plot", cmd_plot, "Plot a run's loss, learning rate and grad norm to loss.png.")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", help="PNG path (default RUN/loss.png)")

    p = add("ablate", cmd_ablate, "Train one recipe on several data sets × seeds at equal tokens, then compare them "
            "on held-out sets against the seed spread.")
    p.add_argument("config", help="the ablation YAML (base, out, tokens, seeds, datasets, eval, tasks)")
    p.add_argument("--report-only", action="store_true", help="train nothing: report the rows already in results.jsonl")
    p.add_argument("--set", action="append", default=[], metavar="DOTTED=VALUE",
                   help="ablation config override, e.g. --set seeds=[0,1,2] or --set tokens=4e6 (repeatable)")

    p = sub.add_parser(
        "ladder", help="Train a model ladder (sizes × token budgets), fit a scaling law, predict larger models.",
        usage="lmforge ladder LADDER.yaml [--fit-only] [--set DOTTED=VALUE ...]\n"
              "       lmforge ladder predict LADDER.yaml --params N --tokens D [--set DOTTED=VALUE ...]",
        description="Two forms:\n"
                    "  lmforge ladder LADDER.yaml        train every run of the ladder with no row in\n"
                    "                                    OUT/results.jsonl yet (interrupted ones resume), then fit\n"
                    "                                    L(N, D) = E + A/N^alpha + B/D^beta and write OUT/fit.json,\n"
                    "                                    OUT/ladder.png and OUT/ladder.md\n"
                    "  lmforge ladder predict LADDER.yaml --params N --tokens D\n"
                    "                                    the fitted loss (and task accuracies) at N non-embedding\n"
                    "                                    parameters and D tokens, with intervals, from OUT/fit.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(fn=cmd_ladder)
    p.add_argument("target", nargs="+", metavar="[predict] LADDER.yaml",
                   help="the ladder YAML (configs/experiments/ladder/demo.yaml), after `predict` for a prediction")
    p.add_argument("--fit-only", action="store_true", help="train nothing: fit the rows already in results.jsonl")
    p.add_argument("--set", action="append", default=[], metavar="DOTTED=VALUE",
                   help="ladder config override, e.g. --set sizes=[32,64,96] or --set n_boot=500 (repeatable)")
    p.add_argument("--params", metavar="N", help="predict: non-embedding parameters (1.2e9, 1.2B, 350M)")
    p.add_argument("--tokens", metavar="D", help="predict: training tokens (2.4e10, 24B)")

    add_data_commands(sub, add)

    p = add("model-info", cmd_model_info, "Parameter counts and training FLOPs/token of the presets.")
    p.add_argument("presets", nargs="*", help="preset names (default: all)")
    p.add_argument("--seq-len", type=int, default=None, help="context length for FLOPs (default: preset's)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["release", "push"]:  # `release RUN` and `release push REL` share a name
        argv = ["release-push", *argv[2:]]
    # `lmforge train CFG --a.b=c`: dotted overrides look like options; hand them over as values.
    known = build_parser()
    args, extra = known.parse_known_args(argv)
    if extra:
        takes_overrides = (getattr(args, "command", None) == "train" or getattr(args, "analyze_command", None) == "faults"
                           or getattr(args, "data_command", None) in ("curate", "mix"))
        if takes_overrides and all(x.startswith("--") and "=" in x for x in extra):
            args.overrides = list(args.overrides) + extra
        else:
            known.error(f"unrecognized arguments: {' '.join(extra)}")
    # Under torchrun only rank 0 talks; the others report warnings and errors.
    quiet_rank = int(os.environ.get("RANK", 0)) != 0
    level = logging.DEBUG if args.verbose else logging.WARNING if quiet_rank else logging.INFO
    logging.basicConfig(level=level, format="%(message)s")
    try:
        code = args.fn(args)  # None, or an exit code of its own (verify: 1 when it found problems)
    except (RollbackRequested, StragglersEvicted) as e:  # not errors: the relaunch is expected to go on
        print(f"lmforge: {e}", file=sys.stderr)
        return e.exit_code
    except LmforgeError as e:
        print(f"lmforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
