"""toolkit data synth: parsing, each filter on planted rows, the judge's calibration, the bad inputs,
and the whole command on planted generator replies (no model: the replies are put in the generation
cache under the exact requests the command makes, for a server backend that is never reached)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from synth_plant import SAMPLE, SPEC, UNREACHABLE, lines, reply, run_planted

from toolkit.errors import BackendError, ConfigError, DataError
from toolkit.synth.command import SynthOptions, read_seeds, synth
from toolkit.synth.parse import parse_pair


def write_split(folder: Path, questions: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, qs in (("train", questions[:1]), ("validation", questions[1:2]), ("test", questions[2:])):
        rows = [{"id": f"{name}-{i}", "prompt": q, "response": "A reference answer about something else entirely.", "kind": "qa"}
                for i, q in enumerate(qs)]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_parse_reads_json_labels_and_a_leading_question_and_names_what_is_malformed():
    assert parse_pair('Sure:\n```json\n{"Question": "Why seeds?", "answer": "Because  runs vary."}\n```') == ("Why seeds?", "Because runs vary.")
    assert parse_pair("Question: How do I tune the rate?\nAnswer: Sweep it.") == ("How do I tune the rate?", "Sweep it.")
    assert parse_pair("What is a good ablation design? Remove one part at a time.") == ("What is a good ablation design?", "Remove one part at a time.")
    assert parse_pair("hello there") == "no question and answer found"
    assert parse_pair('{"question": "a?", "answer": {"x": 1}}') == "JSON without string question and answer"
    assert parse_pair(reply("a?") + reply("b?")) == "more than one pair"
    assert parse_pair("Q: one?\nA: two\nQ: three?\nA: four") == "more than one pair"
    assert parse_pair("   ") == "empty reply"


def test_near_duplicates_by_lsh_candidates_match_the_exact_check():
    from toolkit.synth.filters import RougeIndex

    texts = [f"How does method {w} change the {v} of a model trained on {u} data?" for w, v, u in
             zip("abcdefghij", ["accuracy", "loss", "speed", "memory", "calibration", "bias", "variance", "size", "cost", "depth"],
                 ["medical", "legal", "web", "code", "speech", "image", "tabular", "graph", "video", "chat"])]
    texts += ["Which optimizer should I use for sparse gradients in recommendation models?",
              "What makes a held-out test split trustworthy for reporting results?"]
    exact, lsh = RougeIndex(exact_below=10_000), RougeIndex(exact_below=0)
    for t in texts:
        exact.add(t)
        lsh.add(t)
    probe = "What makes a held-out test split trustworthy when reporting results?"
    assert lsh.nearest(probe) == exact.nearest(probe)
    assert lsh.nearest(probe)[1] == len(texts) - 1 and lsh.nearest(probe)[0] >= 0.7
    assert len(lsh.candidates(probe)) < len(texts)  # LSH proposed candidates, not the whole pool
    assert exact.nearest("Completely unrelated words about gardening tomatoes")[0] < 0.3


def test_leakage_by_rouge_and_by_cosine_names_the_split_row():
    import numpy as np

    from toolkit.synth.filters import Leakage

    texts = [("What makes a held-out test split trustworthy?", "test.jsonl:t1"), ("Some reference answer.", "train.jsonl:r1")]
    table = {texts[0][0]: [1, 0, 0], texts[1][0]: [0, 1, 0], "What makes a held-out test split trustworthy??": [1, 0, 0],
             "Paraphrased: how can a test set be trusted?": [0.95, 0.31, 0], "Unrelated question about tomatoes?": [0, 0, 1]}

    def embed(items, label=""):
        vectors = np.array([table[t] for t in items], dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    leak = Leakage(texts, embed)
    reasons = leak.check(["What makes a held-out test split trustworthy??", "Paraphrased: how can a test set be trusted?",
                          "Unrelated question about tomatoes?"])
    assert reasons[0][0] == "leakage" and "ROUGE-L" in reasons[0][1] and "test.jsonl:t1" in reasons[0][1]
    assert reasons[1][0] == "leakage" and "cosine" in reasons[1][1] and "test.jsonl:t1" in reasons[1][1]
    assert reasons[2] is None
    assert Leakage(texts, embed, cosine_max=0.99).check(["Paraphrased: how can a test set be trusted?"]) == [None]


def test_grounding_drops_an_answer_written_for_another_abstract(tmp_path):
    from toolkit.synth.filters import Embedder, Grounding
    from toolkit.synth.seeds import read_abstracts

    seeds = read_abstracts(SAMPLE / "abstracts.jsonl")[:6]
    abstracts = {s.id: s.text for s in seeds}
    embed = Embedder(tmp_path / "embeddings.sqlite")
    try:
        grounding = Grounding(abstracts, embed, others=5, seed=0)
        own = " ".join(seeds[0].text.split(". ")[1:3])  # the approach of abstract 0, answered for abstract 0
        borrowed = " ".join(seeds[3].text.split(". ")[1:3])  # abstract 3's approach, given as abstract 0's answer
        reasons = grounding.check([own, borrowed], [seeds[0].id, seeds[0].id], [0, 1])
    finally:
        embed.close()
    assert reasons[0] is None
    assert reasons[1][0] == "ungrounded"


def test_command_counts_every_filter_on_planted_replies_and_resumes_without_generating(tmp_path):
    split = write_split(tmp_path / "real", ["How do I pick a learning rate?", "What is weight decay for?",
                                            "Why does a held-out test split need to stay untouched until the end?"])
    topics = "learning rates,evaluation"
    replies = [
        reply("How should a learning-rate sweep be set up for fine-tuning a small model?"),
        "I am sorry, I cannot help with that.",
        reply("Why?"),
        reply("How should a learning-rate sweep be set up for fine tuning a small model?"),  # a near copy of the first
        reply("Why does a held-out test split need to stay untouched until the end?"),  # the planted test question
        reply("Which statistical test suits comparing two models on the same evaluation prompts?"),
    ]
    out = tmp_path / "out"
    result = run_planted(out, replies, topics=topics, count=2, against=split)
    assert result["kept"] == result["written"] == 2 and result["attempts"] == 6 and result["generated"] == 0
    assert result["drops"] == {"malformed": 1, "question too short": 1, "near duplicate": 1, "leakage": 1}
    rows = lines(out / "synthetic.jsonl")
    assert [r["attempt"] for r in rows] == [0, 5]
    assert all(r["source"] == "synthetic" and r["generator"]["model"] == "planted" and r["seed_item"]["kind"] == "topics" for r in rows)
    assert rows[1]["seed_item"]["text"] == "evaluation"  # attempt 5 of two topics
    dropped = {d["attempt"]: d for d in lines(out / "dropped.jsonl")}
    assert dropped[1]["reason"] == "malformed" and dropped[1]["reply"].startswith("I am sorry")
    assert dropped[4]["reason"] == "leakage" and "test.jsonl" in dropped[4]["detail"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["drops"] == result["drops"] and stats["options"]["rouge_max"] == 0.7 and stats["generator"]["backend"] == "openai"
    # the train command reads the file as QA
    from toolkit.data.readers import load_examples

    assert [e.prompt for e in load_examples(out / "synthetic.jsonl")] == [r["question"] for r in rows]
    # a re-run asks the cache only, and writes the same files
    before = (out / "synthetic.jsonl").read_bytes()
    again = synth(out, SynthOptions(max_attempts=6, topics=topics, count=2, against=split), model=SPEC.model, backend=SPEC.name, url=SPEC.url)
    assert again["generated"] == 0 and (out / "synthetic.jsonl").read_bytes() == before


def test_abstract_seeds_keep_the_abstract_id_and_drop_an_ungrounded_answer(tmp_path):
    seeds = read_seeds("abstracts", str(SAMPLE / "abstracts.jsonl"))
    own = " ".join(seeds[0].text.split(". ")[1:4])
    borrowed = " ".join(seeds[2].text.split(". ")[1:4])  # attempt 1 is seeded with abstract 1
    result = run_planted(tmp_path / "out", [reply("What does the first paper propose for its problem?", own),
                                            reply("What does the second paper propose for its problem?", borrowed)],
                         abstracts=SAMPLE / "abstracts.jsonl", count=2)
    assert result["drops"] == {"ungrounded": 1}
    [row] = lines(tmp_path / "out" / "synthetic.jsonl")
    assert row["abstract_id"] == seeds[0].id == row["seed_item"]["id"]


def test_a_run_that_keeps_nothing_prints_the_table_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataError, match="every one of 4 pairs was dropped"):
        run_planted(out, [reply("Why?")] * 3 + ["no pair here"], topics="seeds", count=1)
    assert not any((out / n).exists() for n in ("synthetic.jsonl", "dropped.jsonl", "stats.json"))
    with pytest.raises(BackendError, match="nothing parseable in the first 4 replies"):
        run_planted(tmp_path / "out2", ["no pair"] * 4, topics="seeds", count=1)


def test_bad_inputs_stop_in_one_line(tmp_path):
    empty = tmp_path / "topics.txt"
    empty.write_text("# only a comment\n\n")
    short = tmp_path / "abstracts.jsonl"
    short.write_text(json.dumps({"id": "a1", "title": "T", "abstract": "Too short.", "categories": "cs.LG"}) + "\n")
    cases = [
        (SynthOptions(topics=str(empty)), DataError, "topic list is empty"),
        (SynthOptions(topics=" , "), DataError, "topic list is empty"),
        (SynthOptions(abstracts=short), DataError, "no usable abstract"),
        (SynthOptions(abstracts=SAMPLE / "qa.csv"), DataError, "not abstracts"),
        (SynthOptions(topics="a", count=0), ConfigError, "--count 0"),
        (SynthOptions(), ConfigError, "no seeds"),
        (SynthOptions(topics="a", imitate=SAMPLE / "qa.csv"), ConfigError, "one seed kind"),
        (SynthOptions(topics="a", rouge_max=0.8), ConfigError, "never|refused"),
        (SynthOptions(topics="a", cosine_max=0.95), ConfigError, "refused"),
    ]
    for options, kind, message in cases:
        with pytest.raises(kind, match=message) as info:
            synth(tmp_path / "out", options, model=SPEC.model, backend=SPEC.name, url=SPEC.url)
        assert "\n" not in str(info.value)
    # through the CLI: one line, no traceback, non-zero
    proc = subprocess.run([sys.executable, "-m", "toolkit", "data", "synth", "--topics", str(empty), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "topic list is empty" in proc.stderr and "Traceback" not in proc.stderr


def _fake_judge(monkeypatch, score_of):
    """The judge's replies from `score_of(question, answer)` instead of a model."""
    import toolkit.synth.judge as judge_module

    def fake(spec, requests, cache, label):
        out = []
        for r in requests:
            text = r.conversation[-1]["content"]
            q = text.split("Question: ", 1)[1].split("\n\nAnswer: ", 1)[0]
            a = text.split("\n\nAnswer: ", 1)[1].rsplit("\n\nReply with", 1)[0]
            out.append({"text": f"[[{score_of(q, a)}]]"})
        return out, len(requests)

    monkeypatch.setattr(judge_module, "generate_cached", fake)


