"""Quality check: a 30-trial TPE sweep vs the seed study's 5x5 temperature x top_p grid.

Both run over the same 12 prompts with the same generation seed on the default model. Prints each
study's best mean BERTScore F1 and how many generations it ran; TPE should reach at least the
grid's best with fewer generations (median pruning stops hopeless trials after a prompt chunk).
Each study is stored in SQLite under runs/bench/, so re-running continues instead of starting over.

Run: .venv/bin/python bench/sweep_quality.py   (about 15-30 minutes on 2 cores)
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def generations(study) -> int:
    return sum(len(t.user_attrs.get("scores", [])) for t in study.trials)


def main() -> None:
    import optuna

    from toolkit.data import build, load_examples
    from toolkit.io import write_jsonl
    from toolkit.sweep import sweep

    data = Path("runs/bench/data")
    build([ROOT / "data" / "sample" / "abstracts.jsonl"], out=data, split="80,10,10", seed=0)
    examples = (load_examples(data / "validation.jsonl") + load_examples(data / "test.jsonl"))[:12]
    prompts = Path("runs/bench/quality-prompts.jsonl")
    write_jsonl(prompts, [e.to_row() for e in examples])
    results = {}
    for name in ("temperature-top-p-grid", "joint-tpe-2d"):
        out = Path("runs/bench") / name
        sweep(ROOT / "sweeps" / f"{name}.yaml", data=prompts, out=out, noise=False)
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{(out / 'study.db').resolve()}")
        results[name] = {"best": study.best_value, "params": study.best_params, "generations": generations(study),
                         "trials": len(study.trials)}
    grid, tpe = results["temperature-top-p-grid"], results["joint-tpe-2d"]
    print(json.dumps(results, indent=2))
    print(f"\ngrid 5x5: best F1 {grid['best']:.4f} {grid['params']} in {grid['generations']} generations")
    print(f"TPE x30 : best F1 {tpe['best']:.4f} {tpe['params']} in {tpe['generations']} generations")
    ok = tpe["best"] >= grid["best"] and tpe["generations"] < grid["generations"]
    print(f"TPE reaches the grid's best with fewer generations: {'yes' if ok else 'NO'} "
          f"({tpe['best'] - grid['best']:+.4f} F1, {tpe['generations'] / grid['generations']:.0%} of the generations)")


if __name__ == "__main__":
    main()
