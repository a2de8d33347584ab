"""Token files and training instances: ids equal HF tokenizers', order is pure, the OLMo 2
repetition filter masks what it should."""

import gzip
import json

import numpy as np
import pytest

from lmforge.data.dataset import InstanceDataset, TokenStream
from lmforge.data.repetition import is_repetitive, longest_repetition
from lmforge.data.token_files import TokenFiles
from lmforge.data.tokenize import tokenize
from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import LmforgeError


def test_token_files_hold_hf_ids_with_eos_and_index(token_data):
    tok = Tokenizer.load(token_data / "tokenizer.json")
    files = TokenFiles(token_data / "train")
    docs = [json.loads(line) for line in (token_data / "train.jsonl").read_text().splitlines()]
    assert files.meta["num_documents"] == len(docs) and files.dtype == np.uint16
    spans = files.documents_in(0, files.num_tokens)
    assert [s.id for s in spans] == [d["id"] for d in docs]
    for span, doc in zip(spans[:50], docs[:50]):
        # The reference: HF tokenizers' own encoding of the document's text.
        assert files.read(span.start, span.end).tolist() == tok.hf.encode(doc["text"], add_special_tokens=False).ids
        assert files.read(span.end, span.end + 1).tolist() == [tok.eos_token_id]
    assert files.num_tokens == sum(s.end - s.start + 1 for s in spans)


def test_parallel_tokenize_writes_the_same_bytes(token_data, tmp_path):
    tokenize([token_data / "train.jsonl"], token_data / "tokenizer.json", tmp_path / "w2", workers=2, progress=False)
    a, b = TokenFiles(token_data / "train"), TokenFiles(tmp_path / "w2")
    assert a.fingerprint == b.fingerprint
    assert np.array_equal(a.read(0, a.num_tokens), b.read(0, b.num_tokens))