def test_judge_is_applied_when_calibrated_and_reported_too_weak_otherwise(tmp_path, monkeypatch):
    from toolkit.synth.seeds import read_examples

    truth = {s.text: s.answer for s in read_examples(SAMPLE / "qa.csv")}
    good = ("Run each method with the same five seeds, report the mean and a bootstrap interval, and compare them with a "
            "paired test on the same prompts so that seed noise is not mistaken for an improvement.")
    vague = ("It depends on many things, and there are several options that people often consider when they do this kind of "
             "thing; some prefer one approach and others prefer another, and in the end it is mostly a matter of taste.")
    replies = [reply("How many seeds do I need to compare two fine-tuning methods fairly?", good),
               reply("What is the best way to think about evaluation in general terms?", vague)]
    # a judge that knows the references: reference 5, corrupted 1; synthetic pairs by content
    _fake_judge(monkeypatch, lambda q, a: 5 if truth.get(q) == a or a == good else 1)
    result = run_planted(tmp_path / "strong", replies, imitate=SAMPLE / "qa.csv", count=2, judge="fake-judge", judge_backend="openai",
                         judge_url=UNREACHABLE)
    assert result["judge"]["applied"] and result["judge"]["calibration"]["passed"]
    assert result["drops"] == {"judge score below 4": 1}
    [row] = lines(tmp_path / "strong" / "synthetic.jsonl")
    assert row["judge_score"] == 5 and row["seed_item"]["kind"] == "imitate" and len(row["seed_item"]["ids"]) == 3
    # a judge that cannot tell a reference from a corrupted copy is reported and not applied
    _fake_judge(monkeypatch, lambda q, a: 3)
    weak = run_planted(tmp_path / "weak", replies, imitate=SAMPLE / "qa.csv", count=2, judge="fake-judge", judge_backend="openai",
                       judge_url=UNREACHABLE)
    assert not weak["judge"]["applied"] and weak["judge"]["calibration"]["undecided"] == weak["judge"]["calibration"]["pairs"]
    assert weak["drops"] == {} and weak["written"] == 2


