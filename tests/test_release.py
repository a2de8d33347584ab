"""A release of a tiny run: every revision loads in transformers with lmforge's logits, the card
parses with huggingface_hub, `sha256sum -c` passes, per-source counts equal an independent
count, a second release is byte-identical, and `verify` passes untouched and catches each
kind of tampering with one line naming the file (and the step)."""

import csv
import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_run

from lmforge.cli import main
from lmforge.data.dataset import InstanceDataset, TokenStream
from lmforge.errors import LmforgeError
from lmforge.model.io import load_model
from lmforge.release import data as release_data
from lmforge.release.bundle import build_release, write_sums
from lmforge.release.card import RECIPE_END, RECIPE_START
from lmforge.release.verify import verify
from lmforge.train.config import RunConfig
from lmforge.train.trainer import Trainer

STEPS, EVERY = 12, 4


def train(data: dict) -> None:
    trainer = Trainer(RunConfig.from_dict(data))
    try:
        trainer.fit()
    finally:
        trainer.close()


def run_config(token_data: Path, root: Path, **model) -> dict:
    data = tiny_run(token_data, root / "run", max_steps=STEPS, checkpoint_every=EVERY, keep_checkpoints=0,
                    log_every=1)
    # Two token folders (their order is part of the data), private copies that tests may damage.
    for name in ("train", "val"):
        shutil.copytree(token_data / name, root / "data" / name)
    data["data"]["train"] = [str(root / "data" / "train"), str(root / "data" / "val")]
    data["model"].update(model)
    return data


