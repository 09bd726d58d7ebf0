"""toolkit compare --judge: template, verdict parsing, both orders, calibration, length control, caching, report."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest

from toolkit.data.records import Example
from toolkit.errors import ConfigError
from toolkit.evaluate.compare import System
from toolkit.evaluate.judge import TEMPLATE, Judge, corrupt, load_template, parse_verdict, render, run_judge
from toolkit.runtime.backends import Backend
from toolkit.runtime.generation import Generation

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_template_is_documented_and_overridable(tmp_path):
    lines = TEMPLATE.read_text().splitlines()
    assert lines[0].startswith("#") and "toolkit compare --judge" in lines[0]
    text, source = load_template(None)
    assert not text.startswith("#") and all(p in text for p in ("{prompt}", "{answer_a}", "{answer_b}"))
    assert "shipped" in source
    mine = tmp_path / "mine.txt"
    mine.write_text("# my judge\nT: {prompt}\n1: {answer_a}\n2: {answer_b}\nSay [[A]] or [[B]].")
    assert load_template(mine) == ("T: {prompt}\n1: {answer_a}\n2: {answer_b}\nSay [[A]] or [[B]].", str(mine))
    (tmp_path / "bad.txt").write_text("{prompt} {answer_a}")
    with pytest.raises(ConfigError, match="answer_b"):
        load_template(tmp_path / "bad.txt")
    with pytest.raises(ConfigError, match="not found"):
        load_template(tmp_path / "none.txt")
    # an answer that contains a placeholder is left as written
    assert render("{prompt}|{answer_a}|{answer_b}", "p", "has {answer_b}", "b") == "p|has {answer_b}|b"
    assert '"evaluate/judge_prompt.txt"' in (ROOT / "pyproject.toml").read_text()  # shipped in the wheel


def test_synth_templates_are_read_as_the_judge_prompt_is(tmp_path):
    """One reader (judge.read_prompt) for the judge prompt, synth's rubric and its generation prompts:
    leading '#' lines dropped, and a missing file or placeholder named in one line with its fix."""
    from toolkit.synth.judge import load_rubric
    from toolkit.synth.seeds import load_template as synth_template

    mine = tmp_path / "mine.txt"
    mine.write_text("# mine\n# more\nQ: {question} A: {answer} T: {topic}\n")
    assert load_rubric(mine) == ("Q: {question} A: {answer} T: {topic}", str(mine))
    assert synth_template("topics", mine) == ("Q: {question} A: {answer} T: {topic}", str(mine))
    cases = [(lambda: load_rubric(tmp_path / "none.txt"), r"judge rubric .*none.txt not found \(pass an existing file to --judge-prompt\)"),
             (lambda: synth_template("abstracts", mine), r"prompt template .*mine.txt lacks \{title\}, \{abstract\} \(a --abstracts template"),
             (lambda: synth_template("imitate", tmp_path / "none.txt"), r"not found \(pass an existing file to --prompt\)"),
             (lambda: load_template(mine), r"judge prompt .*lacks \{prompt\}, \{answer_a\}, \{answer_b\} \(the template must contain")]
    for call, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("reply, verdict", [
    ("[[A]]", "A"), ("My verdict: [[B]]", "B"), ("[[C]]", "tie"), ("[[ A ]] because", "A"),
    ("A", "A"), ("B is better.", "B"), ("Answer B", "B"), ("It is a tie.", "tie"),
    ("Both answers are fine", None), ("After reading", None), ("", None),
])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_corruptions_are_real_corruptions():
    from toolkit.data.textsplit import split_sentences

    refs = ["One thing. Two things. Three things.", "Alpha beta. Gamma delta.", "Single sentence only"]
    rng = random.Random(0)
    other, kind = corrupt(refs, 0, rng)
    assert kind == "another prompt's reference" and other in refs[1:]
    shuffled, kind = corrupt(refs, 1, rng)
    assert kind == "shuffled sentences" and shuffled != refs[1]
    assert sorted(split_sentences(shuffled)) == sorted(split_sentences(refs[1]))
    assert corrupt(["Just one."], 0, rng) == ("one. Just", "reversed words")


class FakeJudge(Backend):
    """A judge whose verdict is a rule over the two answers it is shown; counts its calls."""

    name = "fake"
    calls = 0

    def __init__(self, rule):
        self.rule = rule

    def stream(self, messages, params):
        FakeJudge.calls += 1
        text = messages[-1]["content"]
        task = re.search(r"\[Task\]\n(.*?)\n\n\[Answer A\]", text, re.S).group(1)
        a = re.search(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]", text, re.S).group(1)
        b = re.search(r"\[Answer B\]\n(.*?)\n\nReply", text, re.S).group(1)
        yield Generation(self.rule(task, a, b), "stop", 10, 2, 0.01)


@pytest.fixture
def fake_backend(monkeypatch):
    holder = {}

    def open_fake(kind, model, **kwargs):
        assert kind == "openai" and model == "fake-judge"
        return FakeJudge(holder["rule"])

    monkeypatch.setattr("toolkit.runtime.backends.open_backend", open_fake)
    FakeJudge.calls = 0
    return holder


def _setup(n: int = 12):
    refs = [f"Reference {i} first sentence. Reference {i} second sentence." for i in range(n)]
    examples = [Example(f"ex{i}", f"Task {i}?", refs[i], "qa") for i in range(n)]
    base = System("base", "m")
    tuned = System("tuned", "m")
    # tuned copies the reference on the first 8 prompts; base always answers badly
    base.outputs = [{"text": f"bad {i}", "completion_tokens": 20 + i % 3} for i in range(n)]
    tuned.outputs = [{"text": refs[i] if i < 8 else f"poor {i}", "completion_tokens": 15 + i % 4} for i in range(n)]
    return refs, examples, [base, tuned]


def _judge(max_tokens: int = 8) -> Judge:
    return Judge.open("fake-judge", "openai", "http://fake", None, max_tokens, seed=0)


def test_a_knowing_judge_passes_calibration_and_is_cached(tmp_path, fake_backend):
    refs, examples, systems = _setup()
    right = {ex.prompt: ex.response for ex in examples}  # this judge knows each task's reference answer
    fake_backend["rule"] = lambda task, a, b: "[[A]]" if a == right[task] else "[[B]]" if b == right[task] else "[[C]]"
    j = run_judge(_judge(), systems, examples, tmp_path, [], seed=0)
    c = j["calibration"]
    assert c["pairs"] == 12 and c["prefers_reference"] == 12 and c["passed"] and j["trusted"]
    assert set(c["corruptions"]) == {"another prompt's reference", "shuffled sentences"}
    [s] = j["systems"]
    assert (s["label"], s["vs"], s["wins"], s["ties"], s["losses"]) == ("tuned", "base", 8, 4, 0)
    assert s["order_consistency"] == 1.0 and s["first_shown_picked"] == pytest.approx(0.5)
    assert s["win_rate"]["mean"] == pytest.approx((8 + 2) / 12)
    assert s["length_controlled"]["method"].startswith("logistic regression")
    assert j["generated"] == FakeJudge.calls == 2 * 12 + 2 * 12  # calibration and the system, both orders
    again = run_judge(_judge(), systems, examples, tmp_path, [], seed=0)
    assert again["generated"] == 0 and FakeJudge.calls == 48 and again["systems"] == j["systems"]  # all from the cache
    other = run_judge(_judge(max_tokens=9), systems, examples, tmp_path, [], seed=0)
    assert other["generated"] == 48  # other decoding parameters: other cache keys


def test_a_position_biased_judge_flips_to_ties_and_fails_calibration(tmp_path, fake_backend):
    from toolkit.evaluate.judge_report import render_markdown, warning

    refs, examples, systems = _setup()
    fake_backend["rule"] = lambda task, a, b: "[[A]]"
    j = run_judge(_judge(), systems, examples, tmp_path, [], seed=0)
    [s] = j["systems"]
    assert (s["wins"], s["ties"], s["losses"]) == (0, 12, 0) and s["order_consistency"] == 0.0 and s["first_shown_picked"] == 1.0
    c = j["calibration"]
    assert c["undecided"] == 12 and not c["passed"] and not j["trusted"]
    assert "too weak to trust" in warning(j)
    md = "\n".join(render_markdown(j))
    assert "Calibration FAILED" in md and "fake-judge" in md and "too weak to trust" in md
    # an unreadable judge is counted as such, and its verdicts are ties
    fake_backend["rule"] = lambda task, a, b: "I cannot decide between these"
    j = run_judge(_judge(max_tokens=7), systems, examples, tmp_path, [], seed=0)
    assert j["systems"][0]["unreadable"] == 24 and j["systems"][0]["ties"] == 12


def test_length_control_and_agreement_with_humans(tmp_path, fake_backend):
    from toolkit.evaluate.judge_report import human_agreement, length_controlled
    from toolkit.evaluate.stats import logistic_at_zero

    # the fit recovers a known intercept and slope (fractional targets: expected values)
    x = [i / 50 - 1 for i in range(101)]
    y = [1 / (1 + math.exp(-(1.0 + 2.0 * v))) for v in x]
    rate, slope = logistic_at_zero(x, y, ridge=1e-9)
    assert rate == pytest.approx(1 / (1 + math.exp(-1.0)), abs=1e-4) and slope == pytest.approx(2.0, abs=1e-3)
    # a judge that only likes length: it wins where it is longer, so at equal length it is a coin flip
    lengths = [(100, 100 + d) for d in (-40, -30, -20, -10, 10, 20, 30, 40) * 3]
    scores = [1.0 if b > a else 0.0 for a, b in lengths]
    lc = length_controlled(scores, lengths, seed=0)
    assert lc["win_rate"]["mean"] == pytest.approx(0.5, abs=0.01) and lc["slope"] > 1
    assert lc["win_rate"]["low"] < 0.5 < lc["win_rate"]["high"]
    # agreement with humans: plan systems in either order, 'both unusable' is a tie
    humans = [{"systems": ["tuned", "base"], "labels": {"e1": {"ann": "first", "bob": "second"}, "e2": {"ann": "unusable"}}}]
    agree = human_agreement("base", "tuned", {"e1": "second", "e2": "tie", "e3": "first"}, humans)
    assert agree["ratings"] == 3 and agree["agreement"] == pytest.approx(2 / 3)
    assert human_agreement("base", "other", {"e1": "second"}, humans) is None


def test_compare_validates_the_judge_before_generating(tmp_path):
    from toolkit.evaluate.compare import CompareSettings, JudgeSettings, compare

    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"id": "1", "prompt": "p", "response": "r"}) + "\n")
    (tmp_path / "bad.txt").write_text("no placeholders")
    with pytest.raises(ConfigError, match="lacks"):
        compare([], CompareSettings(data=data), out=tmp_path / "c", judge=JudgeSettings("smollm2", prompt=tmp_path / "bad.txt"))
    assert not (tmp_path / "c").exists()


def test_compare_with_the_default_model_as_judge_then_human_ratings(tmp_path, default_gguf):
    """The real thing, small: 5 prompts (the fewest a calibration can pass on), 8-token answers, a short
    template of our own, 4-token verdicts; then a person's ratings and a re-run."""
    from toolkit.data.build import BuildOptions, build
    from toolkit.evaluate.compare import CompareSettings, JudgeSettings, compare
    from toolkit.evaluate.rate import open_session
    from toolkit.params import DEFAULTS

    build([ROOT / "data" / "sample" / "abstracts.jsonl"], out=tmp_path / "data", options=BuildOptions(split="80,10,10", seed=0, tokenizer="words"))
    (tmp_path / "hot.yaml").write_text("# hot\nparameters: {temperature: 1.3}\n")
    (tmp_path / "short.txt").write_text("# a short judge prompt\nTask: {prompt}\nA: {answer_a}\nB: {answer_b}\nBetter, [[A]] or [[B]]?")
    out = tmp_path / "cmp"
    run = dict(settings=CompareSettings(data=tmp_path / "data" / "test.jsonl", prompts=5), out=out, params=DEFAULTS.replace(max_tokens=8),
               judge=JudgeSettings(str(default_gguf), max_tokens=4, prompt=tmp_path / "short.txt"))
    assert compare([f"hot=smollm2@{tmp_path / 'hot.yaml'}"], **run) == 0
    result = json.loads((out / "results.json").read_text())
    j = result["judge"]
    assert j["model"] == str(default_gguf) and j["calibration"]["pairs"] == 5 and j["generated"] == 2 * 5 + 2 * 5
    assert j["template"] == str(tmp_path / "short.txt")
    [s] = j["systems"]
    assert s["wins"] + s["ties"] + s["losses"] == 5 and 0 <= s["order_consistency"] <= 1
    assert s["human_agreement"] is None and result["human"] == []
    md = (out / "report.md").read_text()
    assert "## Pairwise judge" in md and Path(default_gguf).name in md and "Calibration" in md and "length-controlled" in md
    if not j["trusted"]:
        assert "too weak to trust" in md
    # a person rates every pair; the re-run adds the human result and judges nothing again
    session = open_session(out, [], 5, seed=0)
    for k, p in enumerate(session.pairs):
        session.store.rate("ann", p["pair_id"], ("A", "B", "tie")[k % 3])
    assert compare([f"hot=smollm2@{tmp_path / 'hot.yaml'}"], **run) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["generated"] == {"base": 0, "hot": 0} and again["judge"]["generated"] == 0
    [h] = again["human"]
    assert h["systems"] == ["base", "hot"] and h["ratings"] == 5 and h["stale"] == 0
    assert again["judge"]["systems"][0]["human_agreement"]["ratings"] == 5
    md = (out / "report.md").read_text()
    assert "## Human ratings" in md and "Human win rate of hot" in md and "Sign test" in md
    html = (out / "report.html").read_text()
    assert "Human ratings" in html and "Pairwise judge" in html
    # `compare --again` repeats it all from the folder, the stored judge included, from the caches
    assert compare([], out=out, again=True) == 0
    repeated = json.loads((out / "results.json").read_text())
    assert repeated["generated"] == {"base": 0, "hot": 0} and repeated["judge"]["generated"] == 0
    assert repeated["judge"]["systems"] == again["judge"]["systems"] and repeated["human"] == again["human"]
