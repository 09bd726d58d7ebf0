"""Per-example metrics on known texts, and the sweep objective's parsing and weighting."""

import pytest

from toolkit.errors import ConfigError, DataError
from toolkit.evaluate.metrics import METRICS, Metric, MetricSuite, objective_scores, parse_objective, register

REF = "the cat sat on the mat"


@pytest.fixture(scope="module")
def suite():
    return MetricSuite()


def test_identical_texts_score_one_and_disjoint_texts_zero(suite):
    s = suite.score([REF, "dogs bark loudly"], [REF, "quantum field theory"], ("rouge_l", "bleu"))
    assert s["rouge_l"] == pytest.approx([1.0, 0.0])
    assert s["bleu"] == pytest.approx([1.0, 0.0])


def test_rouge_l_of_known_pairs(suite):
    # longest common subsequence "the cat" (2 tokens): P = 2/2, R = 2/6, F = 2PR / (P + R) = 0.5
    # "The Cats sat" vs "the cat sitting": lower-cased and stemmed, LCS "the cat": P = R = F = 2/3
    s = suite.score(["the cat", "The Cats sat", "the cat is on the mat"], [REF, "the cat sitting", REF], ("rouge_l",))
    assert s["rouge_l"] == pytest.approx([0.5, 2 / 3, 5 / 6])  # last: LCS "the cat on the mat", 5 of 6 each way


def test_sentence_bleu_of_a_short_candidate_is_its_brevity_penalty(suite):
    # "the cat" has every 1- and 2-gram in the reference (precision 1 at the orders it has), and is
    # 2 tokens against 6: brevity penalty exp(1 - 6/2)
    import math

    assert suite.score(["the cat"], [REF], ("bleu",))["bleu"][0] == pytest.approx(math.exp(-2))


def test_scores_come_back_in_the_order_asked_and_mismatches_fail(suite):
    assert list(suite.score([REF], [REF], ("bleu", "rouge_l"))) == ["bleu", "rouge_l"]
    with pytest.raises(DataError, match="2 candidates but 1 references"):
        suite.score([REF, REF], [REF], ("bleu",))
    with pytest.raises(ConfigError, match="unknown metric 'meteor'"):
        suite.score([REF], [REF], ("meteor",))


@pytest.mark.slow
def test_bertscore_of_identical_texts_is_one(suite):
    s = suite.score([REF, "dogs bark loudly"], [REF, "quantum field theory"], ("bertscore_f1", "bertscore_p", "bertscore_r"))
    assert s["bertscore_f1"][0] == pytest.approx(1.0, abs=1e-4) and s["bertscore_p"][0] == pytest.approx(1.0, abs=1e-4)
    assert s["bertscore_f1"][1] < s["bertscore_f1"][0]


def test_objective_names_and_mixes():
    assert parse_objective("rouge_l") == {"rouge_l": 1.0}
    assert parse_objective({"bleu": 1, "rouge_l": 3}) == {"bleu": 0.25, "rouge_l": 0.75}
    assert parse_objective({"bertscore_f1": 0.5, "bleu": 0}) == {"bertscore_f1": 1.0, "bleu": 0.0}
    assert set(METRICS) == {"bertscore_f1", "bertscore_p", "bertscore_r", "rouge_l", "bleu"}


