"""Reduce, cluster, label and check the stability of clusters of abstract embeddings (scikit-learn).

* PCA to `dims` dimensions (seeded), rows re-normalised to unit length, so that the Euclidean
  k-means objective ranks points by cosine similarity to the centres.
* k-means with k chosen by the silhouette coefficient (computed on up to 2000 sampled points)
  over k = 4..min(24, n/10) (2.. for tiny corpora), unless k is given; `n_init` seeded restarts.
* Or HDBSCAN (scikit-learn's, as BERTopic clusters): density clusters, no k to pick; points in no
  dense region get label -1 (noise), are never a cluster, and have no centre. The smallest cluster
  defaults to 1% of the abstracts, at least 10 (BERTopic's `min_topic_size`); clusters are the
  condensed tree's leaves, not its excess-of-mass selection (see `_hdbscan`). Deterministic.
* Labels: the most distinctive terms by class-based TF-IDF (BERTopic's c-TF-IDF: per-cluster term
  frequency, L1-normalised, times log(1 + A / f_x), A = average words per cluster, f_x = the term's
  frequency over all clusters) and the three titles nearest each centre.
* Stability (Hennig's cluster-wise bootstrap): re-cluster `bootstrap` resamples; each cluster's
  score is its best-match Jaccard with a resample's clusters, averaged; below 0.5 is unstable.
  HDBSCAN re-clusters the distinct drawn points instead (a point drawn m times would be a dense
  core of its own), its smallest cluster scaled to their share (Hennig's subsetting scheme).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from toolkit.errors import ConfigError

STABLE_JACCARD = 0.5  # Hennig (2007): below 0.5 a cluster "dissolved" in the resamples
SILHOUETTE_SAMPLE = 2000
METHODS = ("kmeans", "hdbscan")
MIN_CLUSTER_FLOOR = 10  # BERTopic's default min_topic_size
NOISE = -1  # HDBSCAN's label for a point in no cluster


def require_sklearn() -> None:
    """scikit-learn is a dependency of the toolkit; say how to get it rather than raise ImportError."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise ConfigError("toolkit gaps needs scikit-learn, which is not installed", fix="pip install 'scikit-learn>=1.3'") from None


@dataclass
class Clustering:
    """The fitted reduction and clusters; `centers` are unit vectors in the reduced space; a label
    is 0..k-1, or `NOISE` (HDBSCAN only) for a point in no cluster."""

    pca: object
    reduced: np.ndarray  # n x dims, unit rows
    labels: np.ndarray  # n
    centers: np.ndarray  # k x dims, unit rows
    k: int
    criterion: str
    silhouettes: dict[int, float] = field(default_factory=dict)
    method: str = "kmeans"
    min_cluster_size: int = 0  # HDBSCAN's, as used

    @property
    def noise(self) -> int:
        """How many points are in no cluster (0 for k-means)."""
        return int((self.labels == NOISE).sum())

    @property
    def sizes(self) -> np.ndarray:
        """Points per cluster (k), noise left out."""
        return np.bincount(self.labels[self.labels != NOISE], minlength=self.k)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Project new embeddings into the same reduced, unit-normalised space."""
        return unit_rows(self.pca.transform(X))

    def similarities(self, Z: np.ndarray) -> np.ndarray:
        """Cosine of each reduced point to each centre (n x k)."""
        return Z @ self.centers.T


def unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1)).astype(np.float32)


def reduce(X: np.ndarray, dims: int, seed: int):
    """A fitted PCA (at most `dims` components) and the unit-normalised projection of X."""
    from sklearn.decomposition import PCA

    n_comp = max(2, min(dims, X.shape[0] - 1, X.shape[1]))
    pca = PCA(n_components=n_comp, random_state=seed, svd_solver="auto").fit(X)
    return pca, unit_rows(pca.transform(X))


def k_range(n: int) -> list[int]:
    """The k tried by the silhouette criterion: 4..min(24, n/10), or 2.. for a small corpus."""
    high = min(24, n // 10)
    low = 4 if high >= 6 else 2
    return list(range(low, max(low, high) + 1))


def _kmeans(Z: np.ndarray, k: int, seed: int, n_init: int = 3):
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(Z)


def choose_k(Z: np.ndarray, ks: list[int], seed: int) -> tuple[int, dict[int, float]]:
    """The k with the highest silhouette (ties: the smaller k), with every k's score."""
    from sklearn.metrics import silhouette_score

    scores: dict[int, float] = {}
    sample = min(len(Z), SILHOUETTE_SAMPLE)
    for k in ks:
        if k >= len(Z):
            break
        labels = _kmeans(Z, k, seed, n_init=2).labels_
        if len(set(labels)) < 2:
            continue
        scores[k] = float(silhouette_score(Z, labels, metric="euclidean", sample_size=sample, random_state=seed))
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores


