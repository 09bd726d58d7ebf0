"""`toolkit data build` at the source study's corpus size: rows/s and peak RSS at 20k and 200k abstracts.

    .venv/bin/python bench/data_build.py [--sizes 20000,200000] [--seed 0] [--keep DIR]

The corpus is synthetic and written by this script (a seeded generator, no downloaded data): arXiv
metadata JSON Lines whose abstracts follow the shape of real ones: 150 to 250 words on average
(a clipped normal around 190, sd 40), 4 to 10 sentences, a first sentence of 12 to 35 words, real
English scientific vocabulary (so the tokenizer sees ~1.3 tokens a word, as on real text), and the
things a splitter must survive (`e.g.`, `et al.`, `Fig. 2`, decimals, inline `$...$` math, journal
citations such as `Phys. Rev. B 45, 1234 (1992)`). About 1% of records repeat an earlier abstract
(dedup has work to do) and 1% are single sentences (a skip reason).

Each size is built by `toolkit data build` with the real default tokenizer (smollm2, the one
`build` uses), in its own subprocess, so the peak RSS (`getrusage(RUSAGE_SELF)`) is that build's
alone. The time is the whole command as a user runs it, tokenizer loading included (wall clock,
and the CPU seconds the process used, which a busy machine inflates less). Memory should stay
flat in the corpus size (the build streams); nothing is asserted, since timings on a shared
machine vary: the load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_WORDS = """
model models method methods approach network networks neural deep learning training data dataset datasets
task tasks performance accuracy results result benchmark benchmarks baseline baselines state art propose
proposed present show demonstrate study analysis framework algorithm algorithms optimization problem
problems function functions loss gradient gradients parameter parameters feature features representation
representations language vision image images text graph graphs node nodes edge edges structure structures
attention transformer transformers layer layers architecture architectures efficient efficiency scalable
large small robust robustness generalization prediction predictions inference sampling distribution
distributions probability probabilistic bayesian estimation estimator estimators theoretical empirical
experiments experimental evaluation evaluate improve improves improvement significant significantly
existing novel new simple effective effectively computational cost complexity memory time linear nonlinear
convex stochastic regularization sparse sparsity kernel kernels matrix matrices tensor vector vectors space
spaces dimension dimensional high low rank embedding embeddings encoder decoder generative adversarial
reinforcement policy reward agent agents environment control dynamics system systems signal noise quantum
field theory energy spectrum phase transition temperature magnetic electron electrons lattice spin states
boundary conditions equation equations solution solutions numerical simulation simulations physical
observed observations measurements measurement galaxy galaxies stellar mass masses cosmological dark matter
gravitational waves black hole holes particle particles scattering cross section decay decays symmetry
invariant manifold manifolds group groups algebra algebras operator operators finite infinite bound bounds
upper lower theorem prove proof conjecture result classification category categories module modules
topological geometric geometry metric metrics curvature surface surfaces points point set sets random
process processes markov chain chains convergence rate rates asymptotic optimal minimax regret online
offline adaptive adaptation transfer domain domains shift supervised unsupervised self semi contrastive
pretraining pretrained fine tuning tuned downstream zero shot few instruction instructions human feedback
alignment safety fairness privacy federated clients communication distributed parallel hardware gpu
throughput latency speed speedup compression quantization pruning distillation knowledge student teacher
retrieval search query queries document documents ranking recommendation users user items interaction
speech audio video temporal spatial segmentation detection recognition classification regression
clustering anomaly causal causality intervention counterfactual explanation interpretability uncertainty
calibration confidence robotics robot navigation planning manipulation trajectory trajectories motion
protein molecular molecules drug chemical biological cells cell gene expression medical clinical patients
diagnosis health climate weather forecasting financial market markets economic social media network
across between within under over through using based via towards without while whereas however
furthermore moreover therefore thus which that these those this our we their its both each several many
various different multiple single two three first second final main key important novel standard
""".split()
_OPENERS = ["We", "In this paper, we", "This work", "Our approach", "The proposed method", "Recent work",
            "In this work, we", "Existing methods", "Here we", "Experiments on", "Finally, we", "Moreover, the"]
_EXTRAS = ["e.g. transformers", "i.e. the tail", "et al. proposed", "as shown in Fig. 2", "see Eq. (3)",
           "with 0.82 F1", "by 3.5%", "using v2.1 of the code", "$O(n \\log n)$", "$\\ell_2$", "vs. baselines",
           "(Phys. Rev. B 45, 1234 (1992))", "(J. Opt. Soc. Am. A 4, 433 (1987))", "in Sec. 4"]
_CATEGORIES = ["cs.LG", "cs.CL", "cs.CV", "cs.AI", "stat.ML", "math.OC", "hep-th", "quant-ph", "astro-ph.GA",
               "cond-mat.str-el", "physics.optics", "q-bio.NC", "math.AG", "econ.EM"]


def _sentence(rng: random.Random, words: int, first: bool) -> str:
    body = [rng.choice(_WORDS) for _ in range(max(words - 3, 2))]
    if rng.random() < 0.35:
        body.insert(rng.randrange(len(body)), rng.choice(_EXTRAS))
    opener = rng.choice(_OPENERS) if not first or rng.random() < 0.5 else rng.choice(_WORDS).capitalize()
    return f"{opener} {' '.join(body)}."


def _abstract(rng: random.Random) -> str:
    total = int(min(max(rng.gauss(190, 40), 80), 400))
    first = rng.randint(12, 35)
    sentences = [_sentence(rng, first, True)]
    rest = total - first
    n_rest = min(max(rng.randint(3, 9), 1), max(rest // 12, 1))
    for i in range(n_rest):
        sentences.append(_sentence(rng, rest // n_rest + (1 if i < rest % n_rest else 0), False))
    return " ".join(sentences)


def write_corpus(path: Path, n: int, seed: int = 0) -> Path:
    """`n` arXiv-style records in JSON Lines, streamed to `path` (the same for the same seed)."""
    rng = random.Random(seed)
    recent: list[str] = []
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            roll = rng.random()
            if roll < 0.01 and recent:
                text = rng.choice(recent)  # a duplicate of a recent record
            elif roll < 0.02:
                text = _sentence(rng, rng.randint(30, 50), True)  # one sentence: skipped
            else:
                text = _abstract(rng)
            recent = (recent + [text])[-50:]
            year, month = 7 + i * 18 // n, 1 + i % 12
            row = {"id": f"{year:02d}{month:02d}.{i % 100000:05d}", "title": f"Synthetic paper {i}", "abstract": text,
                   "categories": " ".join(rng.sample(_CATEGORIES, rng.randint(1, 3))),
                   "update_date": f"20{year:02d}-{month:02d}-{1 + i % 28:02d}"}
            f.write(json.dumps(row) + "\n")
    return path


def _child(corpus: str, out: str) -> None:
    """Runs in the subprocess: the build as the CLI runs it, then the figures as one JSON line."""
    sys.path.insert(0, str(ROOT))
    from toolkit.cli import main

    start = time.perf_counter()
    code = main(["data", "build", corpus, "--out", out])
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats = json.loads((Path(out) / "stats.json").read_text())
    print(json.dumps({"code": code, "seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                      "peak_rss_mb": usage.ru_maxrss / 1024, "records": stats["total"]["records"], "kept": stats["total"]["kept"]}))


def run(sizes: list[int], seed: int, workdir: Path) -> list[dict]:
    results = []
    for n in sizes:
        corpus = write_corpus(workdir / f"corpus-{n}.jsonl", n, seed)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "120"}
        load = os.getloadavg()[0]
        proc = subprocess.run([sys.executable, __file__, "--child", str(corpus), str(workdir / f"out-{n}")],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"build of {n} failed:\n{proc.stderr}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r.update(n=n, rows_per_s=n / r["seconds"], corpus_mb=corpus.stat().st_size / 2**20, load=load)
        results.append(r)
        print(f"{n:>8,} abstracts ({r['corpus_mb']:.0f} MB): {r['seconds']:6.1f} s wall ({r['cpu_seconds']:.1f} s CPU)  "
              f"{r['rows_per_s']:8,.0f} rows/s  peak RSS {r['peak_rss_mb']:6.0f} MB  kept {r['kept']:,}  "
              f"(load average {load:.1f} on {os.cpu_count()} cores)", flush=True)
    return results


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20000,200000", help="corpus sizes, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, help="write the corpora and builds here instead of a temporary folder")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        run(sizes, args.seed, args.keep)
        return
    with tempfile.TemporaryDirectory(prefix="data-build-bench-") as tmp:
        run(sizes, args.seed, Path(tmp))


if __name__ == "__main__":
    main()