@pytest.mark.parametrize("spec,match", [
    ({}, "metric is empty"),
    (None, "metric is empty"),
    ("meteor", "unknown metric 'meteor'"),
    ({"bleu": -1}, "must be a non-negative number, got -1"),
    ({"bleu": "high"}, "must be a non-negative number, got 'high'"),
    ({"bleu": 0, "rouge_l": 0}, "sum to zero"),
])
def test_bad_objectives_fail_in_one_line(spec, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_objective(spec)
    assert "\n" not in str(info.value)


def test_objective_scores_weight_each_example():
    scores = {"bleu": [0.2, 0.4], "rouge_l": [0.6, 1.0]}
    assert objective_scores(scores, {"bleu": 0.25, "rouge_l": 0.75}) == pytest.approx([0.5, 0.85])


def test_a_registered_metric_is_scored_swept_and_listed():
    from types import SimpleNamespace

    from extra_metric import LENGTH_RATIO, registered

    from toolkit.evaluate.sweep.config import parse_sweep
    from toolkit.evaluate.sweep.study import Evaluator

    shipped = set(METRICS)
    space = {"temperature": {"low": 0.1, "high": 1.0}}
    with pytest.raises(ConfigError, match="unknown metric 'length_ratio'"):
        parse_sweep({"space": space, "metric": "length_ratio"})
    with registered(LENGTH_RATIO):
        assert list(METRICS)[-1] == "length_ratio"  # scored by default with the others (compare's test runs that)
        s = MetricSuite().score(["the cat", REF], [REF, REF], ("length_ratio", "rouge_l"))
        assert s["length_ratio"] == pytest.approx([2 / 6, 1.0]) and s["rouge_l"][1] == pytest.approx(1.0)
        # a sweep file may name it, alone or in a mix; an unknown name's fix lists it among the choices
        assert parse_sweep({"space": space, "metric": {"length_ratio": 1, "rouge_l": 3}}).metric == {"length_ratio": 0.25, "rouge_l": 0.75}
        with pytest.raises(ConfigError) as info:
            parse_sweep({"space": space, "metric": "meteor"})
        assert "length_ratio" in info.value.fix and "\n" not in str(info.value)
        ev = Evaluator(None, ["p1", "p2"], [REF, "a b"], {"length_ratio": 1.0}, MetricSuite())
        assert ev.score([SimpleNamespace(text="the cat"), SimpleNamespace(text="a b c d")], [0, 1]) == pytest.approx([2 / 6, 0.5])
        with pytest.raises(ConfigError, match="already in the table"):
            register(LENGTH_RATIO)
    assert set(METRICS) == shipped  # removed again


def test_metrics_reading_one_computation_share_it_within_a_call():
    from extra_metric import registered

    runs = []

    def lengths(suite, candidates, references):
        return suite.shared("lengths", lambda: runs.append(1) or [(len(c), len(r)) for c, r in zip(candidates, references)])

    with registered(Metric("cand_len", "candidate length", lambda su, c, r: [a for a, _ in lengths(su, c, r)], range=(0, 100)),
                    Metric("ref_len", "reference length", lambda su, c, r: [b for _, b in lengths(su, c, r)], range=(0, 100))):
        suite = MetricSuite()
        assert suite.score(["ab"], ["abc"], ("cand_len", "ref_len")) == {"cand_len": [2], "ref_len": [3]}
        assert len(runs) == 1
        assert suite.score(["abcd"], ["a"], ("ref_len", "cand_len")) == {"ref_len": [1], "cand_len": [4]}
        assert len(runs) == 2  # the next call computes afresh for its own texts


def test_a_lower_is_better_metric_enters_the_objective_flipped_and_bad_scorers_fail():
    from extra_metric import registered

    from toolkit.evaluate.compare_report import _versus

    errors = Metric("errors", "Error rate", lambda suite, c, r: [0.0 if a == b else 1.0 for a, b in zip(c, r)],
                    higher_is_better=False)
    short = Metric("short", "Too few", lambda suite, c, r: [0.5])
    with registered(errors, short):
        scores = {"errors": [0.0, 1.0, 0.25], "bleu": [0.5, 0.5, 0.5]}
        assert objective_scores(scores, {"errors": 0.5, "bleu": 0.5}) == pytest.approx([0.75, 0.25, 0.625])
        # fewer errors than the reference on two prompts of three: a win rate of 2/3 in the metric's direction
        assert _versus(errors, [1.0, 1.0, 0.0], [0.0, 0.0, 1.0], seed=0).win_rate == pytest.approx(2 / 3)
        assert _versus(METRICS["bleu"], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0], seed=0).win_rate == pytest.approx(1 / 3)
        with pytest.raises(DataError, match="metric short gave 1 scores for 2 pairs"):
            MetricSuite().score([REF, REF], [REF, REF], ("short",))
    with pytest.raises(ConfigError, match="a metric name or a mapping") as info:
        parse_objective(["bleu"])
    assert "\n" not in str(info.value)