def test_a_reply_copying_the_prompts_example_or_an_imitated_pair_is_dropped(tmp_path):
    from toolkit.params import DEFAULTS
    from toolkit.synth.seeds import Planner, load_template

    template, _ = load_template("topics", None)
    [(question, answer)] = Planner("topics", [], template, DEFAULTS, 0).examples()
    other = "Which baseline should a new retrieval method be compared with?"
    result = run_planted(tmp_path / "topics", [reply(question), reply(other, answer + " Report it."), reply(other)], topics="baselines", count=1)
    assert result["drops"] == {"copy of an example": 2} and result["written"] == 1
    template, _ = load_template("imitate", None)
    planner = Planner("imitate", read_seeds("imitate", str(SAMPLE / "qa.csv")), template, DEFAULTS, DEFAULTS.seed)
    shown = planner.attempt(0).seeds[1]
    assert f"Question: {shown.text}\nAnswer: {shown.answer}" in planner.attempt(0).request.conversation[-1]["content"]
    result = run_planted(tmp_path / "imitate", [reply(shown.text), reply(other)], imitate=SAMPLE / "qa.csv", count=1)
    assert result["drops"] == {"copy of an example": 1} and result["written"] == 1


def test_parse_skips_a_preamble_that_names_the_question_on_its_own_line():
    assert parse_pair("Here is a new question:\nQuestion: What are ways to check it?\nAnswer: Use a held-out split.") == (
        "What are ways to check it?", "Use a held-out split.")
    assert parse_pair("The question is: Why warm up?\nAnswer: Early steps are noisy.") == ("Why warm up?", "Early steps are noisy.")


