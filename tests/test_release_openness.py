"""MOF assessment of a release folder: 17 unique components, found from what is in the folder
(and nothing that is not), the class computation, and deterministic JSON/markdown."""

import json
import shutil
from pathlib import Path

import pytest

from lmforge.release.openness import (
    CLASSES,
    COMPONENTS,
    assess,
    met_class,
    openness_json,
    openness_markdown,
)


def make_release(root: Path) -> Path:
    """The files `lmforge release` writes (contents only as deep as assess reads them)."""
    rel = root / "REL"
    files = {
        "config.json": json.dumps({"architectures": ["Olmo2ForCausalLM"]}),
        "model.safetensors": "", "tokenizer.json": "{}", "README.md": "# card\n", "loss.png": "",
        "results.json": json.dumps({"model": "step200-tokens4M", "tasks": {"arc_easy:rc::olmes": {}}}),
        "revisions.json": "{}", "SHA256SUMS": "",
        "revisions/step100-tokens2M/config.json": "{}", "revisions/step200-tokens4M/config.json": "{}",
        "data/manifest.json": "{}", "data/order/epoch-00000.npy": "",
        "logs/metrics.jsonl": "", "training/config.yaml": "",
        "environment.json": json.dumps({"release": {"lmforge": "0.1.0", "torch": "2.5"}}),
    }
    for path, text in files.items():
        (rel / path).parent.mkdir(parents=True, exist_ok=True)
        (rel / path).write_text(text)
    return rel


def by_name(assessment):
    return {r["component"]: r for r in assessment}


def included(rel):
    return {r["component"] for r in assess(rel) if r["included"]}


def test_seventeen_unique_components():
    assert len(COMPONENTS) == 17
    assert len({c.name for c in COMPONENTS}) == 17
    assert {c.group for c in COMPONENTS} == {"code", "data", "documentation"}
    assert [sum(c.group == g for c in COMPONENTS) for g in ("code", "data", "documentation")] == [6, 5, 6]
    assert {c.mof_class for c in COMPONENTS} == {1, 2, 3}
    # per class, as the Model Openness Tool requires them (optional ones marked)
    required = {k: {c.name for c in COMPONENTS if c.mof_class == k and not c.optional} for k in (3, 2, 1)}
    assert required[3] == {"Model architecture", "Model parameters (Final)", "Technical report",
                           "Evaluation results", "Model card", "Data card"}
    assert required[2] == {"Training code", "Inference code", "Evaluation code", "Evaluation data"}
    assert required[1] == {"Research paper", "Datasets", "Data preprocessing code", "Model parameters (Intermediate)"}
    assert {c.name for c in COMPONENTS if c.optional} == {
        "Sample model outputs", "Supporting libraries and tools", "Model metadata"}


def test_finds_what_is_there(tmp_path):
    rel = make_release(tmp_path)
    a = by_name(assess(rel))
    assert [r["component"] for r in assess(rel)] == [c.name for c in COMPONENTS]
    assert included(rel) == {
        "Model architecture", "Data preprocessing code", "Training code", "Inference code", "Evaluation code",
        "Supporting libraries and tools", "Model parameters (Final)", "Model parameters (Intermediate)",
        "Evaluation data", "Model metadata", "Model card", "Evaluation results"}
    assert a["Model parameters (Final)"]["where"] == "model.safetensors"
    assert a["Model parameters (Intermediate)"]["where"] == "revisions/ (2)"
    assert a["Training code"]["where"].startswith("lmforge 0.1.0 (lmforge.train)")
    assert "Olmo2ForCausalLM" in a["Model architecture"]["note"]
    # named with hashes but not shipped: a reference, not counted as included
    assert not a["Datasets"]["included"] and a["Datasets"]["where"] == "data/manifest.json (reference)"
    for name in ("Data card", "Technical report", "Research paper", "Sample model outputs"):
        assert not a[name]["included"] and a[name]["where"] is None, name
    assert all(r["note"] for r in assess(rel))


@pytest.mark.parametrize("remove,lost", [
    ("revisions", {"Model parameters (Intermediate)"}),
    ("model.safetensors", {"Model parameters (Final)"}),
    ("results.json", {"Evaluation results", "Evaluation data"}),
    ("README.md", {"Model card"}),
    ("config.json", {"Model architecture"}),
    ("training", set()),  # logs/metrics.jsonl still holds the metadata
    ("environment.json", {"Data preprocessing code", "Training code", "Inference code", "Evaluation code",
                          "Supporting libraries and tools"}),
])
def test_removing_a_file_loses_its_component(tmp_path, remove, lost):
    rel = make_release(tmp_path)
    before = included(rel)
    path = rel / remove
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert before - included(rel) == lost


def test_empty_revisions_folder_is_not_intermediate_parameters(tmp_path):
    rel = make_release(tmp_path)
    shutil.rmtree(rel / "revisions")
    (rel / "revisions").mkdir()
    assert "Model parameters (Intermediate)" not in included(rel)


def test_optional_files_are_picked_up(tmp_path):
    rel = make_release(tmp_path)
    for path in ("data/README.md", "samples.jsonl", "REPORT.md", "PAPER.md"):
        (rel / path).write_text("x\n")
    assert {"Data card", "Sample model outputs", "Technical report", "Research paper"} <= included(rel)


def test_class_computation(tmp_path):
    rel = make_release(tmp_path)
    summary = openness_json(assess(rel))
    assert summary["class"] is None and summary["next_class"] == CLASSES[3]
    assert summary["missing_for_next_class"] == ["Data card", "Technical report"]

    (rel / "data" / "README.md").write_text("# data\n")
    (rel / "REPORT.md").write_text("# report\n")
    assert met_class(assess(rel)) == 2  # the code, evaluation data: Class II too
    summary = openness_json(assess(rel))
    assert summary["class"] == CLASSES[2] and summary["next_class"] == CLASSES[1]
    assert summary["missing_for_next_class"] == ["Datasets", "Research paper"]

    (rel / "environment.json").unlink()  # no code reference: back to Class III
    assert met_class(assess(rel)) == 3


def test_class_one_when_everything_required_is_there():
    rows = [{"component": c.name, "optional": c.optional, "included": not c.optional} for c in COMPONENTS]
    assert met_class(rows) == 1
    assert openness_json(rows)["next_class"] is None and openness_json(rows)["missing_for_next_class"] == []
    # optional components never block a class; a required one of Class I does not lower Class II
    rows[[c.name for c in COMPONENTS].index("Research paper")]["included"] = False
    assert met_class(rows) == 2


def test_markdown_and_json_are_deterministic(tmp_path):
    rel = make_release(tmp_path)
    md = openness_markdown(assess(rel))
    assert md == openness_markdown(assess(rel))
    assert json.dumps(openness_json(assess(rel)), sort_keys=True) == json.dumps(openness_json(assess(rel)), sort_keys=True)
    assert "| component | group | required by | included | where | note |" in md
    assert "| Model parameters (Intermediate) | data | Class I | yes | revisions/ (2) |" in md
    assert "| Datasets | data | Class I | no | data/manifest.json (reference) |" in md
    assert "meets no MOF class yet" in md and "Class III (Open Model) also needs: Data card, Technical report." in md
    assert sum(line.startswith("|") for line in md.splitlines()) == 19  # header, rule, 17 rows
