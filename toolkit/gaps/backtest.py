"""`--backtest YEAR`: does the gap ranking predict which cluster pairs get bridged later?

The time-split link-prediction protocol of Science4Cast (Krenn et al. 2023), on cluster pairs:
fit the whole analysis on the papers up to YEAR, rank every pair, then place the later papers in
the same reduced space (same PCA, same centres, same bridging threshold) and count their bridges
(every later paper, as HDBSCAN's noise counts in the fit: by its two nearest centres).
A pair *gained* bridging papers when it has at least `min_new` later bridges and its bridging
rate (bridges per paper) at least doubled. Our ranking is scored by precision@k and ROC AUC next
to three baselines ranked on the same pairs in the same run: random (its expected value), size
product n_i * n_j (preferential attachment) and centre similarity alone.
"""

from __future__ import annotations

import numpy as np

from toolkit.errors import DataError
from toolkit.gaps.analysis import Analysis, Settings, analyse
from toolkit.gaps.bridges import count_bridges, pairs
from toolkit.gaps.corpus import Paper

METHODS = ("gap score", "random", "size product", "similarity")


def split(papers: list[Paper], year: int, path=None) -> tuple[list[int], list[int]]:
    """Indices of the dated papers up to `year` and after it; an error when either side is too thin."""
    before = [i for i, p in enumerate(papers) if p.year is not None and p.year <= year]
    after = [i for i, p in enumerate(papers) if p.year is not None and p.year > year]
    years = sorted({p.year for p in papers if p.year is not None})
    span = f"{years[0]}..{years[-1]}" if years else "none"
    if not years:
        raise DataError("--backtest needs dates, and no paper has a date or an arXiv id", path=path,
                        fix="give the papers an update_date or arXiv ids, or drop --backtest")
    if len(before) < 20 or not after:
        raise DataError(f"--backtest {year} leaves {len(before)} papers to fit and {len(after)} to check (years {span})",
                        path=path, fix="pick a YEAR inside the corpus's years, with papers on both sides")
    return before, after


def gained(fit: Analysis, Z_after: np.ndarray, min_new: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Per pair (in `pairs(k)` order): later bridges, and whether the pair gained bridging papers."""
    cl = fit.clustering
    later = count_bridges(cl.similarities(Z_after), fit.bridges.threshold, fit.sizes)
    n_before, n_after = len(fit.papers), len(Z_after)
    ps = pairs(fit.k)
    b_before = np.array([fit.bridges.observed[i, j] for i, j in ps])
    b_after = np.array([later.observed[i, j] for i, j in ps])
    hit = (b_after >= min_new) & (b_after / n_after >= 2 * b_before / n_before)
    return b_after, hit


def auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC (Mann-Whitney, ties counted half); None without both classes."""
    from scipy.stats import rankdata

    pos, neg = int(positive.sum()), int((~positive).sum())
    if not pos or not neg:
        return None
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def precision_at(scores: np.ndarray, positive: np.ndarray, k: int) -> float:
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]  # ties: the lower pair index first
    return float(positive[order].mean()) if len(order) else 0.0


def baselines(fit: Analysis, seed: int) -> dict[str, np.ndarray]:
    """Every method's score per pair, in `pairs(k)` order (higher = more likely to be bridged)."""
    ps = pairs(fit.k)
    index = {(r["a"], r["b"]): r["score"] for r in fit.pairs}
    sizes = fit.sizes
    rng = np.random.default_rng(seed)
    return {
        "gap score": np.array([index[p] for p in ps]),
        "random": rng.random(len(ps)),
        "size product": np.array([float(sizes[i] * sizes[j]) for i, j in ps]),
        "similarity": np.array([fit.pair_sim[i, j] for i, j in ps]),
    }


def evaluate(scores: dict[str, np.ndarray], hit: np.ndarray, ks: tuple[int, ...] = (3, 5, 10)) -> dict:
    """precision@k and AUC per method; random also gets its expected values (base rate, 0.5)."""
    ks = tuple(k for k in ks if k <= len(hit)) or (len(hit),)
    rate = float(hit.mean()) if len(hit) else 0.0
    out = {}
    for name, s in scores.items():
        out[name] = {"auc": auc(s, hit), **{f"precision@{k}": precision_at(s, hit, k) for k in ks}}
    out["random"]["expected"] = {"auc": 0.5 if 0 < hit.sum() < len(hit) else None, **{f"precision@{k}": rate for k in ks}}
    return out


def backtest(papers: list[Paper], X: np.ndarray, year: int, settings: Settings, path=None, min_new: int = 3) -> dict:
    """Fit up to `year`, rank pairs, check them against the later papers; every number for gaps.json."""
    before, after = split(papers, year, path)
    fit = analyse([papers[i] for i in before], X[before], settings)
    Z_after = fit.clustering.transform(X[after])
    b_after, hit = gained(fit, Z_after, min_new)
    scores = baselines(fit, settings.seed)
    ps = pairs(fit.k)
    rank_of = {(r["a"], r["b"]): r["rank"] for r in fit.pairs}
    later_years = sorted({papers[i].year for i in after})
    return {
        "year": year, "fit_papers": len(before), "later_papers": len(after),
        "later_years": [later_years[0], later_years[-1]], "clusters": fit.k, "pairs": len(ps),
        "gained_pairs": int(hit.sum()), "rule": f"a pair gained bridges: >= {min_new} later bridging papers and its bridging rate at least doubled",
        "methods": evaluate(scores, hit),
        "pair_outcomes": [{"a": i, "b": j, "label_a": fit.label(i), "label_b": fit.label(j), "rank": rank_of[(i, j)],
                           "bridges_before": int(fit.bridges.observed[i, j]), "bridges_after": int(b_after[n]), "gained": bool(hit[n])}
                          for n, (i, j) in enumerate(ps)],
        "_fit": fit,  # for the test and the report; dropped before writing JSON
        "_scores": scores,
    }
