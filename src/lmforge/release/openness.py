"""What a release folder includes, against the Model Openness Framework (MOF).

The MOF (LF AI & Data; White et al. 2024, "The Model Openness Framework", arXiv 2403.13784)
names 17 components of a model's development and three classes built from them:

* Class III, Open Model: model architecture, final parameters, technical report, evaluation
  results, model card, data card (and sample model outputs, optional);
* Class II, Open Tooling: Class III plus training code, inference code, evaluation code,
  evaluation data (and supporting libraries and tools, optional);
* Class I, Open Science: Class II plus research paper, datasets, data preprocessing code,
  intermediate parameters (and model metadata, optional).

The names, the class that first requires each component and which are optional follow the
framework's reference implementation, the Model Openness Tool (github.com/lfai/model_openness_tool,
web/modules/mof/config/install/mof.settings.yml: `class`, `required`); the grouping into code,
data and documentation follows its Test_Data/Test_Scripts/Components.yml (`contentType`).

What this decides is inclusion, from what is actually in the folder; the MOF also asks that
each component carry an open license of its kind, which is not judged here. Code that lmforge
ran is referenced by the lmforge version in environment.json (an Apache-2.0 package, not
copied into each release); data that is only named (the token folders of data/manifest.json)
is not counted as released; `lmforge release --include-data` copies it into data/tokens/.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

CLASSES = {3: "Class III (Open Model)", 2: "Class II (Open Tooling)", 1: "Class I (Open Science)"}
"""Least open first: a class requires its own components and those of every class above it."""


@dataclass(frozen=True)
class Component:
    name: str
    group: str
    """code, data or documentation."""
    mof_class: int
    """The least open class that requires it: 3, 2 or 1."""
    optional: bool = False
    """Optional in the MOF: never keeps a class from being met."""


COMPONENTS: tuple[Component, ...] = (
    Component("Model architecture", "code", 3),
    Component("Data preprocessing code", "code", 1),
    Component("Training code", "code", 2),
    Component("Inference code", "code", 2),
    Component("Evaluation code", "code", 2),
    Component("Supporting libraries and tools", "code", 2, optional=True),
    Component("Model parameters (Final)", "data", 3),
    Component("Model parameters (Intermediate)", "data", 1),
    Component("Datasets", "data", 1),
    Component("Evaluation data", "data", 2),
    Component("Model metadata", "data", 1, optional=True),
    Component("Sample model outputs", "documentation", 3, optional=True),
    Component("Model card", "documentation", 3),
    Component("Data card", "documentation", 3),
    Component("Technical report", "documentation", 3),
    Component("Research paper", "documentation", 1),
    Component("Evaluation results", "documentation", 3),
)

Found = tuple[bool, str | None, str]
"""(included, where: a path in the release or a reference, note)."""


def assess(release_dir: Path) -> list[dict[str, Any]]:
    """For each MOF component, whether `release_dir` includes it, where, and why."""
    rel = Path(release_dir)
    version = _lmforge_version(rel)
    rows = []
    for c in COMPONENTS:
        included, where, note = _CHECKS[c.name](rel, version)
        rows.append({"component": c.name, "group": c.group, "class": CLASSES[c.mof_class],
                     "optional": c.optional, "included": included, "where": where, "note": note})
    return rows


def met_class(assessment: list[dict[str, Any]]) -> int | None:
    """The most open class whose required components (its own and those of the classes above
    it) are all included: 3, 2, 1, or None when even Class III is not met."""
    best = None
    for k in (3, 2, 1):
        if _missing(assessment, k):
            break
        best = k
    return best


def openness_json(assessment: list[dict[str, Any]]) -> dict[str, Any]:
    """openness.json: the components, the class met (if any) and what the next class lacks."""
    met = met_class(assessment)
    nxt = {None: 3, 3: 2, 2: 1, 1: None}[met]
    return {
        "framework": "Model Openness Framework (LF AI & Data; arXiv 2403.13784)",
        "class": CLASSES[met] if met else None,
        "next_class": CLASSES[nxt] if nxt else None,
        "missing_for_next_class": _missing(assessment, nxt) if nxt else [],
        "licenses": "not assessed: the MOF also asks for an open license per component",
        "components": assessment,
    }


def openness_markdown(assessment: list[dict[str, Any]]) -> str:
    """OPENNESS.md: the verdict, then one table row per component."""
    summary = openness_json(assessment)
    verdict = (f"This release meets **{summary['class']}**." if summary["class"]
               else "This release meets no MOF class yet.")
    if summary["next_class"]:
        verdict += (f" {summary['next_class']} also needs: "
                    f"{', '.join(summary['missing_for_next_class'])}.")
    lines = ["# Openness", "",
             "Components of the [Model Openness Framework](https://arxiv.org/abs/2403.13784) "
             "found in this folder (inclusion only; licenses are not assessed here).", "",
             verdict, "",
             "| component | group | required by | included | where | note |",
             "|---|---|---|---|---|---|"]
    for r in assessment:
        required = "optional" if r["optional"] else r["class"].split(" (")[0]
        lines.append(f"| {r['component']} | {r['group']} | {required} | {'yes' if r['included'] else 'no'} "
                     f"| {_cell(r['where'] or '—')} | {_cell(r['note'])} |")
    return "\n".join(lines) + "\n"


def _missing(assessment: list[dict[str, Any]], k: int) -> list[str]:
    """Required components of class `k` and the classes above it that are not included."""
    by_name = {c.name: c for c in COMPONENTS}
    return [r["component"] for r in assessment
            if by_name[r["component"]].mof_class >= k and not r["optional"] and not r["included"]]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _lmforge_version(rel: Path) -> str | None:
    try:
        env = json.loads((rel / "environment.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return (env.get("release") or {}).get("lmforge") or env.get("lmforge")


def _file(rel: Path, path: str, note: str, absent: str) -> Found:
    return (True, path, note) if (rel / path).is_file() else (False, None, absent)


def _code(module: str, extra: str = "") -> Callable[[Path, str | None], Found]:
    """A kind of code lmforge ran: referenced by version, since the package is open source."""
    def check(rel: Path, version: str | None) -> Found:
        if version is None:
            return False, None, "no lmforge version in environment.json to reference the code by"
        return True, f"lmforge {version} ({module}){extra}", "open-source package, referenced by version, not copied"
    return check


def _architecture(rel: Path, version: str | None) -> Found:
    if not (rel / "config.json").is_file():
        return False, None, "no config.json at the root"
    archs = json.loads((rel / "config.json").read_text()).get("architectures") or ["transformers model"]
    where = "config.json" + (f"; lmforge {version} (lmforge.model)" if version else "")
    return True, where, f"{', '.join(archs)}: config here, code in transformers and lmforge"


def _final(rel: Path, version: str | None) -> Found:
    for name in ("model.safetensors", "model.safetensors.index.json"):
        if (rel / name).is_file():
            return True, name, "the final model at the root (the main branch)"
    return False, None, "no model.safetensors at the root"


def _intermediate(rel: Path, version: str | None) -> Found:
    root = rel / "revisions"
    kept = sorted(p.name for p in root.iterdir() if (p / "config.json").is_file()) if root.is_dir() else []
    if not kept:
        return False, None, "no checkpoint folders under revisions/"
    return True, f"revisions/ ({len(kept)})", "each kept checkpoint as a transformers folder, one hub branch each"


def _datasets(rel: Path, version: str | None) -> Found:
    if not (rel / "data" / "manifest.json").is_file():
        return False, None, "no data/manifest.json"
    folders = json.loads((rel / "data" / "manifest.json").read_text()).get("folders") or []
    if folders and all("released" in f and (rel / f["released"]).is_dir() for f in folders):
        return True, f"data/tokens/ ({len(folders)} token folder(s))", \
            "the token files trained on, with their document indexes (id, source, span)"
    return (False, "data/manifest.json (reference)", "token folders named with every file's sha256, not included: "
            "release with --include-data, or publish them (e.g. as a hub dataset)")


def _evaluation_data(rel: Path, version: str | None) -> Found:
    try:
        tasks = sorted(json.loads((rel / "results.json").read_text()).get("tasks") or {})
    except (FileNotFoundError, json.JSONDecodeError):
        tasks = []
    if not tasks:
        return False, None, "no evaluated tasks (results.json): release with --tasks"
    return True, f"results.json ({len(tasks)} task(s))", "public benchmark sets, referenced by task name"


def _metadata(rel: Path, version: str | None) -> Found:
    present = [p for p in ("training/config.yaml", "logs/metrics.jsonl") if (rel / p).is_file()]
    if not present:
        return False, None, "no training/config.yaml or logs/metrics.jsonl"
    return True, ", ".join(present), "training configuration and per-step logs; optimizer states not included"


def _supporting(rel: Path, version: str | None) -> Found:
    return _file(rel, "environment.json", "versions of lmforge, torch, transformers, numpy and python",
                 "no environment.json")


_CHECKS: dict[str, Callable[[Path, str | None], Found]] = {
    "Model architecture": _architecture,
    "Data preprocessing code": _code("lmforge.curate, lmforge.data"),
    "Training code": _code("lmforge.train", "; recipe: training/config.yaml"),
    "Inference code": _code("lmforge.model.generate", "; the folder loads with transformers"),
    "Evaluation code": _code("lmforge.eval"),
    "Supporting libraries and tools": _supporting,
    "Model parameters (Final)": _final,
    "Model parameters (Intermediate)": _intermediate,
    "Datasets": _datasets,
    "Evaluation data": _evaluation_data,
    "Model metadata": _metadata,
    "Sample model outputs": lambda rel, v: _file(rel, "samples.jsonl", "generations of the final model",
                                                 "no samples.jsonl: lmforge writes none"),
    "Model card": lambda rel, v: _file(rel, "README.md", "the hub model card", "no README.md"),
    "Data card": lambda rel, v: _file(rel, "data/README.md", "documentation of the training data",
                                      "no data/README.md: the model card's data section is not a data card"),
    "Technical report": lambda rel, v: _file(rel, "REPORT.md", "technical report",
                                             "no REPORT.md: lmforge writes none; add one to include it"),
    "Research paper": lambda rel, v: _file(rel, "PAPER.md", "research paper (or a link to it)",
                                           "no PAPER.md: lmforge writes none; add one to include it"),
    "Evaluation results": lambda rel, v: _file(rel, "results.json", "scores of the final model",
                                               "no results.json: release with --tasks"),
}
