"""Small statistics shared by the sweep and the comparison: bootstrap intervals, paired tests, sign
test, Cohen's kappa and the logistic fit behind length-controlled win rates.

All resampling takes a seed, so the same numbers come out of the same inputs.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass


@dataclass
class Interval:
    """A mean with a percentile-bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    level: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)


def bootstrap_mean(values: list[float], *, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """Mean of `values` with a bootstrap interval over the items (prompts)."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), level)
    if len(x) == 1:
        return Interval(float(x[0]), float(x[0]), float(x[0]), level)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    alpha = (1 - level) / 2
    return Interval(float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)), level)


@dataclass
class PairedComparison:
    """`b - a` over paired items: mean difference with its bootstrap interval, tests and win rate."""

    mean_a: float
    mean_b: float
    diff: Interval
    p_value: float          # Wilcoxon signed-rank, two-sided (1.0 when all differences are zero)
    win_rate: float         # share of items where b > a (ties count half)
    n: int
    sd_diff: float
    prompts_needed: int | None  # items needed to detect the observed difference (alpha 0.05, power 0.8)

    @property
    def significant(self) -> bool:
        """Beyond noise: the bootstrap interval excludes zero and the signed-rank test agrees (p < 0.05)."""
        return (self.diff.low > 0 or self.diff.high < 0) and self.p_value < 0.05

    def to_dict(self) -> dict:
        data = asdict(self)
        data["significant"] = self.significant
        return data


def paired(a: list[float], b: list[float], *, resamples: int = 2000, seed: int = 0) -> PairedComparison:
    """Compare two systems scored on the same items."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    diffs = [y - x for x, y in zip(a, b)]
    n = len(diffs)
    interval = bootstrap_mean(diffs, resamples=resamples, seed=seed)
    sd = statistics.stdev(diffs) if n > 1 else 0.0
    return PairedComparison(
        mean_a=statistics.fmean(a) if a else float("nan"), mean_b=statistics.fmean(b) if b else float("nan"),
        diff=interval, p_value=_wilcoxon(diffs), win_rate=_win_rate(diffs), n=n, sd_diff=sd,
        prompts_needed=prompts_needed(interval.mean, sd),
    )


def _wilcoxon(diffs: list[float]) -> float:
    if not any(abs(d) > 1e-12 for d in diffs):
        return 1.0
    from scipy.stats import wilcoxon

    return float(wilcoxon(diffs, zero_method="zsplit").pvalue)


def _win_rate(diffs: list[float]) -> float:
    if not diffs:
        return float("nan")
    return sum(1.0 if d > 1e-12 else 0.5 if abs(d) <= 1e-12 else 0.0 for d in diffs) / len(diffs)


def prompts_needed(effect: float, sd: float, *, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Paired items needed for a two-sided test to detect `effect` given the per-item sd of differences."""
    if sd <= 0 or effect == 0 or math.isnan(effect):
        return None
    from scipy.stats import norm

    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    return max(2, math.ceil((z * sd / abs(effect)) ** 2))


def sign_test(wins: int, losses: int) -> float:
    """Two-sided sign test of wins against losses (ties left out): the binomial p of a 50/50 split."""
    if wins + losses == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(wins, wins + losses, 0.5).pvalue)


def beats_chance(successes: int, trials: int) -> float:
    """One-sided binomial p that `successes` of `trials` is above 50%: 1.0 with no trials."""
    if trials == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(successes, trials, 0.5, alternative="greater").pvalue)


def cohen_kappa(a: list, b: list) -> float:
    """Cohen's kappa of two raters' labels on the same items (nan when undefined: no items, or both
    raters always gave the one same label, so chance agreement is already total)."""
    if len(a) != len(b):
        raise ValueError(f"kappa needs the same items: {len(a)} vs {len(b)} labels")
    n = len(a)
    if n == 0:
        return float("nan")
    observed = sum(x == y for x, y in zip(a, b)) / n
    labels = set(a) | set(b)
    expected = sum((a.count(k) / n) * (b.count(k) / n) for k in labels)
    return float("nan") if expected >= 1.0 else (observed - expected) / (1.0 - expected)


def logistic_at_zero(x: list[float], y: list[float], *, ridge: float = 1e-2) -> tuple[float, float]:
    """Fit P(y=1) = sigmoid(a + b·x) by penalised maximum likelihood (y may be fractional: a tie
    is 0.5) and return (sigmoid(a), b): the predicted rate at x = 0 and the slope.

    The small ridge keeps the fit finite when every y is 0 or 1 (perfect separation)."""
    import numpy as np

    X = np.column_stack([np.ones(len(x)), np.asarray(x, dtype=float)])
    t = np.asarray(y, dtype=float)
    w = np.zeros(2)
    for _ in range(50):  # Newton-Raphson: converges in a handful of steps on two parameters
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        grad = X.T @ (p - t) + ridge * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(1.0 / (1.0 + np.exp(-w[0]))), float(w[1])


def conditional_power(diffs: list[float], total: int, *, alpha: float = 0.05) -> float:
    """Chance that paired differences, once all `total` items are scored, show a positive mean
    beyond noise (two-sided z test at `alpha`), if the items not scored yet continue the trend seen
    so far (the observed mean and sd). 0 or 1 once nothing is left to score or there is no spread."""
    from scipy.stats import norm

    n = len(diffs)
    if n == 0:
        return 1.0
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if n > 1 else 0.0
    if sd <= 1e-12:  # every difference the same: the trend decides
        return 1.0 if mean > 1e-12 else 0.0
    z = norm.ppf(1 - alpha / 2)
    if n >= total:
        return 1.0 if mean * math.sqrt(n) / sd > z else 0.0
    rest = total - n
    need = z * sd * math.sqrt(total) - n * mean - rest * mean
    return float(1.0 - norm.cdf(need / (sd * math.sqrt(rest))))
