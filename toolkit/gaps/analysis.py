"""One fit of the gap analysis on embedded papers: clusters, labels, stability, growth, bridges, gaps.

`analyse` is what `toolkit gaps` runs on the whole corpus and the backtest runs on the papers up
to its year; `Analysis.to_dict` is the part of gaps.json that holds every number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolkit.gaps.bridges import Bridges, count_bridges, margin_threshold, pair_similarity, reasons, score_pairs
from toolkit.gaps.cluster import STABLE_JACCARD, Clustering, ctfidf_terms, fit_clusters, nearest_members, stability
from toolkit.gaps.corpus import Paper
from toolkit.gaps.trends import Growth, cluster_growth


@dataclass
class Settings:
    """The analysis options (the CLI's), recorded in gaps.json."""

    clusters: int = 0
    cluster: str = "kmeans"
    min_cluster_size: int = 0
    dims: int = 50
    seed: int = 0
    bootstrap: int = 5
    window: int = 5
    min_year_papers: int = 10
    bridge_quantile: float = 0.1


@dataclass
class Analysis:
    papers: list[Paper]
    clustering: Clustering
    terms: list[list[str]]
    jaccard: list[float]
    ari: float
    growth: list[Growth] | None
    shares: dict
    growth_skipped: str
    bridges: Bridges
    pair_sim: np.ndarray
    pairs: list[dict]
    settings: Settings

    @property
    def k(self) -> int:
        return self.clustering.k

    @property
    def sizes(self) -> np.ndarray:
        """Papers per cluster; HDBSCAN's noise is in none (see `noise`)."""
        return self.clustering.sizes

    @property
    def noise(self) -> int:
        return self.clustering.noise

    def stable(self, c: int) -> bool:
        j = self.jaccard[c]
        return bool(np.isnan(j) or j >= STABLE_JACCARD)

    def label(self, c: int, terms: int = 3) -> str:
        return ", ".join(self.terms[c][:terms]) or f"cluster {c}"

    def gaps(self, top: int = 10) -> list[dict]:
        """The ranked candidate gaps (see `toolkit.gaps.bridges`), best first."""
        return [r for r in self.pairs if r["candidate"]][:top]

    def cluster_rows(self) -> list[dict]:
        rows = []
        sizes = self.sizes
        for c in range(self.k):
            near = nearest_members(self.clustering, c)
            g = self.growth[c].to_dict() if self.growth is not None else None
            rows.append({
                "id": c, "label": self.label(c), "terms": self.terms[c], "size": int(sizes[c]),
                "share": float(sizes[c] / len(self.papers)),
                "nearest": [{"id": self.papers[i].id, "title": self.papers[i].title or self.papers[i].abstract[:100]} for i in near],
                "stability_jaccard": None if np.isnan(self.jaccard[c]) else round(self.jaccard[c], 4),
                "stable": self.stable(c), "growth": g,
                "share_by_year": {str(y): round(s[c], 5) for y, s in self.shares.items()},
            })
        return rows

    def to_dict(self, top: int = 10) -> dict:
        s = self.settings
        return {
            "papers": len(self.papers), "clusters": self.k, "method": self.clustering.method, "noise": self.noise,
            "criterion": self.clustering.criterion,
            "silhouette_by_k": {str(k): round(v, 4) for k, v in self.clustering.silhouettes.items()},
            "stability": {"bootstrap_rounds": s.bootstrap, "mean_adjusted_rand": None if np.isnan(self.ari) else round(self.ari, 4),
                          "unstable_below_jaccard": STABLE_JACCARD},
            "growth_skipped": self.growth_skipped or None,
            "bridges": {"margin_threshold": self.bridges.threshold, "quantile": s.bridge_quantile,
                        "bridging_papers": self.bridges.bridging},
            "cluster_list": self.cluster_rows(),
            "pairs": [r | {"reasons": reasons(r)} for r in self.pairs],
            "gaps": [r | {"reasons": reasons(r)} for r in self.gaps(top)],
            "settings": vars(s),
        }


def analyse(papers: list[Paper], X: np.ndarray, settings: Settings) -> Analysis:
    """Cluster the embeddings `X` of `papers` and score every cluster pair.

    HDBSCAN's noise papers are in no cluster, so never labelled, sized or ranked; they still count
    as bridging papers by their two nearest centres (see `toolkit.gaps.bridges`)."""
    s = settings
    cl = fit_clusters(X, s.clusters, s.dims, s.seed, s.cluster, s.min_cluster_size)
    terms = ctfidf_terms([p.text for p in papers], cl.labels, cl.k)
    jaccard, ari = stability(cl, s.bootstrap, s.seed)
    growth, shares, skipped = cluster_growth(cl.labels, [p.year for p in papers], cl.k, s.window, s.min_year_papers)
    sims = cl.similarities(cl.reduced)
    bridges = count_bridges(sims, margin_threshold(sims, s.bridge_quantile), cl.sizes)
    pair_sim = pair_similarity(cl.centers)
    stable = [bool(np.isnan(j) or j >= STABLE_JACCARD) for j in jaccard]
    rel = [g.relative or 0.0 for g in growth] if growth is not None else None
    rows = score_pairs(pair_sim, bridges, rel, stable)
    return Analysis(papers, cl, terms, jaccard, ari, growth, shares, skipped, bridges, pair_sim, rows, s)
