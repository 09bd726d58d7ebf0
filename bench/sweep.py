"""Sweep speed: the seed study's naive harness vs ours, the same trials over the same prompts, one run.

Naive (as the seed ran it): per trial, generate one prompt at a time and call `bert_score.score`
afresh (which loads the encoder and embeds the references again). Ours (`toolkit.evaluate.sweep.study.run_trials`):
the model and scorer loaded once, reference embeddings cached, trials streamed through llama.cpp's
parallel slots (a prompt held by one slot is copied, not prefilled again), and median pruning over
prompt chunks.
Prints the speed-up (target >= 4x) and the objective values of both for the trials both completed
(they should agree within sampling noise).

Run: make bench   (or .venv/bin/python bench/sweep.py [--trials 8] [--prompts 12] [--max-tokens 96] [--parallel 16])
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def trial_params(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"temperature": round(rng.uniform(0.2, 1.3), 2), "top_p": round(rng.uniform(0.6, 1.0), 2)} for _ in range(n)]


def naive(gguf: Path, trials: list[dict], prompts: list[str], refs: list[str], base) -> tuple[list[float], float]:
    import bert_score

    from toolkit.models import scorer_path
    from toolkit.runtime.backends import LlamaCppBackend

    scorer_dir, layer = scorer_path()
    start = time.perf_counter()
    values = []
    with LlamaCppBackend(gguf, n_ctx=1024) as backend:
        for t in trials:
            params = base.replace(**t)
            outs = [backend.chat(p, params).text for p in prompts]
            _, _, f1 = bert_score.score(outs, refs, model_type=str(scorer_dir), num_layers=layer, lang="en")
            values.append(float(f1.mean()))
    return values, time.perf_counter() - start


def ours(gguf: Path, trials: list[dict], prompts: list[str], refs: list[str], base, prune: bool,
         parallel: int | None = None) -> tuple[list[float | None], float, int]:
    import optuna

    from toolkit.evaluate.metrics import MetricSuite
    from toolkit.evaluate.sweep.config import SweepConfig
    from toolkit.evaluate.sweep.study import Evaluator, make_pruner, run_trials
    from toolkit.runtime.backends import LlamaCppBackend
    from toolkit.space import Dimension

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"temperature": Dimension("temperature", 0.1, 1.5, decimals=6), "top_p": Dimension("top_p", 0.5, 1.0, decimals=6)}
    cfg = SweepConfig(name="bench", space=space, mode="search",
                      pruner="median" if prune else "none", chunks=3, startup_trials=3, trials=len(trials),
                      prompts=len(prompts), seed=base.seed, fixed={"max_tokens": base.max_tokens, "num_ctx": base.num_ctx})
    start = time.perf_counter()
    with LlamaCppBackend(gguf, n_ctx=1024, parallel=parallel) as backend:
        ev = Evaluator(backend, prompts, refs, {"bertscore_f1": 1.0}, MetricSuite())
        study = optuna.create_study(direction="maximize", pruner=make_pruner(cfg))
        for t in trials:  # the same trials as the naive harness, in the same order
            study.enqueue_trial(t)
        run_trials(study, cfg, ev)
    values = [t.value if t.state == optuna.trial.TrialState.COMPLETE else None for t in study.trials]
    return values, time.perf_counter() - start, ev.generations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--model", default="smollm2", help="embedded name or .gguf")
    ap.add_argument("--parallel", type=int, default=None, help="llama.cpp slots for ours (default 16)")
    args = ap.parse_args()

    from toolkit.data.build import BuildOptions, build
    from toolkit.data.readers import load_examples
    from toolkit.models import resolve
    from toolkit.params import DEFAULTS

    data = Path("runs/bench/data")
    build([ROOT / "data" / "sample" / "abstracts.jsonl"], out=data, options=BuildOptions(split="80,10,10", seed=0))
    examples = (load_examples(data / "validation.jsonl") + load_examples(data / "test.jsonl"))[: args.prompts]
    prompts, refs = [e.prompt for e in examples], [e.response for e in examples]
    gguf = resolve(args.model, hf=False).require_gguf()
    base = DEFAULTS.replace(max_tokens=args.max_tokens, seed=1234, num_ctx=1024)
    trials = trial_params(args.trials)
    print(f"{len(trials)} trials x {len(prompts)} prompts x <= {args.max_tokens} tokens on {gguf.name}")
    # Both harnesses import torch, transformers, bert_score and the scorer's model code once per
    # process: do it before the clock starts, so whichever runs first is not charged for it.
    import bert_score  # noqa: F401
    import transformers.models.bert.modeling_bert  # noqa: F401  (MiniLM is a BERT)
    ours_vals, ours_s, gens = ours(gguf, trials, prompts, refs, base, prune=True, parallel=args.parallel)
    exact_vals, exact_s, _ = ours(gguf, trials, prompts, refs, base, prune=False, parallel=args.parallel)
    naive_vals, naive_s = naive(gguf, trials, prompts, refs, base)
    print(f"\n{'harness':<34}{'seconds':>9}{'speed-up':>10}{'generations':>13}")
    print(f"{'naive (seed study)':<34}{naive_s:>9.1f}{1.0:>10.2f}{len(trials) * len(prompts):>13}")
    print(f"{'ours, no pruning':<34}{exact_s:>9.1f}{naive_s / exact_s:>10.2f}{len(trials) * len(prompts):>13}")
    print(f"{'ours, median pruning':<34}{ours_s:>9.1f}{naive_s / ours_s:>10.2f}{gens:>13}")
    print(f"\n{'trial':<7}{'temperature':>12}{'top_p':>7}{'naive F1':>10}{'ours F1':>10}{'diff':>9}")
    diffs = []
    for i, (t, a, b) in enumerate(zip(trials, naive_vals, exact_vals)):
        diffs.append(b - a)
        print(f"{i:<7}{t['temperature']:>12}{t['top_p']:>7}{a:>10.4f}{b:>10.4f}{b - a:>+9.4f}")
    print(f"\nmean |diff| between harnesses: {statistics.fmean(abs(d) for d in diffs):.4f} "
          f"(batched decoding changes floating-point order, so samples can differ; the same parameters score alike)")
    speedup = naive_s / ours_s
    print(f"speed-up with pruning: {speedup:.2f}x (target >= 4x): {'OK' if speedup >= 4 else 'BELOW TARGET'}")


if __name__ == "__main__":
    main()
