"""Bridging papers between cluster pairs, lift against chance, and the gap score.

* A paper *bridges* clusters i and j when they are its two nearest centres and its cosine to the
  second is within `threshold` of its cosine to the first; the threshold is the `quantile` (10%)
  of those margins over the fitted papers, kept as a number so later papers are judged alike.
* *Expected* bridges of a pair: all bridging papers shared out in proportion to n_i * n_j (the
  independence null of atypical-combination studies, Uzzi et al. 2013); lift = observed / expected,
  both smoothed by 0.5 so an empty pair gets a finite lift.
* HDBSCAN's noise papers are in no cluster but still count here, by their two nearest centres,
  as every later paper does in the backtest: papers between dense areas are often what density
  clustering leaves as noise, and dropping them would hide exactly the bridges. Cluster sizes
  (for the expectation) leave noise out.
* The gap score of a pair is the product of three parts, each in (0, 1], all shown as reasons:
  nearness (the pair's similarity percentile among all pairs), atypicality (1 / (1 + lift)) and
  momentum (the percentile of the slower side's growth). A *candidate* gap is a pair in the top
  quartile of similarity, bridged less than chance (lift < 1), with both sides growing, and both
  clusters stable. Without growth (no dates, or too few years) momentum is left out (1 for every
  pair) and no side has to grow: pairs are still ranked, by nearness and atypicality, and their
  reasons say "growth unknown".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SMOOTH = 0.5
GROWTH_UNKNOWN = "growth unknown (ranked by nearness and atypicality)"


@dataclass
class Bridges:
    """Per-pair observed and expected bridging papers (k x k, symmetric) and the margin threshold."""

    observed: np.ndarray
    expected: np.ndarray
    threshold: float
    bridging: int  # papers that bridge some pair

    @property
    def lift(self) -> np.ndarray:
        return (self.observed + SMOOTH) / (self.expected + SMOOTH)


def top_two(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's nearest and second-nearest centre and the cosine margin between them."""
    order = np.argpartition(-sims, 1, axis=1)[:, :2]
    first_sim = np.take_along_axis(sims, order, 1)
    swap = first_sim[:, 1] > first_sim[:, 0]
    order[swap] = order[swap][:, ::-1]
    first_sim[swap] = first_sim[swap][:, ::-1]
    return order[:, 0], order[:, 1], first_sim[:, 0] - first_sim[:, 1]


def margin_threshold(sims: np.ndarray, quantile: float = 0.1) -> float:
    """The margin below which a paper counts as bridging (the `quantile` of the fitted margins)."""
    _, _, margin = top_two(sims)
    return float(np.quantile(margin, quantile))


def count_bridges(sims: np.ndarray, threshold: float, sizes: np.ndarray) -> Bridges:
    """Observed bridges per pair among the papers whose similarities are `sims` (n x k), and the
    expectation from cluster `sizes`."""
    k = sims.shape[1]
    a, b, margin = top_two(sims)
    near = margin <= threshold
    observed = np.zeros((k, k))
    np.add.at(observed, (a[near], b[near]), 1)
    observed = observed + observed.T
    return Bridges(observed, expected_bridges(int(near.sum()), sizes), threshold, int(near.sum()))


def expected_bridges(total: int, sizes: np.ndarray) -> np.ndarray:
    """`total` bridges shared out over pairs in proportion to n_i * n_j."""
    sizes = np.asarray(sizes, dtype=float)
    prod = np.outer(sizes, sizes)
    np.fill_diagonal(prod, 0)
    pair_sum = prod.sum() / 2
    return total * prod / pair_sum if pair_sum > 0 else prod


def pair_similarity(centers: np.ndarray) -> np.ndarray:
    """Cosine similarity between unit centres."""
    return centers @ centers.T


def pairs(k: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(k) for j in range(i + 1, k)]


def percentile_ranks(values: np.ndarray) -> np.ndarray:
    """Each value's rank as a fraction in (0, 1] (ties share the mean rank)."""
    from scipy.stats import rankdata

    values = np.asarray(values, dtype=float)
    return rankdata(values) / len(values) if len(values) else values


def score_pairs(sim: np.ndarray, bridges: Bridges, growth: list[float] | None, stable: list[bool] | None = None) -> list[dict]:
    """Every cluster pair with its reasons and score, best first.

    `growth` is each cluster's relative growth per year (None: no dates, momentum left out);
    `stable` marks clusters whose pairs may be candidates.
    """
    k = sim.shape[0]
    ps = pairs(k)
    if not ps:
        return []
    sims = np.array([sim[i, j] for i, j in ps])
    near_pct = percentile_ranks(sims)
    near_cut = np.quantile(sims, 0.75)
    lift = bridges.lift
    slow = np.array([min(growth[i], growth[j]) for i, j in ps]) if growth is not None else None
    momentum = percentile_ranks(slow) if slow is not None else np.ones(len(ps))
    rows = []
    for n, (i, j) in enumerate(ps):
        atyp = 1 / (1 + lift[i, j])
        growing = growth is None or (growth[i] > 0 and growth[j] > 0)
        rows.append({
            "a": i, "b": j, "similarity": float(sims[n]), "nearness": float(near_pct[n]),
            "observed_bridges": int(bridges.observed[i, j]), "expected_bridges": float(bridges.expected[i, j]),
            "lift": float(lift[i, j]), "atypicality": float(atyp),
            "growth_a": None if growth is None else float(growth[i]), "growth_b": None if growth is None else float(growth[j]),
            "momentum": float(momentum[n]),
            "score": float(near_pct[n] * atyp * momentum[n]),
            "candidate": bool(sims[n] >= near_cut and lift[i, j] < 1 and growing and (stable is None or (stable[i] and stable[j]))),
        })
    rows.sort(key=lambda r: (-r["score"], r["a"], r["b"]))
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    return rows


def reasons(row: dict) -> str:
    """The parts of a pair's score in words."""
    parts = [f"similarity {row['similarity']:.2f} (percentile {row['nearness']:.0%} of pairs)",
             f"{row['observed_bridges']} bridging papers vs {row['expected_bridges']:.1f} by chance (lift {row['lift']:.2f})"]
    if row["growth_a"] is not None:
        parts.append(f"growth {row['growth_a']:+.0%}/yr and {row['growth_b']:+.0%}/yr")
    else:
        parts.append(GROWTH_UNKNOWN)
    return "; ".join(parts)