def fit_clusters(X: np.ndarray, k: int = 0, dims: int = 50, seed: int = 0, method: str = "kmeans",
                 min_cluster_size: int = 0) -> Clustering:
    """PCA then k-means (`k=0` picks k by silhouette over `k_range(n)`) or HDBSCAN
    (`min_cluster_size=0`: `auto_min_cluster_size(n)`)."""
    check_method(method)
    pca, Z = reduce(X, dims, seed)
    if method == "hdbscan":
        return _fit_hdbscan(pca, Z, min_cluster_size)
    scores: dict[int, float] = {}
    if k:
        criterion = f"k={k} given"
    else:
        k, scores = choose_k(Z, k_range(len(Z)), seed)
        criterion = f"k={k}: highest silhouette over k={min(scores)}..{max(scores)} (sampled on up to {SILHOUETTE_SAMPLE} points)"
    km = _kmeans(Z, k, seed)
    labels = km.labels_.astype(int)
    centers = unit_rows(np.stack([Z[labels == c].mean(0) if (labels == c).any() else km.cluster_centers_[c] for c in range(k)]))
    return Clustering(pca, Z, labels, centers, k, criterion, scores)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"--cluster {method} is not a clustering method", fix="give " + " or ".join(METHODS))


def auto_min_cluster_size(n: int) -> int:
    """HDBSCAN's default smallest cluster: 1% of the `n` abstracts, at least `MIN_CLUSTER_FLOOR`;
    a smaller group is not an area worth ranking, and it keeps the clusters (and pairs) few."""
    return max(MIN_CLUSTER_FLOOR, n // 100)


def _hdbscan(Z: np.ndarray, min_cluster_size: int) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    # leaf selection: the default excess-of-mass picks the largest stable clusters, and merged
    # neighbouring fields joined by a few cross-over papers (6 clusters for the synthetic corpus's
    # 10 topics); leaves are the finest clusters of min_cluster_size, the areas gaps lie between.
    # min_samples stays min_cluster_size (as in BERTopic): smaller split big topics into crumbs.
    return HDBSCAN(min_cluster_size=min_cluster_size, cluster_selection_method="leaf", copy=True).fit(Z).labels_.astype(int)


def _fit_hdbscan(pca, Z: np.ndarray, min_cluster_size: int) -> Clustering:
    """HDBSCAN on the reduced points; fewer than 2 clusters is the user's to fix, not a traceback."""
    n = len(Z)
    size = min_cluster_size or auto_min_cluster_size(n)
    labels = _hdbscan(Z, size) if n >= 2 * size else np.full(n, NOISE)
    k = int(labels.max()) + 1
    noise = int((labels == NOISE).sum())
    if k < 2:
        raise ConfigError(f"HDBSCAN found {k} cluster{'' if k == 1 else 's'} among {n} abstracts with min cluster size {size} "
                          f"({noise} left as noise); gaps need 2 or more",
                          fix=f"give a --min-cluster-size below {size}, or use --cluster kmeans" if size > 2 else "use --cluster kmeans")
    how = "given" if min_cluster_size else f"1% of the abstracts, at least {MIN_CLUSTER_FLOOR}"
    criterion = f"HDBSCAN, min cluster size {size} ({how}): {k} clusters, {noise} abstracts ({noise / n:.0%}) left as noise"
    centers = unit_rows(np.stack([Z[labels == c].mean(0) for c in range(k)]))
    return Clustering(pca, Z, labels, centers, k, criterion, {}, "hdbscan", size)


# --------------------------------------------------------------------------------- labels


def ctfidf_terms(texts: list[str], labels: np.ndarray, k: int, top: int = 6) -> list[list[str]]:
    """The `top` most distinctive terms (unigrams and bigrams) of each cluster by c-TF-IDF; noise
    abstracts are in no class, so their words neither label a cluster nor dilute the others'."""
    from sklearn.feature_extraction.text import CountVectorizer

    vec = CountVectorizer(stop_words="english", ngram_range=(1, 2), min_df=2, max_features=30000,
                          token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z0-9-]{2,}\b")
    try:
        counts = vec.fit_transform(texts)
    except ValueError:  # no term occurs twice: no labels rather than an error
        return [[] for _ in range(k)]
    terms = vec.get_feature_names_out()
    onehot = np.zeros((k, len(labels)), dtype=np.float32)
    clustered = np.flatnonzero(labels != NOISE)
    onehot[labels[clustered], clustered] = 1
    tf = np.asarray((counts.T @ onehot.T).T)  # k x terms
    per_class = tf.sum(1, keepdims=True)
    tf_norm = tf / np.where(per_class > 0, per_class, 1)
    avg_words = per_class.mean()
    idf = np.log(1 + avg_words / np.maximum(tf.sum(0), 1))
    scores = tf_norm * idf
    return [[str(terms[i]) for i in np.argsort(-scores[c])[:top] if scores[c, i] > 0] for c in range(k)]


def nearest_members(cl: Clustering, c: int, count: int = 3) -> list[int]:
    """Indices of the `count` members of cluster `c` nearest its centre."""
    members = np.flatnonzero(cl.labels == c)
    sims = cl.reduced[members] @ cl.centers[c]
    return [int(i) for i in members[np.argsort(-sims)[:count]]]


# ------------------------------------------------------------------------------ stability


def _recluster(cl: Clustering, drawn: np.ndarray, sample: np.ndarray, seed: int) -> np.ndarray:
    """Labels of the `sample` points after re-clustering a resample with the fit's own method."""
    if cl.method == "hdbscan":
        size = max(2, round(cl.min_cluster_size * len(sample) / len(drawn)))
        return _hdbscan(cl.reduced[sample], size) if len(sample) >= 2 * size else np.full(len(sample), NOISE)
    km = _kmeans(cl.reduced[drawn], cl.k, seed, n_init=2)
    return km.predict(cl.reduced[sample])


def stability(cl: Clustering, rounds: int = 5, seed: int = 0) -> tuple[list[float], float]:
    """Each cluster's mean best-match Jaccard over `rounds` bootstrap re-clusterings, and the mean
    adjusted Rand index between the full clustering and each resample's (on the resampled points
    the full fit clustered; a resample's noise counts as one more label, and never as a match)."""
    from sklearn.metrics import adjusted_rand_score

    if rounds <= 0:
        return [float("nan")] * cl.k, float("nan")
    rng = np.random.default_rng(seed)
    n = len(cl.labels)
    jaccard = np.zeros((rounds, cl.k))
    aris = []
    for r in range(rounds):
        drawn = rng.integers(0, n, size=n)  # with repeats: the resample's density is what is clustered
        sample = np.unique(drawn)
        boot = _recluster(cl, drawn, sample, seed + r + 1)
        orig = cl.labels[sample]
        kept = orig != NOISE
        aris.append(adjusted_rand_score(orig[kept], boot[kept]))
        found = [d for d in np.unique(boot) if d != NOISE]
        for c in range(cl.k):
            mine = orig == c
            if not mine.any():
                jaccard[r, c] = np.nan
                continue
            inter = np.array([(mine & (boot == d)).sum() for d in found] or [0])
            union = np.array([(mine | (boot == d)).sum() for d in found] or [1])
            jaccard[r, c] = (inter / np.maximum(union, 1)).max()
    with np.errstate(all="ignore"):
        per_cluster = np.nanmean(jaccard, axis=0)
    return [float(x) for x in per_cluster], float(np.mean(aris))
