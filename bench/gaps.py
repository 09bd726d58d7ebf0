"""Scale of `toolkit gaps`: embedding speed, and clustering / bridge counting time and memory by corpus size.

1. Abstracts embedded per second with the embedded MiniLM, batched (32 a pass, length-sorted) vs one
   at a time, on a subset of synthetic abstracts (`toolkit.gaps.synthetic`); the model-free `words`
   encoder for comparison. Embedding is linear in the corpus, so the subset rate extrapolates.
2. For 2k, 20k and 100k abstracts: PCA + k-means (k given, and k chosen by silhouette), the bootstrap
   stability check and bridge counting, timed and with peak traced memory. These sizes use random
   vectors drawn around 30 centres in MiniLM's 384 dimensions (embedding 100k real abstracts here
   would take the better part of an hour), which cost the same to cluster as real embeddings.

Run: .venv/bin/python bench/gaps.py [--sizes 2000 20000 100000] [--embed 256]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np


def embed_rates(n: int) -> dict[str, float]:
    from toolkit.gaps.embed import HFEncoder, WordsEncoder, embed_texts
    from toolkit.gaps.synthetic import generate

    rows = generate(seed=0, scale=0.3)[:n]
    texts = [f"{r['title']}. {r['abstract']}" for r in rows]
    keys = [str(i) for i in range(len(texts))]
    enc = HFEncoder("minilm", batch_size=32)
    enc.encode(texts[:4])  # load the model outside the timing
    rates = {}
    start = time.perf_counter()
    embed_texts(texts, keys, enc, None, description="minilm batched")
    rates["minilm, batches of 32"] = n / (time.perf_counter() - start)
    one = texts[: max(16, n // 4)]
    start = time.perf_counter()
    for t in one:
        enc.encode([t])
    rates["minilm, one at a time"] = len(one) / (time.perf_counter() - start)
    start = time.perf_counter()
    WordsEncoder().encode(texts)
    rates["words (model-free)"] = n / (time.perf_counter() - start)
    return rates


def vectors(n: int, dim: int = 384, centres: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 1.2 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(fn, *args, **kwargs):
    tracemalloc.start()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def scale_rows(n: int, k: int, auto_k: bool) -> list[tuple[str, float, float]]:
    from toolkit.gaps.bridges import count_bridges, margin_threshold
    from toolkit.gaps.cluster import fit_clusters, stability

    X = vectors(n)
    rows = []
    cl, s, m = timed(fit_clusters, X, k, 50, 0)
    rows.append((f"PCA 50 + k-means k={k}", s, m))
    if auto_k:
        chosen, s, m = timed(fit_clusters, X, 0, 50, 0)
        rows.append((f"PCA + k-means, k by silhouette ({chosen.k} of {min(chosen.silhouettes)}..{max(chosen.silhouettes)})", s, m))
    _, s, m = timed(stability, cl, 5, 0)
    rows.append(("bootstrap stability, 5 rounds", s, m))

    def bridges():
        sims = cl.similarities(cl.reduced)
        return count_bridges(sims, margin_threshold(sims, 0.1), np.bincount(cl.labels, minlength=cl.k))

    _, s, m = timed(bridges)
    rows.append(("bridge counting (all pairs)", s, m))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 100000])
    ap.add_argument("--embed", type=int, default=256, help="abstracts in the embedding-speed subset")
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--auto-k-up-to", type=int, default=20000, help="time the silhouette choice of k up to this size")
    args = ap.parse_args()
    print(f"embedding speed on {args.embed} synthetic abstracts (title + abstract, ~60 words):")
    for name, rate in embed_rates(args.embed).items():
        print(f"  {name:28s} {rate:8.1f} abstracts/s")
    print("\nclustering and bridges on random vectors around 30 centres (384 dims):")
    print(f"  {'size':>7s}  {'step':64s} {'seconds':>8s} {'peak MiB':>9s}")
    for n in args.sizes:
        for name, s, m in scale_rows(n, args.k, n <= args.auto_k_up_to):
            print(f"  {n:7d}  {name:64s} {s:8.2f} {m:9.1f}")


if __name__ == "__main__":
    main()
