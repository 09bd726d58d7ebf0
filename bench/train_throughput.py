"""Training throughput: a plain HF Trainer + PEFT baseline vs `toolkit train`, same steps, same data.

    .venv/bin/python bench/train_throughput.py [--steps 10] [--data data/sample/abstracts.jsonl]

Both train the same LoRA (r=8, alpha=16, q/k/v/o/gate, lr 1e-4, batch 2 x accumulation 2) with the
same loss masking (tokens from `toolkit.train.tokens.tokenize_example`) on the bundled sample data:

* baseline: `transformers.Trainer`, every batch padded to max_length (512), as a first script would;
* ours: `toolkit.train.loop.run_training`: seeded length-grouped batches, dynamic padding, and output
  logits only where a label follows.

Each runs in its own subprocess, so its peak RSS is its own (`getrusage(RUSAGE_SELF)` at the end).
The number that matters is useful tokens per second: non-pad tokens trained on, divided by the time
of the training loop (model loading excluded for both). Ratios are against the baseline measured in
the same run; nothing is asserted (timings on a shared 2-core machine vary).
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
LORA = dict(r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_baseline(train_path: Path, steps: int, max_length: int, workdir: Path) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from toolkit.data.readers import load_examples
    from toolkit.models import resolve
    from toolkit.train.tokens import IGNORE, tokenize_example

    hf_dir = resolve("smollm2").require_hf()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    rows = []
    for ex in load_examples(train_path):
        ids, labels = tokenize_example(tok, ex, "chat", max_length)
        rows.append({"input_ids": ids, "labels": labels})

    def pad_to_max(batch: list[dict]) -> dict:
        n = len(batch)
        ids = torch.full((n, max_length), tok.pad_token_id, dtype=torch.long)
        labels = torch.full((n, max_length), IGNORE, dtype=torch.long)
        mask = torch.zeros((n, max_length), dtype=torch.long)
        for i, r in enumerate(batch):
            k = len(r["input_ids"])
            ids[i, :k], labels[i, :k], mask[i, :k] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules=LORA["target_modules"], task_type="CAUSAL_LM"))
    counted = {"useful": 0, "padded": 0}

    def count(_module, _args, kwargs):  # what the model really trains on (the loader may read ahead)
        counted["useful"] += int(kwargs["attention_mask"].sum())
        counted["padded"] += kwargs["input_ids"].numel()

    model.register_forward_pre_hook(count, with_kwargs=True)
    args = TrainingArguments(
        output_dir=str(workdir / "baseline"), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=steps,
        learning_rate=1e-4, warmup_steps=0.03, lr_scheduler_type="linear", logging_steps=1, save_strategy="no",
        report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=pad_to_max)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"method": "baseline: HF Trainer, pad to max_length", "steps": steps, "seconds": seconds,
            "useful_tokens": counted["useful"], "padded_tokens": counted["padded"], "final_loss": losses[-1] if losses else None}


def run_ours(train_path: Path, steps: int, max_length: int, workdir: Path) -> dict:
    import json as _json

    from toolkit.train.config import TrainConfig
    from toolkit.train.loop import run_training

    cfg = TrainConfig(train_data=str(train_path), validation_data="", out=str(workdir / "ours"), max_steps=steps,
                      max_length=max_length, eval_every=0, save_every=0, lr=1e-4, batch_size=2, grad_accum=2, **LORA)
    result = run_training(cfg, show_progress=False)
    rows = [_json.loads(line) for line in (workdir / "ours" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    padded = sum(r["padded_tokens_per_s"] * r["seconds"] for r in rows)
    return {"method": "ours: toolkit train (length-grouped, dynamic padding)", "steps": steps, "seconds": result.seconds,
            "useful_tokens": sum(r["tokens"] for r in rows), "padded_tokens": round(padded), "final_loss": result.final_loss}


def child(which: str, train_path: Path, steps: int, max_length: int, workdir: Path) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    result = (run_baseline if which == "baseline" else run_ours)(train_path, steps, max_length, workdir)
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


def spawn(which: str, train_path: Path, steps: int, max_length: int, workdir: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", which, "--train", str(train_path), "--steps", str(steps),
           "--max-length", str(max_length), "--workdir", str(workdir)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"running {which} ({steps} steps) ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{which} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps for each method (default 10)")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "sample" / "abstracts.jsonl", help="raw abstracts to build from")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--child", choices=["baseline", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--train", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.train, args.steps, args.max_length, args.workdir)
        return

    from toolkit.data.build import BuildOptions, build

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        workdir = Path(tmp)
        build([args.data], out=workdir / "data", options=BuildOptions(tokenizer="smollm2"))
        train_path = workdir / "data" / "train.jsonl"
        results = [spawn(which, train_path, args.steps, args.max_length, workdir) for which in ("baseline", "ours")]
    base = results[0]
    print(f"\ntraining throughput, {args.steps} steps of batch 2 x accumulation 2, max_length {args.max_length}, "
          f"{os.cpu_count()} CPUs, torch threads {_threads()}")
    header = f"{'method':<55} {'useful tok':>10} {'padding':>8} {'seconds':>8} {'useful tok/s':>13} {'vs base':>8} {'peak RSS':>10}"
    print(header)
    print("-" * len(header))
    for r in results:
        tps = r["useful_tokens"] / r["seconds"]
        pad = 1 - r["useful_tokens"] / r["padded_tokens"] if r["padded_tokens"] else 0.0
        ratio = tps / (base["useful_tokens"] / base["seconds"])
        print(f"{r['method']:<55} {r['useful_tokens']:>10} {pad:>7.0%} {r['seconds']:>8.1f} {tps:>13.1f} {ratio:>7.2f}x "
              f"{r['peak_rss_mb']:>7.0f} MB")
    ours = results[1]
    ratio = (ours["useful_tokens"] / ours["seconds"]) / (base["useful_tokens"] / base["seconds"])
    print(f"\nuseful tokens/s, ours / baseline: {ratio:.2f}x (target >= 2x); "
          f"peak RSS ours / baseline: {ours['peak_rss_mb'] / base['peak_rss_mb']:.2f}x")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