@pytest.fixture(scope="module")
def release(token_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    data = run_config(token_data, root)
    train(data)
    rel = build_release(root / "run", root / "rel", tasks="arc_easy", eval_limit=8, score_revisions=True)
    return root, rel


def damaged(release, tmp_path) -> Path:
    """A copy of the release to tamper with."""
    copy = tmp_path / "rel"
    shutil.copytree(release[1], copy)
    return copy


def test_every_revision_loads_in_transformers_with_lmforges_logits(release):
    from transformers import AutoModelForCausalLM

    root, rel = release
    index = json.loads((rel / "revisions.json").read_text())
    assert [r["name"] for r in index["revisions"]] == [f"step{s}-tokens{s * 128 // 1000 + (s * 128 % 1000 > 0)}K"
                                                       for s in (4, 8, 12)]
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    for rev in index["revisions"]:
        theirs = AutoModelForCausalLM.from_pretrained(rel / "revisions" / rev["name"]).eval()
        ours = load_model(root / "run" / "checkpoints" / f"step-{rev['step']}").eval()
        with torch.no_grad():
            torch.testing.assert_close(theirs(ids).logits, ours(ids).float(), atol=1e-5, rtol=1e-5)
        assert rev["steps"] == [rev["step"] - EVERY + 1, rev["step"]] and rev["tokens"] == rev["step"] * 128
    root_model = AutoModelForCausalLM.from_pretrained(rel)  # the root is the final revision
    final = rel / "revisions" / "step12-tokens2K"
    assert (rel / "model.safetensors").read_bytes() == (final / "model.safetensors").read_bytes()
    assert root_model.config.architectures == ["Olmo2ForCausalLM"]


def test_the_card_parses_and_its_evals_are_results_json(release):
    from huggingface_hub import ModelCard

    _, rel = release
    card = ModelCard.load(rel / "README.md")
    results = json.loads((rel / "results.json").read_text())
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    assert "| architecture | Olmo2ForCausalLM: " in card.text
    (task,) = results["tasks"].values()
    (evaluation,) = card.data.eval_results
    assert evaluation.metric_value == task["primary_score"] and evaluation.metric_type == task["primary_metric"]
    assert evaluation.dataset_type == "arc_easy"


def test_every_revision_is_scored_as_its_training_checkpoint_scores(release):
    """--score-revisions: each revision's scores are the harness's on the run's own checkpoint
    (not the exported folder), the final one is results.json, and the card tabulates them."""
    from lmforge.eval.harness import evaluate

    root, rel = release
    revisions = json.loads((rel / "revisions.json").read_text())["revisions"]
    for rev in revisions:
        theirs = evaluate(root / "run" / "checkpoints" / f"step-{rev['step']}", "arc_easy", limit=8, progress=False)
        (want,) = theirs["tasks"].values()
        (got,) = rev["scores"].values()
        assert got["num_docs"] == 8 and got["metrics"] == pytest.approx(want["metrics"], abs=1e-6), rev["name"]
    assert json.loads((rel / "results.json").read_text())["tasks"] == revisions[-1]["scores"]
    card = (rel / "README.md").read_text()
    for rev in revisions:
        (got,) = rev["scores"].values()
        assert f"| `{rev['name']}` | {rev['tokens']:,} | {got['primary_score']:.4f} |" in card
    assert "![scores by revision](scores.png)" in card and (rel / "scores.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(LmforgeError, match="--score-revisions needs --tasks"):
        build_release(root / "run", root / "unused", score_revisions=True)


def test_verify_rescores_the_claimed_results(release, tmp_path):
    _, rel = release
    report = verify(rel, scores=True)
    assert report.ok and report.checked["scored models"] == 4, report.problems  # results.json + 3 revisions
    assert main(["verify", str(rel), "--step", "1", "--scores"]) == 0
    copy = damaged(release, tmp_path)
    index = json.loads((copy / "revisions.json").read_text())
    (score,) = index["revisions"][1]["scores"].values()
    score["metrics"]["acc_raw"] += 0.125  # a better number claimed for step 8, the sums made to agree
    (copy / "revisions.json").write_text(json.dumps(index))
    write_sums(copy)
    assert verify(copy).ok  # nothing else notices
    (problem,) = one_problem(copy, r"^revisions.json step8-tokens2K: arc_easy\S* acc_raw 0.375, rescored 0.25$",
                             scores=True)


def test_sha256sum_checks_the_release(release):
    _, rel = release
    out = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=rel, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len((rel / "SHA256SUMS").read_text().splitlines()) == sum(1 for p in rel.rglob("*") if p.is_file()) - 1


def test_per_source_tokens_equal_a_count_from_the_document_indexes(release, monkeypatch):
    root, rel = release
    manifest = json.loads((rel / "data" / "manifest.json").read_text())
    cfg = RunConfig.from_yaml(root / "run" / "config.yaml")
    # Independently: a source per token from the csv.gz indexes, and the loader's own instances.
    per_token = []
    for folder in cfg.data.train:
        meta = json.loads((folder / "meta.json").read_text())
        for part in meta["parts"]:
            labels = np.empty(part["num_tokens"], dtype=object)
            with gzip.open(folder / part["documents"], "rt", newline="") as f:
                for row in csv.DictReader(f):
                    labels[int(row["start"]) : int(row["end"]) + 1] = row["source"]
            per_token.append(labels)
    per_token = np.concatenate(per_token)
    dataset = InstanceDataset(TokenStream(cfg.data.train), cfg.data.seq_len, seed=cfg.trainer.seed)
    trained: dict[str, int] = {}
    for i in dataset.instances_at(0, STEPS * cfg.batch_instances):
        for source in per_token[i * cfg.data.seq_len : (i + 1) * cfg.data.seq_len]:
            trained[source] = trained.get(source, 0) + 1
    available = {s: int((per_token == s).sum()) for s in set(per_token)}
    assert {s: v["trained_tokens"] for s, v in manifest["sources"].items() if v["trained_tokens"]} == trained
    assert {s: v["available_tokens"] for s, v in manifest["sources"].items()} == available
    assert [Path(f["path"]).name for f in manifest["folders"]] == ["train", "val"]
    monkeypatch.setattr(release_data, "SOURCE_CHUNK", 5)  # counted in many passes: the same numbers
    counts = np.bincount(dataset.instances_at(0, STEPS * cfg.batch_instances), minlength=dataset.num_instances)
    assert release_data.source_tokens(release_data.Stream(cfg.data.train), cfg.data.seq_len, counts)[1] == {
        s: v["trained_tokens"] for s, v in manifest["sources"].items()}


def test_a_second_release_is_byte_identical(release, tmp_path):
    root, rel = release
    again = build_release(root / "run", tmp_path / "again", tasks="arc_easy", eval_limit=8, score_revisions=True)
    files = sorted(p.relative_to(rel) for p in rel.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert [f for f in files if (rel / f).read_bytes() != (again / f).read_bytes()] == []


def test_verify_passes_on_an_untouched_release(release, capsys):
    _, rel = release
    report = verify(rel)
    assert report.ok, report.problems
    assert report.checked["steps"] == STEPS and report.checked["revisions"] == 3 and report.checked["epochs"] >= 1
    assert main(["verify", str(rel), "--sample", "3"]) == 0
    assert "verified:" in capsys.readouterr().out


def one_problem(rel, expected, **kwargs):
    problems = verify(rel, **kwargs).problems
    assert problems and all("\n" not in p for p in problems)
    assert any(re.search(expected, p) for p in problems), problems
    return problems


def test_verify_catches_a_flipped_byte_in_a_token_file(release):
    root, rel = release
    part = root / "data" / "val" / "part-00000.npy"
    original = part.read_bytes()
    try:
        flipped = bytearray(original)
        flipped[10] ^= 1
        part.write_bytes(bytes(flipped))
        one_problem(rel, rf"^{re.escape(str(part))}: SHA-256 differs from data/manifest.json$")
        one_problem(rel, r"meta.json: fingerprint \w+, but its token bytes give")
    finally:
        part.write_bytes(original)


def test_verify_catches_a_forged_meta_json(release):
    root, rel = release
    meta_path = root / "data" / "train" / "meta.json"
    original = meta_path.read_text()
    try:
        meta = json.loads(original)
        meta["fingerprint"] = "0" * 16
        meta_path.write_text(json.dumps(meta))
        one_problem(rel, rf"^{re.escape(str(meta_path))}: fingerprint 0{{16}}, but its token bytes give \w+ "
                         r"\(a forged or stale meta.json\)$")
    finally:
        meta_path.write_text(original)


def test_verify_catches_an_edited_crc_a_changed_seed_reordered_folders_and_a_truncated_order(release, tmp_path):
    rel = damaged(release, tmp_path)
    metrics = rel / "logs" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    row = next(r for r in rows if r.get("step") == 7)
    row["batch_crc"] += 1
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    one_problem(rel, r"^logs/metrics.jsonl step 7: batch_crc \d+ logged, \d+ recomputed")
    one_problem(rel, r"^logs/metrics.jsonl: SHA-256 differs from SHA256SUMS")
    assert len([p for p in verify(rel).problems if "step" in p]) == 1  # only step 7
    shutil.rmtree(rel)

    rel = damaged(release, tmp_path)
    config = rel / "training" / "config.yaml"
    cfg = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**cfg, "trainer": {**cfg["trainer"], "seed": 1}}))
    one_problem(rel, r"^logs/metrics.jsonl step 1: batch_crc \d+ logged, \d+ recomputed")
    one_problem(rel, r"^data/order/epoch-00000.npy: differs from the order the seed and the data give")
    shutil.rmtree(rel)

    rel = damaged(release, tmp_path)
    config = rel / "training" / "config.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["train"] = cfg["data"]["train"][::-1]
    config.write_text(yaml.safe_dump(cfg))
    one_problem(rel, r"^training/config.yaml: data.train lists the token folders in another order")
    one_problem(rel, r"^logs/metrics.jsonl step \d+: batch_crc")
    shutil.rmtree(rel)

    rel = damaged(release, tmp_path)
    order = rel / "data" / "order" / "epoch-00000.npy"
    order.write_bytes(order.read_bytes()[:-40])
    one_problem(rel, r"^data/order/epoch-00000.npy: (unreadable|[\d,]+ instances, the data makes)")


