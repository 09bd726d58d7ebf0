"""Quality check: a 30-trial TPE sweep vs the seed study's 5x5 temperature x top_p grid.

Both run over the same 12 prompts with the same generation seed on the default model. The grid runs
first; the TPE sweep then runs with `against` the grid's results, so its report.md carries the
comparison (best search value and generations of each). TPE should reach at least the grid's best
with fewer generations (median pruning stops hopeless trials after a prompt chunk). Studies live in
SQLite under runs/bench/, so re-running continues instead of starting over.

Run: .venv/bin/python bench/sweep_quality.py   (about 15-25 minutes on 2 cores)
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("runs/bench")


def as_search(name: str) -> Path:
    """A shipped sweep with `mode: search` (the search, then re-runs: what this bench measures;
    shipped sweeps race by default, see bench/sweep_decision.py)."""
    import yaml

    raw = yaml.safe_load((ROOT / "sweeps" / f"{name}.yaml").read_text()) | {"mode": "search"}
    path = OUT / f"{name}.search.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {name} as the search (mode: search), for bench/sweep_quality.py\n" + yaml.safe_dump(raw, sort_keys=False))
    return path


def main() -> None:
    from toolkit.data.build import BuildOptions, build
    from toolkit.data.readers import load_examples
    from toolkit.evaluate.sweep.command import sweep
    from toolkit.io import write_jsonl

    build([ROOT / "data" / "sample" / "abstracts.jsonl"], out=OUT / "data", options=BuildOptions(split="80,10,10", seed=0))
    examples = (load_examples(OUT / "data" / "validation.jsonl") + load_examples(OUT / "data" / "test.jsonl"))[:12]
    prompts = OUT / "quality-prompts.jsonl"
    write_jsonl(prompts, [e.to_row() for e in examples])
    grid_dir, tpe_dir = OUT / "temperature-top-p-grid", OUT / "joint-tpe-2d"
    sweep(as_search("temperature-top-p-grid"), data=prompts, out=grid_dir)
    sweep(as_search("joint-tpe-2d"), data=prompts, out=tpe_dir, against=grid_dir)
    grid, tpe = (json.loads((d / "best.json").read_text()) for d in (grid_dir, tpe_dir))
    for label, b in (("grid 5x5", grid), ("TPE x30 ", tpe)):
        print(f"{label}: best search F1 {b['search_best_value']:.4f} in {b['search_trials']} trials, "
              f"{b['search_generations']} generations; re-run verdict: {b['verdict']}")
    ok = tpe["search_best_value"] >= grid["search_best_value"] and tpe["search_generations"] < grid["search_generations"]
    print(f"TPE reaches the grid's best with fewer generations: {'yes' if ok else 'NO'} "
          f"({tpe['search_best_value'] - grid['search_best_value']:+.4f} F1, "
          f"{tpe['search_generations'] / grid['search_generations']:.0%} of the generations); report: {tpe_dir / 'report.md'}")


if __name__ == "__main__":
    main()
