"""The spike monitor: an injected bad batch is flagged at its step, attributed to the documents
it came from, and with skip-step on it leaves the loss curve where it would have been."""

import json

import numpy as np
import pytest

from lmforge.analysis.spikes import plot_spikes, spike_report
from lmforge.train.callbacks import Callback, default_callbacks
from lmforge.train.config import RunConfig
from lmforge.train.trainer import Trainer

BAD_STEP = 30
STEPS = 40


class InjectBadBatch(Callback):
    """Replaces step `step`'s batch by instances from late in the epoch (not otherwise seen in
    a short run) whose every token is one id the data never contains; each rank takes its slice
    (test-only)."""

    name = "inject"
    priority = 100

    def __init__(self, step: int = BAD_STEP):
        self.step = step
        self.instances: list[int] = []

    def pre_step(self, trainer, batch):
        if trainer.step != self.step:
            return
        dataset, loader = trainer.dataset, trainer.loader
        everything = dataset.order(0)[-loader.batch_size:]
        per = loader.local_batch_size
        rows = everything[loader.rank * per : (loader.rank + 1) * per]
        counts = np.bincount(np.concatenate([np.asarray(p) for p in dataset.stream.parts]), minlength=512)
        unseen = int(np.flatnonzero(counts[:512] == 0)[0])
        bad = dataset.batch(rows)
        bad.inputs.fill_(unseen)
        bad.targets.fill_(unseen)
        batch.inputs, batch.targets, batch.instances, batch.step_instances = bad.inputs, bad.targets, rows, everything
        self.instances = everything.tolist()

    def documents(self, trainer) -> set[str]:
        dataset = trainer.dataset
        return {span.id for i in self.instances for _, span in dataset.stream.documents_in(*dataset.token_range(i))}


def train(tokens, run_dir, *, inject: InjectBadBatch | None, skip: bool):
    cfg = RunConfig.from_dict({
        "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_hidden": 128},
        "data": {"train": [str(tokens)], "seq_len": 64},
        "optim": {"lr": 3e-3, "warmup_steps": 4, "schedule": "constant"},
        "trainer": {"run_dir": str(run_dir), "batch_tokens": 512, "micro_batch_size": 4, "max_steps": STEPS,
                    "checkpoint_every": 100},
        "spikes": {"enabled": True, "window": 32, "min_history": 16, "skip_step": skip},
    })
    trainer = Trainer(cfg, callbacks=default_callbacks(cfg) + ([inject] if inject else []))
    trainer.fit()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows, (inject.documents(trainer) if inject else set())


@pytest.mark.slow
def test_injected_bad_batch_is_flagged_attributed_and_skipped(token_data, tmp_path, capsys):
    tokens = token_data / "train"
    clean, _ = train(tokens, tmp_path / "clean", inject=None, skip=False)
    flagged, injected = train(tokens, tmp_path / "flagged", inject=InjectBadBatch(), skip=False)
    skipped, _ = train(tokens, tmp_path / "skipped", inject=InjectBadBatch(), skip=True)

    assert not any("spike" in r for r in clean)  # no false alarm on clean data
    report = spike_report(tmp_path / "flagged")
    assert [s["step"] for s in report["spikes"]] == [BAD_STEP]
    spike = report["spikes"][0]
    assert {d["id"] for d in spike["documents"]} <= injected  # attributed to the injected batch's documents
    assert len(spike["documents"]) == min(len(injected), 20)
    assert {d["id"] for d in report["documents"]} <= injected  # the most responsible, over all spikes
    assert "loss" in spike["spiked"] and spike["loss"] > 2 * spike["spiked"]["loss"]["mean"]
    assert flagged[BAD_STEP - 1]["step"] == BAD_STEP and flagged[BAD_STEP - 1]["spike"]
    assert plot_spikes(tmp_path / "flagged", report["spikes"]).stat().st_size > 10_000

    assert skipped[BAD_STEP - 1].get("skipped_step") == 1
    after = slice(BAD_STEP, STEPS)  # the steps after the bad one
    for a, b in zip(clean[after], skipped[after]):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.01), a["step"]

    from lmforge.cli import main

    assert main(["analyze", "spikes", str(tmp_path / "flagged"), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert f"step {BAD_STEP}: loss" in out and out.count("\n  ") >= 4  # the spike and 3 documents