def test_the_cards_numpy_recipe_reproduces_a_logged_crc(release):
    _, rel = release
    text = (rel / "README.md").read_text()
    code = text.split(RECIPE_START)[1].split(RECIPE_END)[0].strip().removeprefix("```python").removesuffix("```")
    assert "lmforge" not in code.replace('"lmforge', "")  # numpy and the standard library only
    for step in (1, 9):
        script = code.replace('REL, STEP = ".", 1', f"REL, STEP = {str(rel)!r}, {step}")
        out = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == "True True", out.stderr


def test_a_release_with_its_data_verifies_without_the_training_folders(token_data, tmp_path):
    """--include-data: the token folders travel in data/tokens/ (two named alike get their
    position in front), verify reads them there, MOF counts the datasets as included."""
    data = run_config(token_data, tmp_path)
    data["trainer"]["max_steps"] = EVERY
    alike = [tmp_path / "a" / "train", tmp_path / "b" / "train"]  # two folders of the same name
    for folder, source in zip(alike, data["data"]["train"]):
        shutil.copytree(source, folder)
    data["data"]["train"] = [str(f) for f in alike]
    train(data)
    rel = build_release(tmp_path / "run", tmp_path / "rel", include_data=True)
    manifest = json.loads((rel / "data" / "manifest.json").read_text())
    assert [f["released"] for f in manifest["folders"]] == ["data/tokens/00-train", "data/tokens/01-train"]
    for folder, entry in zip(alike, manifest["folders"]):
        assert sorted(p.name for p in (rel / entry["released"]).iterdir()) == sorted(entry["files"])
        shutil.rmtree(folder)  # gone from where it was trained
    report = verify(rel)
    assert report.ok and report.checked["token folders"] == 2 and report.checked["steps"] == EVERY, report.problems
    openness = json.loads((rel / "openness.json").read_text())
    (datasets,) = [c for c in openness["components"] if c["component"] == "Datasets"]
    assert datasets["included"] and datasets["where"] == "data/tokens/ (2 token folder(s))"
    assert "are in this repository under `data/tokens/`" in (rel / "README.md").read_text()
    part = next((rel / "data" / "tokens" / "01-train").glob("part-*.npy"))
    flipped = bytearray(part.read_bytes())
    flipped[-1] ^= 1
    part.write_bytes(bytes(flipped))
    one_problem(rel, rf"^{re.escape(str(part))}: SHA-256 differs from data/manifest.json$")


