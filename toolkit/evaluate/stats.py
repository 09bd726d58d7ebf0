"""Small statistics shared by the sweep and the comparison: bootstrap intervals and paired tests.

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
