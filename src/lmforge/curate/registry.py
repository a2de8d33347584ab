"""Building a pipeline's steps from their YAML form: every registered step (importing this module
imports lmforge's built-in steps, which registers them) and `build_step`."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from lmforge.curate import builtin  # noqa: F401  (registers the built-in steps)
from lmforge.curate.steps import STEP_CLASSES, Step
from lmforge.errors import ConfigError


def registered_steps() -> dict[str, type[Step]]:
    """Every step a pipeline can name: lmforge's built-in ones and any registered since."""
    return dict(STEP_CLASSES)


PIPELINE_KEYS = ("tokenize", "tokenizer", "input", "output", "workers", "executor", "strict")
"""Keys of the pipeline itself that a user may write as a step by mistake."""


def build_step(spec: Any, where: str) -> Step:
    """A step from its YAML form: `{name: {field: value, ...}}` (config optional), with an
    optional `label` (or `step_label`) field to tell two steps of the same kind apart. A step
    whose config has a `label` field of its own (the classifier's fastText label) is named by
    `step_label` only."""
    steps = registered_steps()
    if isinstance(spec, str):
        spec = {spec: {}}
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: a step is written as '- <step name>: {{options}}', got {spec!r}")
    ((name, options),) = spec.items()
    if name in PIPELINE_KEYS:
        raise ConfigError(f"{where}: '{name}' is not a step but a top-level key of the pipeline; move "
                          f"'{name}: {{...}}' out of steps: to the same level as input: and output:")
    if name not in steps:
        close = difflib.get_close_matches(str(name), steps, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{where}: unknown step '{name}'{hint} (valid steps: {', '.join(sorted(steps))})")
    if options is not None and not isinstance(options, dict):
        raise ConfigError(f"{where}.{name}: options must be a mapping ({{field: value}}), got {options!r}")
    options = dict(options or {})
    cls = steps[name]
    label = options.pop("step_label", None)
    if label is None and "label" not in {f.name for f in dataclasses.fields(cls.Config)}:
        label = options.pop("label", None)
    config = cls.Config.from_dict(options, where=f"{where}.{name}.")
    return cls(config, label=str(label) if label is not None else None)
