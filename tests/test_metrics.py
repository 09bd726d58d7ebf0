"""Per-example metrics on known texts, and the sweep objective's parsing and weighting."""

import pytest

from toolkit.errors import ConfigError, DataError
from toolkit.evaluate.metrics import METRICS, MetricSuite, objective_scores, parse_objective

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