def test_the_shipped_prompts_ask_for_json_through_the_schema_and_a_lines_prompt_does_not(tmp_path):
    """A template showing `{"question": ...` asks for JSON: its requests carry the pair's schema
    (the backend's JSON/grammar mode enforces it); one asking for labelled lines carries none."""
    from toolkit.params import DEFAULTS
    from toolkit.synth.parse import PAIR_SCHEMA
    from toolkit.synth.seeds import Planner, load_template

    seeds = {"topics": "a,b", "abstracts": str(SAMPLE / "abstracts.jsonl"), "imitate": str(SAMPLE / "qa.csv")}
    for kind, value in seeds.items():
        template, _ = load_template(kind, None)
        assert Planner(kind, read_seeds(kind, value), template, DEFAULTS, 0).attempt(0).request.schema == PAIR_SCHEMA, kind
    custom = tmp_path / "lines.txt"
    custom.write_text('Write a research question about {topic}.\nWrite the question after "Question:" and the answer after "Answer:".\n')
    template, _ = load_template("topics", custom)
    assert Planner("topics", read_seeds("topics", "a,b"), template, DEFAULTS, 0).attempt(0).request.schema is None
    # llama.cpp's JSON grammar lets a model write a raw line break inside a string: it is read
    assert parse_pair('{"question": "Why seeds?", "answer": "Runs\nvary."}') == ("Why seeds?", "Runs vary.")
