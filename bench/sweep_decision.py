"""Race vs exhaustive: does a racing sweep reach the exhaustive run's decision with fewer generations?

For each case the exhaustive run scores the default and every cell on every prompt, tests each cell
against the default (paired over prompts: interval above 0 and Wilcoxon p < alpha/m, Holm's bar for
the first rejection) and confirms the best significant one on the re-run seeds (the default and
the best are always re-run, as the search's noise check does): its decision is *found* (naming the
cell) or *nothing to gain*. The race (`toolkit sweep`, mode: race) must reach the same decision;
the target is at most a quarter of the exhaustive run's generations.

Cases: `grid` is the seed study's 5x5 temperature x top_p grid (sweeps/temperature-top-p-grid.yaml);
`planted` gives the default a max_tokens far too short (8) in a temperature x max_tokens {8, 160}
grid, so a max_tokens=160 cell must be *found*; `temperature`, `top-p`, `max-tokens`,
`repeat-penalty` are the seed study's one-factor grids. Prompts: the demo split's held-out prompts
(validation + test of data/sample/abstracts.jsonl split 80/10/10, seed 0), on the default model.

Run: .venv/bin/python bench/sweep_decision.py [--cases grid,planted] [--prompts N]
(both default cases: about an hour on 2 busy cores; results under runs/bench/decision/)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("runs/bench/decision")
PLANTED = {"name": "planted", "metric": "bertscore_f1", "sampler": {"type": "grid", "seed": 0}, "seed": 1234,
           "default": {"max_tokens": 8}, "noise": {"rerun_seeds": [1, 2, 3]},
           "space": {"temperature": {"values": [0.2, 0.5, 0.8, 1.1, 1.4]}, "max_tokens": {"values": [8, 160]}}}


def case(name: str) -> dict:
    import yaml

    if name == "planted":
        return dict(PLANTED)
    shipped = {"grid": "temperature-top-p-grid"}.get(name, name)
    return yaml.safe_load((ROOT / "sweeps" / f"{shipped}.yaml").read_text())


def exhaustive(raw: dict, data: Path) -> dict:
    """Every cell and the default on every prompt, then the re-runs; the decision by the race's rule."""
    from toolkit.evaluate.metrics import MetricSuite
    from toolkit.evaluate.stats import paired
    from toolkit.evaluate.sweep.command import _examples_with_references
    from toolkit.evaluate.sweep.config import parse_sweep
    from toolkit.evaluate.sweep.race import grid_cells
    from toolkit.evaluate.sweep.study import Evaluator
    from toolkit.runtime.backends import open_backend

    cfg = parse_sweep(raw)
    examples = _examples_with_references(data, cfg.prompts)
    cells = grid_cells(cfg)
    every = list(range(len(examples)))
    start = time.perf_counter()
    with open_backend("llamacpp", "smollm2", n_ctx=cfg.base_params().num_ctx) as engine:
        ev = Evaluator(engine, [e.prompt for e in examples], [e.response for e in examples], cfg.metric, MetricSuite(cfg.scorer))
        params = [cfg.default_params()] + [cfg.base_params().replace(**c) for c in cells]
        scores = ev.evaluate_many([(p, every) for p in params])
        tests = [paired(scores[0], s, resamples=max(cfg.bootstrap, 2000)) for s in scores[1:]]
        alpha = cfg.race.alpha / len(cells)
        significant = [k for k, t in enumerate(tests) if t.diff.mean > 0 and t.diff.low > 0 and t.p_value < alpha]
        best = min(significant, key=lambda k: tests[k].p_value) if significant else max(range(len(cells)), key=lambda k: tests[k].diff.mean)
        runs = ev.evaluate_many([(p.replace(seed=s), every) for p in (params[0], params[best + 1]) for s in cfg.rerun_seeds])
        n = len(cfg.rerun_seeds)
        mean = [[sum(col) / n for col in zip(*runs[j * n:(j + 1) * n])] for j in range(2)]
        confirm = paired(mean[0], mean[1], resamples=max(cfg.bootstrap, 2000))
    found = bool(significant) and confirm.significant and confirm.diff.mean > 0
    return {"decision": "found" if found else "nothing to gain", "params": cells[best] if found else None,
            "significant": [cells[k] for k in significant], "generations": ev.generations,
            "seconds": round(time.perf_counter() - start, 1)}


def race(raw: dict, data: Path, name: str) -> dict:
    import shutil

    import yaml

    from toolkit.evaluate.sweep.command import sweep

    out = OUT / name / "race"
    shutil.rmtree(out, ignore_errors=True)  # a fresh race: its cost is what is measured
    path = OUT / name / "race.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# bench/sweep_decision.py: the {name} case as a race\n" + yaml.safe_dump(raw | {"mode": "race"}, sort_keys=False))
    start = time.perf_counter()
    sweep(path, data=data, out=out)
    decision = json.loads((out / "best.json").read_text())["race"]
    return decision | {"seconds": round(time.perf_counter() - start, 1)}


def prompts_file(limit: int) -> tuple[Path, int]:
    from toolkit.data.build import BuildOptions, build
    from toolkit.data.readers import load_examples
    from toolkit.io import write_jsonl

    build([ROOT / "data" / "sample" / "abstracts.jsonl"], out=OUT / "data", options=BuildOptions(split="80,10,10", seed=0))
    examples = load_examples(OUT / "data" / "validation.jsonl") + load_examples(OUT / "data" / "test.jsonl")
    examples = examples[:limit] if limit else examples
    path = OUT / "prompts.jsonl"
    write_jsonl(path, [e.to_row() for e in examples])
    return path, len(examples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="grid,planted", help="comma list: grid, planted, temperature, top-p, max-tokens, repeat-penalty")
    ap.add_argument("--prompts", type=int, default=0, help="use the first N held-out prompts (0 = all)")
    args = ap.parse_args()
    from toolkit.evaluate.machine import measured_line, measured_on

    data, n = prompts_file(args.prompts)
    print(measured_line(measured_on("llamacpp")))
    ok = True
    for name in args.cases.split(","):
        raw = case(name) | {"prompts": n}
        r = race(raw, data, name)
        e = exhaustive(raw, data)
        same = r["decision"] == e["decision"] and (e["decision"] != "found" or r["params"] in e["significant"])
        share = r["generations"] / e["generations"]
        ok &= same and share <= 0.25
        print(f"{name}: race decided *{r['decision']}*{' ' + json.dumps(r.get('params')) if r.get('params') else ''} after "
              f"{r['generations']} generations ({share:.0%} of an exhaustive run), {r['seconds']} s; exhaustive: "
              f"*{e['decision']}*{' ' + json.dumps(e['params']) if e['params'] else ''}, {e['generations']} generations, "
              f"{e['seconds']} s; same decision: {'yes' if same else 'NO'}")
        (OUT / name / "result.json").write_text(json.dumps({"race": r, "exhaustive": e}, indent=1, default=str))
    print(f"every case: the exhaustive decision with at most a quarter of its generations: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
