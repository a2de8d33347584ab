"""`lmforge data …`: tokenizers, tokenization, curation, mixing and quality classifiers. Each
subcommand parses its arguments and calls one library function (see `lmforge.cli`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError


def cmd_train_tokenizer(args: argparse.Namespace) -> None:
    from lmforge.data.tokenizer import train_bpe

    tokenizer = train_bpe(args.files, args.vocab_size, min_frequency=args.min_frequency)
    path = tokenizer.save(args.out)
    print(f"wrote {path}: {tokenizer.vocab_size} ids, eos {tokenizer.eos_token!r}={tokenizer.eos_token_id}")


def cmd_get_tokenizer(args: argparse.Namespace) -> None:
    import shutil

    from lmforge.data.tokenizer import Tokenizer, fetch_pretrained

    path = fetch_pretrained(args.name)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        path = Path(shutil.copyfile(path, args.out))
    tokenizer = Tokenizer.load(path)
    print(
        f"{path}: {tokenizer.vocab_size:,} ids (padded {tokenizer.padded_vocab_size():,}), "
        f"eos {tokenizer.eos_token!r}={tokenizer.eos_token_id}, pad {tokenizer.pad_token!r}={tokenizer.pad_token_id}"
    )


def cmd_tokenize(args: argparse.Namespace) -> None:
    from lmforge.data.split import ValidationSplit
    from lmforge.data.tokenize import tokenize

    names = ("--validation", "--validation-docs")
    if args.validation_seed is not None and args.validation is None and args.validation_docs is None:
        raise LmforgeError("--validation-seed: it seeds a split; add --validation FRACTION or --validation-docs N")
    split = ValidationSplit.of(args.validation, args.validation_docs, args.validation_seed or 0, names=names)
    meta = tokenize(
        args.inputs, args.tokenizer, args.out, workers=args.workers, overwrite=args.overwrite, strict=args.strict,
        validation=split,
    )
    run = meta["train"] if split is not None else meta  # with a split both sides carry the run's numbers
    mb = run["text_bytes"] / 1e6
    speed = f"{mb:.1f} MB of text in {run['seconds']:.1f}s ({mb / max(run['seconds'], 1e-9):.1f} MB/s)"
    if split is None:
        print(f"wrote {args.out}: {meta['num_documents']:,} documents, {meta['num_tokens']:,} tokens ({meta['dtype']}), "
              f"{speed}")  # fmt: skip
        return
    sides = " and ".join(
        f"{Path(args.out) / side} ({m['num_documents']:,} documents, {m['num_tokens']:,} tokens)" for side, m in meta.items()
    )
    print(f"wrote {sides} ({run['dtype']}), {speed}")


def cmd_curate(args: argparse.Namespace) -> None:
    from lmforge.curate.pipeline import CurateConfig, curate
    from lmforge.curate.registry import registered_steps

    if args.list_steps:
        for name, cls in sorted(registered_steps().items()):
            doc = " ".join((cls.Config.__doc__ or "").split())
            print(f"{name:<20} {doc.split('. ')[0].rstrip('.')}")
        return
    if not args.pipeline:
        raise LmforgeError("data curate: name a pipeline YAML (or use --list-steps)")
    stats = curate(CurateConfig.from_yaml(args.pipeline, args.overrides), progress=not args.quiet)
    out, inp = stats["output"], stats["input"]
    print(f"kept {out['documents']:,} of {inp['documents']:,} documents")


def cmd_mix(args: argparse.Namespace) -> None:
    from lmforge.curate.mix import MixConfig, mix

    report = mix(MixConfig.from_yaml(args.config, args.overrides), progress=not args.quiet)
    print(f"wrote {len(report['shards'])} shards to {report['config']['output']}")


def cmd_train_classifier(args: argparse.Namespace) -> None:
    from lmforge.curate.classifier_train import train_classifier

    labels = tuple(x.strip() for x in args.labels.split(","))
    if len(labels) != 2:
        raise LmforgeError(f"--labels: give two labels, positive first (e.g. hq,cc), got {args.labels!r}")
    report = train_classifier(args.positive, args.negative, args.out, preset=args.preset, holdout=args.holdout,
                              seed=args.seed, labels=labels, threads=args.threads, progress=not args.quiet)  # fmt: skip
    if report.get("roc_auc") is not None:
        print(f"wrote {args.out}: held-out precision {report['precision']:.3f}, recall {report['recall']:.3f}, "
              f"F1 {report['f1']:.3f}, ROC-AUC {report['roc_auc']:.3f} (see {Path(args.out) / 'report.md'})")  # fmt: skip
    else:
        print(f"wrote {args.out} (no held-out set, so no metrics)")


def add_data_commands(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `data` and its subcommands to the `lmforge` parser (`add` as in `build_parser`)."""
    data = sub.add_parser("data", help="Data preparation: tokenizers, tokenization.").add_subparsers(
        dest="data_command", required=True
    )
    p = add("train-tokenizer", cmd_train_tokenizer, "Train a byte-level BPE tokenizer on documents.", data)
    p.add_argument("files", nargs="+", help="JSONL[.gz|.zst] or .txt files, or folders of them")
    p.add_argument("--vocab-size", type=int, required=True, help="ids in total, special tokens included")
    p.add_argument("--min-frequency", type=int, default=2, help="least count of a pair to merge")
    p.add_argument("--out", required=True, help="tokenizer.json to write")

    p = add("tokenize", cmd_tokenize, "Tokenize documents into token files (memmap + document index).", data)
    p.add_argument("inputs", nargs="+", help="JSONL[.gz|.zst] or .txt files, or folders of them")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json, folder, or a known name (olmo2)")
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores, or 1 where the tiktoken fast path threads)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first bad line or unreadable file (default: skip them, listed in OUT/rejects.jsonl)")
    p.add_argument("--validation", type=float, metavar="FRACTION",
                   help="hold out this fraction of documents (by a seeded hash of each id): writes OUT/train and OUT/val")
    p.add_argument("--validation-docs", type=int, metavar="N",
                   help="hold out exactly N documents (the N smallest seeded id hashes): writes OUT/train and OUT/val")
    p.add_argument("--validation-seed", type=int, default=None, metavar="SEED",
                   help="seed of the split's id hash (default 0)")

    p = add("curate", cmd_curate, "Filter, deduplicate and decontaminate documents (a pipeline YAML).", data)
    p.add_argument("pipeline", nargs="?", help="pipeline YAML (input, output, steps)")
    p.add_argument("overrides", nargs="*", help="--field=value overrides, e.g. --workers=4")
    p.add_argument("--list-steps", action="store_true", help="list the step names a pipeline can use")
    p.add_argument("--quiet", action="store_true", help="no progress bars or table")

    p = add("train-classifier", cmd_train_classifier, "Train a fastText quality classifier (positives against "
            "negatives, as DCLM's) for the classifier curate step.", data)
    p.add_argument("--positive", nargs="+", required=True, help="documents of the kind to keep (files or folders)")
    p.add_argument("--negative", nargs="+", required=True, help="documents to tell them from, e.g. random web text")
    p.add_argument("--out", required=True, help="folder to create: model.bin, classifier.json, report.json/.md/.png")
    p.add_argument("--preset", choices=("dclm", "small"), default="dclm",
                   help="dclm: DCLM's recipe (2M buckets: an ~800 MB model); small: far fewer buckets (tests, demos)")
    p.add_argument("--holdout", type=float, default=0.1, help="share of documents held out (by a seeded hash of the id)")
    p.add_argument("--seed", type=int, default=0, help="seeds the held-out split and the training order")
    p.add_argument("--labels", default="hq,cc", help="positive,negative label names (default hq,cc, as DCLM's model)")
    p.add_argument("--threads", type=int, default=1, help="fastText threads; only 1 gives the same model every run "
                   "(with more, fastText's threads race and each run differs)")
    p.add_argument("--quiet", action="store_true", help="no progress")

    p = add("mix", cmd_mix, "Mix sources to target token proportions into shards (a mix YAML).", data)
    p.add_argument("config", help="mix YAML (sources with paths and proportions, output)")
    p.add_argument("overrides", nargs="*", help="--field=value overrides")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = add("get-tokenizer", cmd_get_tokenizer, "Fetch a published tokenizer (from its PyPI wheel) into the cache.", data)
    p.add_argument("name", help="olmo2 or olmo1")
    p.add_argument("--out", help="also copy it here")
