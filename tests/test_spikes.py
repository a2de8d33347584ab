"""The spike monitor: an injected bad batch is flagged at its step, attributed to the documents
it came from, and with skip-step on it leaves the loss curve where it would have been. Early
steps are judged by the robust rule, the steps before it are reported as not judged, and a run
trained without the monitor is judged from its metrics.jsonl (or said to be unwatched)."""

import json

import numpy as np
import pytest

from lmforge.analysis.spikes import plot_spikes, spike_report
from lmforge.cli import main
from lmforge.train.callback import Callback
from lmforge.train.callbacks import default_callbacks
from lmforge.train.config import RunConfig
from lmforge.train.spikes import NOT_JUDGED, ROBUST, SUMMARY_FILE, WINDOW, SpikeConfig, robust_threshold
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
def test_injected_bad_batch_is_flagged_attributed_and_skipped(token_data, tmp_path, capsys, one_thread):
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

    assert main(["analyze", "spikes", str(tmp_path / "flagged"), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert f"step {BAD_STEP}: loss" in out and out.count("\n  ") >= 4  # the spike and 3 documents


# -- early steps: the robust rule, the steps not judged, runs without the monitor ----------------------
EARLY_STEP = 10  # 9 values of history: judged by the robust rule (the window rule needs 32)


def tiny_run(tokens, run_dir, *, steps: int, spikes: dict, lr: float = 3e-3, seed: int = 0, log_every: int = 1,
             checkpoint_every: int = 100, extra: tuple = ()) -> list[dict]:
    """Train the test model for `steps` steps (spike settings as given, defaults otherwise);
    returns metrics.jsonl's rows."""
    cfg = RunConfig.from_dict({
        "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_hidden": 128},
        "data": {"train": [str(tokens)], "seq_len": 64},
        "optim": {"lr": lr, "warmup_steps": 4, "schedule": "constant"},
        "trainer": {"run_dir": str(run_dir), "batch_tokens": 512, "micro_batch_size": 4, "max_steps": steps,
                    "checkpoint_every": checkpoint_every, "log_every": log_every, "seed": seed},
        "spikes": spikes,
    })
    Trainer(cfg, callbacks=default_callbacks(cfg) + list(extra)).fit()
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def analyze(capsys, run_dir, *flags) -> str:
    capsys.readouterr()
    assert main(["analyze", "spikes", str(run_dir), *flags]) == 0
    return capsys.readouterr().out


@pytest.mark.slow
def test_early_jump_is_flagged_and_unjudged_steps_are_reported(token_data, tmp_path, capsys, one_thread):
    tokens = token_data / "train"
    run = tmp_path / "watched"
    rows = tiny_run(tokens, run, steps=14, spikes={"enabled": True}, extra=[InjectBadBatch(EARLY_STEP)])
    gn = [r["grad_norm"] for r in rows]
    assert gn[EARLY_STEP - 1] > 4 * np.median(gn[: EARLY_STEP - 1])  # the jump is real, in metrics.jsonl

    report = spike_report(run)
    assert [s["step"] for s in report["spikes"]] == [EARLY_STEP]
    assert report["spikes"][0]["spiked"]["grad_norm"]["rule"] == ROBUST
    assert report["judged_by"] == "monitor" and report["not_judged"] == [[1, 8]]
    assert [(s["rule"], s["first"], s["last"]) for s in report["stretches"]] == [(NOT_JUDGED, 1, 8), (ROBUST, 9, 14)]

    out = analyze(capsys, run)
    first, second = out.splitlines()[:2]
    assert first == f"1 spike(s) in {run}; steps 1–8 not judged (fewer than 8 steps of history)"
    assert second.startswith("  judged: steps 9–14 by median + 8·max(1.4826·MAD, 0.1·median)")
    assert f"step {EARLY_STEP}: grad_norm" in out and (run / "spikes.png").stat().st_size > 10_000
    as_json = json.loads(analyze(capsys, run, "--json"))
    assert as_json["not_judged"] == [[1, 8]] and [s["step"] for s in as_json["spikes"]] == [EARLY_STEP]

    # The same run without the monitor: judged offline from metrics.jsonl, by the same rules
    offline = tmp_path / "offline"
    tiny_run(tokens, offline, steps=14, spikes={"enabled": False}, extra=[InjectBadBatch(EARLY_STEP)])
    again = spike_report(offline)
    assert again["judged_by"] == "offline" and again["not_judged"] == [[1, 8]]
    assert [(s["step"], s["spiked"]) for s in again["spikes"]] == [(s["step"], s["spiked"]) for s in report["spikes"]]
    out = analyze(capsys, offline)
    assert out.startswith(f"1 spike(s) in {offline} (judged offline from metrics.jsonl")
    assert "steps 1–8 not judged" in out

    # Without the monitor and with every 5th step logged: not watched, and it says so
    sparse = tmp_path / "sparse"
    tiny_run(tokens, sparse, steps=15, spikes={"enabled": False}, log_every=5, extra=[InjectBadBatch(EARLY_STEP)])
    out = analyze(capsys, sparse)
    assert "spike(s)" not in out and out.splitlines()[0] == (
        f"not watched: steps 1–15 of {sparse} not judged (trained with spikes.enabled: false, and metrics.jsonl "
        "lacks 12 of 15 steps: trainer.log_every=5)")
    as_json = json.loads(analyze(capsys, sparse, "--json"))
    assert as_json["spikes"] is None and as_json["not_judged"] == [[1, 15]]
    assert as_json["missing_steps"] == [[1, 4], [6, 9], [11, 14]]


@pytest.mark.slow
@pytest.mark.parametrize("seed,lr", [(0, 3e-3), (1, 3e-2), (2, 1e-1)])
def test_clean_runs_are_flagged_nowhere_early_steps_included(token_data, tmp_path, seed, lr, one_thread):
    """Default spike settings, 40 steps: the robust rule judges steps 9–32 and the window rule
    33–40, and nothing is flagged. The clean early values stay far below the robust bar: their
    largest (value - median) / spread is under half of robust_k."""
    run = tmp_path / "clean"
    rows = tiny_run(token_data / "train", run, steps=40, spikes={"enabled": True}, lr=lr, seed=seed)
    assert not any("spike" in r for r in rows)
    report = spike_report(run)
    assert report["spikes"] == [] and report["not_judged"] == [[1, 8]]
    assert [(s["rule"], s["first"], s["last"]) for s in report["stretches"]] == [
        (NOT_JUDGED, 1, 8), (ROBUST, 9, 32), (WINDOW, 33, 40)]
    cfg = SpikeConfig()
    for key in ("loss", "grad_norm"):
        values = [r[key] for r in rows]
        z = []
        for i in range(cfg.robust_min_history, cfg.min_history):
            median, spread, _ = robust_threshold(values[:i], cfg.robust_k, cfg.robust_min_spread)
            z.append((values[i] - median) / spread)
        assert max(z) < cfg.robust_k / 2, (key, max(z))


class CrashAt(Callback):
    """Raises after step `step` was logged, before it is checkpointed (test-only)."""

    name = "crash"
    priority = 5

    def __init__(self, step: int):
        self.step = step

    def post_step(self, trainer, metrics):
        if trainer.step == self.step:
            raise RuntimeError("crash")


@pytest.mark.slow
def test_rules_and_spikes_survive_a_resume(token_data, tmp_path, capsys, one_thread):
    """Checkpoint at 10, a spike at 11, the window rule from 14, a crash at 15, resume to 20:
    the spike is recorded once, the rules once each, as an uninterrupted run has them."""
    run, spikes = tmp_path / "resumed", {"enabled": True, "window": 16, "min_history": 12}
    with pytest.raises(RuntimeError, match="crash"):
        tiny_run(token_data / "train", run, steps=20, spikes=spikes, checkpoint_every=10,
                 extra=[InjectBadBatch(11), CrashAt(15)])
    assert json.loads((run / SUMMARY_FILE).read_text())["rules"][-1] == [WINDOW, 14]  # written before the crash
    tiny_run(token_data / "train", run, steps=20, spikes=spikes, checkpoint_every=10, extra=[InjectBadBatch(11)])
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert summary["rules"] == [[NOT_JUDGED, 1], [ROBUST, 9], [WINDOW, 14]] and summary["last_step"] == 20
    report = spike_report(run)
    assert [s["step"] for s in report["spikes"]] == [11] and report["not_judged"] == [[1, 8]]
    assert analyze(capsys, run).startswith(f"1 spike(s) in {run}; steps 1–8 not judged")
