"""Per-cluster share of each year's papers and its growth over the last years.

Growth is the least-squares slope of a cluster's share over the last `window` years that have at
least `min_year_papers` papers, divided by its mean share in those years: the relative change per
year (+0.2 = the share grows by a fifth of itself each year). The 95% interval is the slope's
t-interval (n - 2 degrees of freedom) scaled the same way; with two usable years there is a slope
but no interval. Shares rather than counts, so a corpus that grows overall (or a last year that is
only partly collected) does not make every cluster look like it is growing. A share is of all the
year's papers, HDBSCAN's noise included (it is part of that year's output, in no cluster), so the
shares of a year add up to 1 minus its noise share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Growth:
    """A cluster's relative growth per year with its 95% interval (None where undefined)."""

    slope: float | None  # share points per year
    relative: float | None  # slope / mean share
    low: float | None
    high: float | None
    years: list[int]

    def to_dict(self) -> dict:
        return {"share_slope_per_year": self.slope, "relative_growth_per_year": self.relative,
                "ci95": [self.low, self.high] if self.low is not None else None, "years": self.years}


def shares_by_year(labels: np.ndarray, years: list[int | None], k: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(years, counts[k x Y], totals[Y]) over the dated papers; noise (label < 0) is counted in the
    totals only."""
    dated = [(int(lab), y) for lab, y in zip(labels, years) if y is not None]
    ys = sorted({y for _, y in dated})
    col = {y: i for i, y in enumerate(ys)}
    counts = np.zeros((k, len(ys)), dtype=int)
    totals = np.zeros(len(ys), dtype=int)
    for lab, y in dated:
        totals[col[y]] += 1
        if lab >= 0:
            counts[lab, col[y]] += 1
    return ys, counts, totals


def usable_years(ys: list[int], totals: np.ndarray, window: int, min_year_papers: int) -> list[int]:
    """The last `window` years with at least `min_year_papers` papers."""
    return [y for y, t in zip(ys, totals) if t >= min_year_papers][-window:]


def growth(shares: np.ndarray, years: list[int]) -> Growth:
    """Relative slope of `shares` (one per year in `years`) with a t-interval."""
    from scipy import stats

    m = len(years)
    if m < 2:
        return Growth(None, None, None, None, years)
    x = np.asarray(years, dtype=float)
    y = np.asarray(shares, dtype=float)
    mean_share = y.mean()
    xc = x - x.mean()
    slope = float((xc * (y - mean_share)).sum() / (xc**2).sum())
    scale = 1 / mean_share if mean_share > 0 else 0.0
    if m < 3:
        return Growth(slope, slope * scale, None, None, years)
    resid = y - (mean_share + slope * xc)
    se = float(np.sqrt((resid**2).sum() / (m - 2) / (xc**2).sum()))
    t = float(stats.t.ppf(0.975, m - 2))
    return Growth(slope, slope * scale, (slope - t * se) * scale, (slope + t * se) * scale, years)


def cluster_growth(labels: np.ndarray, years: list[int | None], k: int, window: int = 5,
                   min_year_papers: int = 10) -> tuple[list[Growth] | None, dict, str]:
    """Per cluster growth, the share table {year: [share per cluster]}, and a reason when skipped."""
    ys, counts, totals = shares_by_year(labels, years, k)
    if not ys:
        return None, {}, "no paper has a date or an arXiv id, so growth was skipped"
    table = {int(y): [float(c) for c in counts[:, i] / max(totals[i], 1)] for i, y in enumerate(ys)}
    use = usable_years(ys, totals, window, min_year_papers)
    if len(use) < 2:
        return None, table, f"fewer than 2 years with {min_year_papers}+ papers (years: {', '.join(map(str, ys))}), so growth was skipped"
    idx = [ys.index(y) for y in use]
    shares = counts[:, idx] / totals[idx]
    return [growth(shares[c], use) for c in range(k)], table, ""
