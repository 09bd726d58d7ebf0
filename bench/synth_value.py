"""Is synthetic data worth it? Two LoRA adapters with the same steps and seed, one on the real train
split only and one on real + synthetic pairs, compared on the real test split with compare's paired
intervals (and the human win rate, once someone rates them with `toolkit rate`).

1. build the bundled sample abstracts into 70/10/20 splits (as `toolkit demo` does);
2. `data synth --imitate train.jsonl --against the splits` with the generator given (default: the
   embedded 135M model), so no synthetic question is a near-duplicate of a real one;
3. train both adapters (lora-chat, same --steps, seed 0), merge, export Q4_K_M;
4. `compare real=... real+synth=...` on the test split (no base system: the reference is `real`).

Whichever way it goes, the result is printed as measured with the generator named; README.md
("Synthetic data") carries it: `--count 20 --steps 60` took 15 minutes on an idle 2-core Xeon. Run
(every stage resumes):

    .venv/bin/python bench/synth_value.py [--model smollm2 | --backend ollama --model qwen2.5:7b-instruct] [--count 100]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def adapter(out: Path, name: str, train_file: Path, split: Path, steps: int) -> Path:
    from toolkit.export.convert import export
    from toolkit.train.command import train
    from toolkit.train.config import TrainOverrides
    from toolkit.train.merge import merge

    run = out / f"train-{name}"
    options = TrainOverrides(model="smollm2", train_data=str(train_file), validation_data=str(split / "validation.jsonl"), out=str(run),
                             max_steps=steps, eval_every=max(1, steps // 5), save_every=max(1, steps // 5), seed=0)
    result = train("lora-chat", options, resume=(run / "config.yaml").exists())
    merged = out / f"merged-{name}"
    if not (merged / "toolkit-merge.json").exists():
        merge(result.adapter or run / "adapter", merged, base="smollm2")
    gguf = out / "gguf" / f"{name}-Q4_K_M.gguf"
    if not gguf.exists():
        export(str(merged), out=out / "gguf", quant=["Q4_K_M"], name=name, parameters=ROOT / "modelfiles" / "default.yaml")
    return gguf


def main() -> None:
    from toolkit.data.build import BuildOptions, build
    from toolkit.data.readers import load_examples
    from toolkit.evaluate.compare import CompareSettings, compare
    from toolkit.io import write_jsonl
    from toolkit.params import DEFAULTS
    from toolkit.synth.command import SynthOptions, synth

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench/synth-value"))
    ap.add_argument("--backend", default="llamacpp")
    ap.add_argument("--model", default="smollm2", help="the generator")
    ap.add_argument("--url", default="")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()
    out = args.out
    split = out / "data"
    if not (split / "train.jsonl").exists():
        build([ROOT / "data" / "sample" / "abstracts.jsonl"], out=split, options=BuildOptions(split="70,10,20", seed=0))
    made = synth(out / "synth", SynthOptions(imitate=split / "train.jsonl", count=args.count, against=split),
                 model=args.model, backend=args.backend, url=args.url, params=DEFAULTS.replace(max_tokens=256))
    real = [e.to_row() for e in load_examples(split / "train.jsonl")]
    synthetic = [{"id": r["id"], "prompt": r["question"], "response": r["answer"], "kind": "qa", "source": "synthetic"}
                 for r in map(json.loads, (out / "synth" / "synthetic.jsonl").read_text().splitlines())]
    write_jsonl(out / "real+synth.jsonl", real + synthetic)
    ggufs = {name: adapter(out, name, file, split, args.steps) for name, file in
             (("real", split / "train.jsonl"), ("real+synth", out / "real+synth.jsonl"))}
    compare([f"{name}={g}" for name, g in ggufs.items()], CompareSettings(data=split / "test.jsonl"), out=out / "compare", no_base=True,
            params=DEFAULTS.replace(max_tokens=200))
    result = json.loads((out / "compare" / "results.json").read_text())
    print(json.dumps({"generator": made["generator"], "synthetic_kept": made["written"], "real_train": len(real),
                      "steps": args.steps, "test_prompts": result.get("examples"),
                      "real+synth_vs_real": result["systems"][1].get("vs_reference")}, indent=2))


if __name__ == "__main__":
    main()
