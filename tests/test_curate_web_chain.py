"""FineWeb's whole web chain (language ID → Gopher repetition → Gopher quality → C4 → FineWeb →
MinHash dedup → PII masking) through lmforge and through datatrove (the peer), on the generated
web corpus (tests/web_corpus.py: pages in other languages, mixed pages, planted PII, near and
exact copies): the same documents survive language ID and the filters, MinHash forms the same
clusters, and every final document has the same text.

The chain and the comparison are benchmarks/curate.py's own (imported from it), so this is the
benchmark's equality claim checked at a small size, both tools in this process with one worker.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("datatrove")
pytest.importorskip("fasttext")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from curate import compare, datatrove_decisions, lmforge_decisions, run_datatrove, run_lmforge  # noqa: E402
from sample_corpus import write_sample_corpus  # noqa: E402
from web_corpus import build_web_corpus  # noqa: E402

from lmforge.curate.language import fetch_lid176  # noqa: E402

N_DOCS = 1_500


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("web") / "corpus"
    write_sample_corpus(build_web_corpus(n_docs=N_DOCS, seed=3), folder, n_files=3)
    return folder


def test_web_chain_same_decisions_and_texts_as_datatrove(tmp_path, corpus, monkeypatch):
    import datatrove.utils.lid as dt_lid

    model = fetch_lid176()
    # datatrove would download lid.176.bin; give it our file (one worker: this process).
    monkeypatch.setattr(dt_lid, "cached_asset_path_or_download", lambda *a, **k: str(model))
    run_lmforge(corpus, tmp_path / "lmforge", workers=1, chain="web")
    run_datatrove(corpus, tmp_path / "datatrove", workers=1, files=3, chain="web")

    rows = [json.loads(line) for p in corpus.glob("*.gz") for line in gzip.open(p, "rt")]
    original = {row["id"]: row["text"] for row in rows}
    result = compare(lmforge_decisions(tmp_path / "lmforge", corpus), datatrove_decisions(tmp_path / "datatrove"),
                     original)  # fmt: skip
    assert result["filters_kept_equal"], result
    assert result["minhash_clusters_equal"], result
    assert result["texts_equal"], result

    # Every link of the chain did something on this corpus (agreeing on nothing proves nothing).
    removed = [json.loads(line) for p in (tmp_path / "lmforge" / "removed").glob("*.gz") for line in gzip.open(p, "rt")]
    by_step = {r["removed_by"] for r in removed}
    assert {"language", "gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality", "minhash_dedup"} <= by_step
    assert result["clusters"] > 10 and result["texts_masked"] > 50, result
    assert result["texts_compared"] >= 0.9 * result["final_documents"]["lmforge"], result