def test_corrupt_line_names_file_and_line_and_leaves_no_output(token_data, tmp_path):
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as f:
        f.write('{"id": "a", "text": "fine"}\n' * 5 + '{"id": "b", "text": \n')
    with pytest.raises(LmforgeError, match=r"bad.jsonl.gz:6: invalid JSON"):
        tokenize([bad], token_data / "tokenizer.json", tmp_path / "out", workers=2, progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_empty_corpus_is_an_error(token_data, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(LmforgeError, match=r"the corpus is empty"):
        tokenize([tmp_path / "empty.jsonl"], token_data / "tokenizer.json", tmp_path / "out", workers=1, progress=False)


def test_order_is_a_pure_function_of_seed_epoch_and_data(token_data):
    stream = TokenStream([token_data / "train"])
    a = InstanceDataset(stream, 64, seed=3)
    b = InstanceDataset(TokenStream([token_data / "train"]), 64, seed=3)
    assert np.array_equal(a.order(0), b.order(0))
    assert not np.array_equal(a.order(0), a.order(1))
    assert not np.array_equal(a.order(0), InstanceDataset(stream, 64, seed=4).order(0))
    assert sorted(a.order(0).tolist()) == list(range(a.num_instances))  # each instance once per epoch
    # Positions that cross an epoch boundary continue in the next epoch's order.
    n = a.num_instances
    assert a.instances_at(n - 1, 2).tolist() == [a.order(0)[-1], a.order(1)[0]]


def test_instances_tile_the_stream(token_data):
    ds = InstanceDataset(TokenStream([token_data / "train"]), 64, seed=0, mask_repetitions=False)
    batch = ds.batch(np.array([0, 1]))
    stream = ds.stream.read(0, 129)
    assert batch.inputs[0].tolist() == stream[:64].tolist()
    assert batch.targets[0].tolist() == stream[1:65].tolist()
    assert batch.inputs[1].tolist() == stream[64:128].tolist()  # every token predicted exactly once


def test_repetition_filter_masks_a_planted_period():
    rng = np.random.default_rng(0)
    natural = rng.integers(0, 5000, 2048)
    planted = natural.copy()
    period = rng.integers(0, 5000, 7)
    planted[500 : 500 + 7 * 40] = np.tile(period, 40)
    assert longest_repetition(planted) == (7, 40)
    assert is_repetitive(planted)
    assert not is_repetitive(natural)
    planted_short = natural.copy()
    planted_short[100 : 100 + 7 * 20] = np.tile(period, 20)  # 20 repeats: below OLMo 2's 32
    assert not is_repetitive(planted_short)


def test_repetition_filter_leaves_real_text_alone(token_data):
    ds = InstanceDataset(TokenStream([token_data / "val"]), 64, seed=0)
    assert ds.batch(np.arange(ds.num_instances)).n_masked_instances == 0


def test_batch_masks_repetitive_instance(token_data, tmp_path):
    doc = {"id": "spam", "text": "buy now " * 400, "source": "spam"}
    (tmp_path / "spam.jsonl").write_text(json.dumps(doc) + "\n")
    tokenize([tmp_path / "spam.jsonl"], token_data / "tokenizer.json", tmp_path / "spam", workers=1, progress=False)
    ds = InstanceDataset(TokenStream([tmp_path / "spam"]), 128, seed=0)
    batch = ds.batch(np.array([0]))
    assert batch.n_masked_instances == 1 and (batch.targets == -100).all()


def test_zst_and_txt_inputs(token_data, tmp_path):
    import zstandard

    tok = Tokenizer.load(token_data / "tokenizer.json")
    line = json.dumps({"id": "z1", "text": "compressed words here", "source": "zst"}) + "\n"
    (tmp_path / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(line.encode()))
    (tmp_path / "plain.txt").write_text("A whole file\nis one document.")
    tokenize([tmp_path], tok, tmp_path / "out", workers=1, progress=False)
    files = TokenFiles(tmp_path / "out")
    spans = files.documents_in(0, files.num_tokens)
    assert [(s.id, s.source) for s in spans] == [("z1", "zst"), ("plain.txt", "plain")]
    assert files.read(spans[1].start, spans[1].end).tolist() == tok.encode("A whole file\nis one document.")


def test_stream_over_several_folders(token_data, tmp_path):
    stream = TokenStream([token_data / "val", token_data / "train"])
    val, train = TokenFiles(token_data / "val"), TokenFiles(token_data / "train")
    assert stream.num_tokens == val.num_tokens + train.num_tokens
    edge = val.num_tokens
    assert stream.read(edge - 3, edge + 3).tolist() == val.read(edge - 3, edge).tolist() + train.read(0, 3).tolist()
    (folder, span), = [d for d in stream.documents_in(edge, edge + 1)]
    assert folder == str(token_data / "train") and span.id == "d0" and span.start == edge  # stream positions


def test_folders_from_different_tokenizers_are_refused(token_data, tmp_path):
    from lmforge.data.tokenizer import train_bpe

    other = train_bpe([token_data / "val.jsonl"], vocab_size=300, show_progress=False)
    tokenize([token_data / "val.jsonl"], other, tmp_path / "other", workers=1, progress=False)
    with pytest.raises(LmforgeError, match=r"made with different tokenizers"):
        TokenStream([token_data / "train", tmp_path / "other"])


def test_zstd_multi_frame_read_whole_and_truncation_detected(tmp_path):
    import zstandard

    from lmforge.data.documents import read_documents

    rows = "".join(json.dumps({"id": str(i), "text": "word " * 20}) + "\n" for i in range(20_000)).encode()
    c = zstandard.ZstdCompressor()
    data = c.compress(rows[: len(rows) // 2]) + c.compress(rows[len(rows) // 2 :])  # two frames back to back
    (tmp_path / "ok.jsonl.zst").write_bytes(data)
    assert [d.id for d in read_documents(tmp_path / "ok.jsonl.zst")] == [str(i) for i in range(20_000)]
    (tmp_path / "cut.jsonl.zst").write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(LmforgeError, match="cut.jsonl.zst.*truncated"):
        list(read_documents(tmp_path / "cut.jsonl.zst"))
    (tmp_path / "junk.jsonl.zst").write_bytes(b"not zstd at all" * 10)
    with pytest.raises(LmforgeError, match="junk.jsonl.zst.*not valid zstd"):
        list(read_documents(tmp_path / "junk.jsonl.zst"))
