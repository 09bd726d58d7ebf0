"""DPO cost of the reference model: log-probs precomputed once vs the reference run on every step.

    .venv/bin/python bench/dpo.py --pairs runs/dpo-m/prefs/train.jsonl [--model runs/dpo-m/sft] [--steps 8]

Both modes train the same fresh LoRA with TRL's DPOTrainer through `toolkit.train.dpo.run_preference`
(the toolkit's `dpo-cpu` settings, batch 2 x accumulation 2, fp32 on CPU) on the same pairs from the
same starting model (an SFT run, merged once into a shared folder, or the default model):

* cached: `precompute_ref_log_probs=True`: one reference pass over the pairs before training, then
  one model per step (the default of `toolkit train --method dpo`);
* per step: the reference (the same weights with the adapter disabled) runs forward on every step.

Each mode runs in its own subprocess, so its peak RSS is its own (`getrusage(RUSAGE_SELF)`).
Pairs per second = pairs trained on / time of the training loop; the precompute pass is reported
apart, and "end to end" adds it back. Nothing is asserted: a shared 2-core machine varies.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_mode(pairs: Path, model: str, steps: int, precompute: bool, workdir: Path) -> dict:
    """One training run in this process; returns its timings and peak RSS."""
    from toolkit.train.config import load_config
    from toolkit.train.dpo import run_preference

    cfg = load_config("dpo-cpu", model=model, train_data=str(pairs), validation_data="", out=str(workdir / "run"),
                      max_steps=steps, eval_every=0, save_every=0, precompute_ref=precompute)
    start = time.perf_counter()
    result = run_preference(cfg, show_progress=False)
    total = time.perf_counter() - start
    summary = json.loads((workdir / "run" / "summary.json").read_text())
    n_pairs = steps * cfg.batch_size * cfg.grad_accum
    return {"mode": "cached" if precompute else "per step", "steps": result.steps, "pairs": n_pairs,
            "train_seconds": summary["seconds"], "pairs_per_s": n_pairs / summary["seconds"],
            "setup_seconds": round(total - summary["seconds"], 1), "end_to_end_pairs_per_s": n_pairs / total,
            "peak_rss_mb": round(peak_rss_mb(), 1), "final_loss": result.losses[-1]}


def start_model(model: str, shared: Path) -> str:
    """An SFT run is merged once, so neither mode pays for it (or races on it)."""
    from toolkit.train.dpo import find_sft_adapter

    adapter = find_sft_adapter(model)
    if adapter is None:
        return model
    dest = shared / "start"
    if not (dest / "toolkit-merge.json").exists():
        from toolkit.train.merge import merge

        merge(adapter, dest)
    return str(dest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, required=True, help="preference pairs (toolkit data prefs output)")
    parser.add_argument("--model", default="smollm2", help="starting model: SFT run, adapter, merged model or smollm2")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dpo.json")
    parser.add_argument("--_child", choices=["cached", "per-step"], help=argparse.SUPPRESS)
    parser.add_argument("--_workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        row = run_mode(args.pairs, args.model, args.steps, args._child == "cached", args._workdir)
        print("RESULT " + json.dumps(row))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = start_model(args.model, Path(tmp))
        for mode in ("cached", "per-step"):
            work = Path(tmp) / mode
            work.mkdir()
            done = subprocess.run([sys.executable, __file__, "--pairs", str(args.pairs), "--model", model, "--steps", str(args.steps),
                                   "--_child", mode, "--_workdir", str(work)], capture_output=True, text=True, cwd=ROOT)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{mode} run failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(line[len("RESULT "):]))
    cached, per_step = rows
    report = {"model": args.model, "pairs_file": str(args.pairs), "steps": args.steps, "cpu_count": os.cpu_count(), "runs": rows,
              "speedup_training_loop": cached["pairs_per_s"] / per_step["pairs_per_s"],
              "speedup_end_to_end": cached["end_to_end_pairs_per_s"] / per_step["end_to_end_pairs_per_s"],
              "same_final_loss": abs(cached["final_loss"] - per_step["final_loss"]) < 1e-4}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'mode':<10} {'pairs/s (loop)':>15} {'pairs/s (end to end)':>21} {'setup s':>8} {'peak RSS MB':>12} {'final loss':>11}")
    for r in rows:
        print(f"{r['mode']:<10} {r['pairs_per_s']:>15.3f} {r['end_to_end_pairs_per_s']:>21.3f} {r['setup_seconds']:>8.1f} "
              f"{r['peak_rss_mb']:>12.0f} {r['final_loss']:>11.4f}")
    print(f"cached reference: x{report['speedup_training_loop']:.2f} pairs/s in the loop, x{report['speedup_end_to_end']:.2f} end to end; "
          f"same final loss: {report['same_final_loss']}  -> {args.out}")


if __name__ == "__main__":
    main()
