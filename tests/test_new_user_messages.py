"""What a new user meets: each message is one line that says what to do (issue 16's frictions)."""

import logging

import pytest
import yaml
from conftest import tiny_run

from lmforge.cli import main
from lmforge.curate.decontam import DecontaminateConfig
from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import ConfigError
from lmforge.eval.tasks import pick_variant
from lmforge.model.config import ModelConfig
from lmforge.model.io import save_model
from lmforge.model.transformer import Transformer
from lmforge.train.config import RunConfig
from lmforge.train.trainer import Trainer


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lmforge: error: "), err
    return err


@pytest.fixture(scope="module")
def run(token_data, tmp_path_factory):
    """A 3-step run checkpointing every step and keeping one, with what it logged."""
    run_dir = tmp_path_factory.mktemp("messages") / "run"
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("lmforge")
    level = logger.level
    logger.addHandler(handler), logger.setLevel(logging.INFO)
    try:
        Trainer(RunConfig.from_dict(tiny_run(token_data, run_dir, max_steps=3, keep_checkpoints=1))).fit()
    finally:
        logger.removeHandler(handler), logger.setLevel(level)
    return run_dir, records


def test_checkpoints_written_and_pruned_are_said(run):
    run_dir, records = run
    for step in (1, 2, 3):
        assert any(m == f"step {step}: wrote checkpoint {run_dir / 'checkpoints' / f'step-{step}'}" for m in records)
    assert "step 2: deleted step-1 (trainer.keep_checkpoints=1)" in records
    assert "step 3: deleted step-2 (trainer.keep_checkpoints=1)" in records
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) == ["step-3"]


def test_eval_of_a_missing_path_or_a_run_folder_says_what_to_pass(run, tmp_path, capsys):
    run_dir, _ = run
    err = one_line_error(capsys, ["eval", str(tmp_path / "nowhere"), "--tasks", "arc_easy", "--quiet"])
    assert f"{tmp_path / 'nowhere'} does not exist" in err
    err = one_line_error(capsys, ["eval", str(run_dir), "--tasks", "arc_easy", "--quiet"])
    assert f"is a run folder, not a checkpoint; pass one of its checkpoints, e.g. {run_dir}/checkpoints/step-3" in err
    err = one_line_error(capsys, ["export", str(run_dir), str(tmp_path / "hf")])
    assert f"e.g. {run_dir}/checkpoints/step-3" in err


def test_perplexity_only_prints_no_empty_task_table(run, token_data, capsys):
    run_dir, _ = run
    assert main(["eval", str(run_dir / "checkpoints" / "step-3"), "--ppl-data", str(token_data / "val"),
                 "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("perplexity ") and "task" not in out.splitlines()[0]


def test_tokenize_under_steps_is_pointed_to_the_top_level(tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text('{"id": "a", "text": "hello world"}\n')
    pipeline = {"input": [str(tmp_path / "in.jsonl")], "output": str(tmp_path / "out"),
                "steps": [{"gopher_quality": {}}, {"tokenize": {"tokenizer": "olmo2"}}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(pipeline))
    err = one_line_error(capsys, ["data", "curate", str(tmp_path / "p.yaml"), "--quiet"])
    assert "steps[1]: 'tokenize' is not a step but a top-level key of the pipeline" in err
    assert not (tmp_path / "out").exists()


def test_decontaminate_takes_a_tasks_own_variant_and_lists_every_problem(tmp_path, capsys):
    # coqa has only bpb_0shot, medmcqa no rc_0shot but one rc_ variant, codex one 0-shot variant
    cfg = DecontaminateConfig(tasks=["coqa", "medmcqa", "codex_humaneval", "arc_easy"])
    assert cfg.sources() == [("coqa", "bpb_0shot"), ("medmcqa", "rc_5shot"),
                             ("codex_humaneval", "gold_bpb_0shot"), ("arc_easy", "rc_0shot")]
    assert pick_variant("copycolors", "rc_0shot") is None  # 10way or xl_10way: the user must choose
    with pytest.raises(ConfigError) as e:
        DecontaminateConfig(tasks=["copycolors", "arc_easy:nope", "coqa", "no_such_task"])
    message = str(e.value)
    assert message.startswith("3 problems: tasks[0]: ") and "\n" not in message
    assert "tasks[1]: OLMES task 'arc_easy' has no variant 'nope'" in message and "tasks[3]: unknown" in message
    # …and through the command line, as one line
    (tmp_path / "in.jsonl").write_text('{"id": "a", "text": "hello world"}\n')
    pipeline = {"input": [str(tmp_path / "in.jsonl")], "output": str(tmp_path / "out"),
                "steps": [{"decontaminate": {"tasks": ["copycolors", "arc_easy:nope"]}}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(pipeline))
    err = one_line_error(capsys, ["data", "curate", str(tmp_path / "p.yaml"), "--quiet"])
    assert "2 problems" in err and "copycolors" in err and "'nope'" in err


def test_eval_lists_every_bad_task_at_once(run, capsys):
    run_dir, _ = run
    err = one_line_error(capsys, ["eval", str(run_dir / "checkpoints" / "step-3"), "--tasks", "arc_esy,hellaswag:x",
                                  "--quiet"])
    assert "2 problems" in err and "arc_esy" in err and "'x'" in err


def test_prefetch_batches_is_checked(token_data, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_run(token_data, tmp_path / "run")))
    err = one_line_error(capsys, ["train", str(tmp_path / "c.yaml"), "--parallel.prefetch_batches=-1"])
    assert "parallel.prefetch_batches" in err and "must be ≥ 0" in err


def test_undertrained_prints_a_summary_and_the_top_rows(token_data, tmp_path, capsys):
    tok = Tokenizer.load(token_data / "tokenizer.json")
    save_model(Transformer(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, mlp_hidden=64)),
               tmp_path / "m", tok)
    assert main(["analyze", "undertrained", str(tmp_path / "m"), "--percentile", "50", "--no-verify"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert len(rows) == 20
    md_rows = [line for line in (tmp_path / "m" / "undertrained.md").read_text().splitlines()
               if line.startswith("| ") and not line.startswith("| rank")]
    assert len(md_rows) > 200 and f"... {len(md_rows) - 20:,} more candidates" in out


def test_a_run_written_before_new_config_fields_still_resumes(token_data, tmp_path):
    """config.yaml of an older lmforge lacks fields added since (here the spike monitor's early
    rule): they count as their defaults, so the run resumes instead of being refused."""
    import shutil

    config = RunConfig.from_dict(tiny_run(token_data, tmp_path / "run"))
    Trainer(config).fit()
    # as if it had crashed after step 1, written by an lmforge without the early spike rule
    checkpoints = tmp_path / "run" / "checkpoints"
    shutil.rmtree(checkpoints / "step-2")
    (checkpoints / "latest").write_text("step-1\n")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    for field in ("robust_min_history", "robust_k", "robust_min_spread"):
        del saved["spikes"][field]
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(saved))
    trainer = Trainer(config)
    trainer.fit()
    assert trainer.step == 2 and (checkpoints / "step-2").is_dir()
    steps = [yaml.safe_load(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
