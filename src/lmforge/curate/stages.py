"""A pipeline's steps cut into stages at each global step (see `lmforge.curate.pipeline`):

    stage 0: document steps … → signatures of global step A
    stage 1: A's decisions → document steps … → signatures of global step B (or the final output)

Stages hold the built step objects themselves; the pipeline hands them to its tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.curate.steps import DocumentStep, GlobalStep, Step


@dataclass
class Stage:
    """The work one task does on its shard: apply a global step's decisions, run document steps,
    then take the next global step's signatures (or write the final output)."""

    index: int
    apply: GlobalStep | None  # decisions of the previous stage's global step
    steps: list[DocumentStep]
    collect: GlobalStep | None  # global step whose signatures this stage computes

    def describe(self) -> str:
        parts = ([f"apply {self.apply.label}"] if self.apply else []) + [s.label for s in self.steps]
        parts += [f"{self.collect.label} signatures"] if self.collect else ["write"]
        return " → ".join(parts)

    def all_steps(self) -> list[Step]:
        """Every step a task of this stage calls, in order."""
        apply: list[Step] = [self.apply] if self.apply else []
        collect: list[Step] = [self.collect] if self.collect else []
        return [*apply, *self.steps, *collect]


def make_stages(steps: list[Step]) -> list[Stage]:
    stages: list[Stage] = []
    pending: GlobalStep | None = None
    local: list[DocumentStep] = []
    for step in steps:
        if isinstance(step, GlobalStep):
            stages.append(Stage(len(stages), pending, local, step))
            pending, local = step, []
        elif isinstance(step, DocumentStep):
            local.append(step)
        else:  # a registered class that derives from Step alone: the pipeline cannot place it
            raise TypeError(
                f"step {step.label!r}: {type(step).__qualname__} must derive from DocumentStep or GlobalStep"
            )
    stages.append(Stage(len(stages), pending, local, None))
    return stages