def test_bad_input_is_one_line(release, token_data, tmp_path):
    root, rel = release
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "empty_run" / "config.yaml").write_text((root / "run" / "config.yaml").read_text())
    with pytest.raises(LmforgeError, match=r"has no complete checkpoint to release"):
        build_release(tmp_path / "empty_run", tmp_path / "out")
    with pytest.raises(LmforgeError, match=r"is not an lmforge release \(no revisions.json\)"):
        verify(tmp_path / "empty_run")
    with pytest.raises(LmforgeError, match=r"--checkpoints: no complete checkpoint of step\(s\) \[5\]"):
        build_release(root / "run", tmp_path / "out", checkpoints="4,5")
    with pytest.raises(LmforgeError, match=r"exists; choose a new folder or pass --overwrite"):
        build_release(root / "run", rel)


@pytest.mark.slow
def test_a_moe_run_releases_as_the_moe_architecture(token_data, tmp_path):
    from transformers import AutoModelForCausalLM

    data = run_config(token_data, tmp_path, moe_num_experts=4, moe_top_k=2, moe_hidden=32)
    data["trainer"]["max_steps"] = EVERY
    train(data)
    rel = build_release(tmp_path / "run", tmp_path / "rel")
    config = json.loads((rel / "revisions" / "step4-tokens1K" / "config.json").read_text())
    assert config["architectures"] in (["OlmoeForCausalLM"], ["FlexOlmoForCausalLM"])  # by norm placement
    assert f"| architecture | {config['architectures'][0]} (mixture of experts): " in (rel / "README.md").read_text()
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(0))
    theirs = AutoModelForCausalLM.from_pretrained(rel / "revisions" / "step4-tokens1K").eval()
    ours = load_model(tmp_path / "run" / "checkpoints" / "step-4").eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids).float(), atol=1e-5, rtol=1e-5)
    assert verify(rel).ok


@pytest.mark.distributed
@pytest.mark.slow
def test_a_release_of_a_two_rank_run_verifies_in_one_process(token_data, tmp_path):
    from test_distributed import WORKER, torchrun, write

    data = run_config(token_data, tmp_path)
    data["trainer"].update(max_steps=8, micro_batch_size=2)
    torchrun(2, str(WORKER), str(write(tmp_path / "c.yaml", data)))
    rel = build_release(tmp_path / "run", tmp_path / "rel")
    env = json.loads((rel / "environment.json").read_text())
    assert env["training"]["world_sizes"] == [2]
    assert [(r["world_size"], r["device"]) for r in env["training"]["launches"]] == [(2, "cpu")]
    report = verify(rel)
    assert report.ok and report.checked["steps"] == 8, report.problems


def test_a_release_of_a_pruned_run_says_what_is_missing(token_data, tmp_path, caplog):
    data = run_config(token_data, tmp_path)
    data["trainer"]["keep_checkpoints"] = 1
    with caplog.at_level("WARNING"):
        train(data)  # warned at the start: the release will miss them
    assert "trainer.keep_checkpoints=1 deletes all but the last 1 checkpoints" in caplog.text
    rel = build_release(tmp_path / "run", tmp_path / "rel")
    index = json.loads((rel / "revisions.json").read_text())
    assert [r["step"] for r in index["revisions"]] == [12] and index["missing_steps"] == [4, 8]
    assert "the checkpoints of steps [4, 8] were deleted during training" in (rel / "README.md").read_text()
    assert verify(rel).ok

    data["trainer"].update(run_dir=str(tmp_path / "kept"), release_every=4)  # what keeps them
    train(data)
    assert json.loads((build_release(tmp_path / "kept", tmp_path / "rel2") / "revisions.json").read_text())[
        "missing_steps"] == []
