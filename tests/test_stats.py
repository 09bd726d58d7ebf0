"""Bootstrap intervals, the paired comparison, the signed-rank p-values and the prompts-needed estimate."""

import math

import numpy as np
import pytest

from toolkit.evaluate.stats import Interval, bootstrap_mean, paired, prompts_needed


def test_a_constant_sample_has_a_zero_width_interval():
    ci = bootstrap_mean([0.7] * 20, resamples=500, seed=3)
    assert ci.mean == pytest.approx(0.7) and ci.low == pytest.approx(0.7) and ci.high == pytest.approx(0.7)


def test_empty_and_single_samples():
    empty = bootstrap_mean([])
    assert math.isnan(empty.mean) and math.isnan(empty.low) and math.isnan(empty.high)
    assert bootstrap_mean([0.25]) == Interval(0.25, 0.25, 0.25, 0.95)


def test_the_mean_is_the_sample_mean_and_the_interval_holds_it():
    values = [0.1, 0.4, 0.35, 0.8, 0.55, 0.6, 0.2, 0.9]
    ci = bootstrap_mean(values, resamples=2000, seed=0)
    assert ci.mean == pytest.approx(sum(values) / len(values))
    assert ci.low < ci.mean < ci.high
    assert 0.1 <= ci.low and ci.high <= 0.9  # a mean of resampled values stays within their range


def test_two_point_sample_gives_its_known_quantiles():
    """Resampled means of [0, 1] are 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and
    97.5% quantiles are 0 and 1."""
    ci = bootstrap_mean([0.0, 1.0], resamples=4000, seed=1)
    assert (ci.mean, ci.low, ci.high) == (0.5, 0.0, 1.0)


def test_seeded_resampling_repeats_and_a_lower_level_is_narrower():
    rng = np.random.default_rng(5)
    values = list(rng.normal(0.5, 0.1, size=30))
    assert bootstrap_mean(values, seed=7) == bootstrap_mean(values, seed=7)
    wide, narrow = bootstrap_mean(values, level=0.95), bootstrap_mean(values, level=0.5)
    assert narrow.level == 0.5 and wide.low < narrow.low < narrow.high < wide.high


def test_95_percent_intervals_cover_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = 0
    runs = 300
    for i in range(runs):
        ci = bootstrap_mean(list(rng.normal(1.0, 2.0, size=40)), resamples=1000, seed=i)
        covered += ci.low <= 1.0 <= ci.high
    # the percentile bootstrap runs slightly below its level with 40 items; 300 runs give +-2.5%
    assert 0.88 <= covered / runs <= 0.99


def test_interval_serialises():
    assert Interval(0.5, 0.4, 0.6).to_dict() == {"mean": 0.5, "low": 0.4, "high": 0.6, "level": 0.95}


def test_paired_comparison_of_known_samples():
    a, b = [1.0, 2.0, 3.0], [2.0, 2.0, 1.0]  # differences b - a: +1, 0, -2
    c = paired(a, b)
    assert c.n == 3 and c.mean_a == 2.0 and c.mean_b == pytest.approx(5 / 3)
    assert c.diff.mean == pytest.approx(-1 / 3)
    assert c.win_rate == pytest.approx(0.5)  # one win, one tie (half), one loss
    assert c.sd_diff == pytest.approx(math.sqrt(7 / 3))  # sample sd of (1, 0, -2)
    assert not c.significant
    assert c.to_dict()["significant"] is False and c.to_dict()["diff"]["mean"] == pytest.approx(-1 / 3)
    with pytest.raises(ValueError, match="differ in length"):
        paired([1.0], [1.0, 2.0])


def test_a_clear_improvement_is_significant():
    rng = np.random.default_rng(2)
    a = list(rng.uniform(0.3, 0.6, size=40))
    b = [x + 0.05 + rng.normal(0, 0.01) for x in a]
    c = paired(a, b)
    assert c.significant and c.diff.low > 0 and c.win_rate == 1.0 and c.p_value < 1e-6


def test_identical_samples_have_p_one_and_no_prompts_estimate():
    c = paired([0.2, 0.4, 0.6], [0.2, 0.4, 0.6])
    assert c.p_value == 1.0 and c.win_rate == 0.5 and c.prompts_needed is None and not c.significant


@pytest.mark.parametrize("diffs,p", [
    # exact two-sided signed-rank p-values: 2 * P(W- <= w) over the 2^n equally likely sign patterns
    ([1, 2, 3, 4, 5], 2 / 32),  # all positive: W- = 0, one pattern of 32
    ([1, 2, 3, 4, 5, 6], 2 / 64),
    ([1, -2, 3, 4, 5, 6], 6 / 64),  # W- = 2: sign patterns with W- of 0, 1 or 2 are 3 of 64
])
def test_wilcoxon_p_values_match_the_textbook(diffs, p):
    assert paired([0.0] * len(diffs), [float(d) for d in diffs]).p_value == pytest.approx(p)


def test_wilcoxon_p_values_match_scipy_with_zeros_and_ties():
    from scipy.stats import wilcoxon

    diffs = [0.0, 0.1, -0.1, 0.3, 0.25, -0.05, 0.4, 0.0, 0.2, 0.15, 0.3, -0.2]
    expected = wilcoxon(diffs, zero_method="zsplit").pvalue
    assert paired([0.0] * len(diffs), diffs).p_value == pytest.approx(expected)


def test_prompts_needed_follows_its_formula():
    # n = ((z_0.975 + z_0.8) * sd / effect)^2 = ((1.959964 + 0.841621) * 0.2 / 0.1)^2 = 31.40, rounded up
    assert prompts_needed(0.1, 0.2) == 32
    assert prompts_needed(-0.1, 0.2) == 32  # the sign of the effect does not matter
    # alpha 0.01, power 0.9: ((2.575829 + 1.281552) * 0.5 / 0.25)^2 = 59.52
    assert prompts_needed(0.25, 0.5, alpha=0.01, power=0.9) == 60
    assert prompts_needed(1.0, 0.01) == 2  # never fewer than two
    assert prompts_needed(0.1, 0.0) is None and prompts_needed(0.0, 0.2) is None and prompts_needed(float("nan"), 0.2) is None
