"""`toolkit demo`: the whole pipeline on the embedded default model and the bundled sample data.

build data -> base on the dev split -> train LoRA -> merge -> export GGUF (f16, Q4_K_M; the base
too, for a fair comparison) -> verify -> short sweep -> compare base vs tuned -> report; with
--dpo, then preference pairs -> a short DPO run from the SFT run -> merge, export -> compare
base, SFT and SFT+DPO.
Every stage reuses what an earlier run finished (training resumes, exports are reused, the sweep
study continues, generations are cached), so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from toolkit.data.build import BuildOptions, build
from toolkit.data.prefs import prefs
from toolkit.data.readers import load_examples
from toolkit.evaluate.compare import CompareSettings, compare
from toolkit.evaluate.scoring import BertScorer
from toolkit.evaluate.sweep.command import sweep
from toolkit.export.convert import export
from toolkit.export.verify import verify
from toolkit.generate import generate_rows
from toolkit.io import write_json, write_jsonl
from toolkit.params import DEFAULTS
from toolkit.runtime.backends import open_backend
from toolkit.train.command import train
from toolkit.train.config import TrainOverrides
from toolkit.train.merge import merge

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"
ROOT = Path(__file__).resolve().parent.parent
STAGES = 8
DPO_STAGES = 2
_shown = {"stages": STAGES}  # the stage count in the headings: 10 with --dpo


def _stage(n: int, title: str) -> None:
    from toolkit.console import err

    err.rule(f"[bold]{n}/{_shown['stages']} {title}")


def demo(out: Path = Path("runs/demo"), model: str = "smollm2", data: Path = SAMPLE / "abstracts.jsonl",
         steps: int = 150, quant: str = "Q4_K_M", sweep_file: str = "demo", max_tokens: int = 200,
         quick: bool = False, dpo: bool = False, dpo_steps: int = 24) -> int:
    """Run the whole pipeline on the embedded default and the bundled sample data.

    Builds the data, scores the base model on the dev split, trains a LoRA adapter, merges it,
    exports GGUF (f16 and a quantization) for the tuned model and the base, verifies the GGUFs,
    sweeps decoding parameters briefly, and compares base vs tuned (default and swept parameters)
    on the test split. Re-running continues where an interrupted run stopped.

    Args:
        out: where everything goes.
        model: the base model (embedded name, .gguf or HF directory).
        data: arXiv-style abstracts to build problem -> approach pairs from.
        steps: LoRA training steps (batch 2 x accumulation 2).
        quant: the llama.cpp quantization both models are compared in.
        sweep_file: the sweep to run (a file from sweeps/ or its name).
        max_tokens: most tokens per generation outside the sweep.
        quick: a smoke-test run: few steps, few prompts, tiny sweep (minutes, not a result).
        dpo: add the preference stage: pairs from the train split (chosen = reference, rejected = the
            base model's answer), a short DPO run from the SFT run, then compare base, SFT and SFT+DPO.
        dpo_steps: DPO steps with --dpo (2 pairs each, the dpo-cpu recipe).
    """
    from toolkit.console import err

    start = time.perf_counter()
    _shown["stages"] = STAGES + (DPO_STAGES if dpo else 0)
    out = Path(out)
    params = DEFAULTS.replace(max_tokens=max_tokens if not quick else 32)
    split = _build(out, data)
    _base_table(out, model, split / "validation.jsonl", params, limit=3 if quick else 0)
    adapter = _train(out, model, split, steps=4 if quick else steps)
    merged = _merge(out, adapter, model)
    tuned_gguf, base_gguf = _export(out, merged, model, quant)
    _verify(out, merged, split / "validation.jsonl", prompts=2 if quick else 6)
    best = _sweep(out, tuned_gguf, split / "validation.jsonl", sweep_file, quick)
    report = _compare(out, base_gguf, tuned_gguf, best, split / "test.jsonl", params, quick)
    if dpo:
        dpo_gguf = _dpo(out, model, split, quant, params, steps=2 if quick else dpo_steps, quick=quick)
        report = _compare_dpo(out, base_gguf, tuned_gguf, dpo_gguf, split / "test.jsonl", params, quick)
    err.rule("[bold green]done")
    err.print(f"pipeline finished in {(time.perf_counter() - start) / 60:.1f} min; report: {report}")
    err.print(f"rate the answers blind in your browser (base vs {'sft' if dpo else 'tuned'}): toolkit rate {report.parent}\n"
              f"then add your verdict to the report: toolkit compare --again --out {report.parent}")
    return 0


def _build(out: Path, data: Path) -> Path:
    _stage(1, "build the dataset")
    # a fifth of the pairs for the test split: ~26 prompts, enough for a person to rate 20 pairs and
    # for compare's paired intervals to narrow; 80/10/10 left 13
    build([Path(data)], out=out / "data", options=BuildOptions(split="70,10,20", seed=0))
    return out / "data"


def _base_table(out: Path, model: str, dev: Path, params, limit: int) -> None:
    examples = load_examples(dev)
    examples = examples[:limit] if limit else examples
    _stage(2, f"base model on {len(examples)} dev examples, scored with BERTScore")
    with open_backend("llamacpp", model, n_ctx=params.num_ctx) as backend:
        rows = list(generate_rows(backend, examples, params, description="base model"))
    scores = BertScorer().score([r["output"] for r in rows], [r["reference"] for r in rows])
    for row, p, r, f in zip(rows, scores.precision, scores.recall, scores.f1):
        row.update(bertscore_p=p, bertscore_r=r, bertscore_f1=f)
    summary = _summary(rows, params)
    write_jsonl(out / "base_generations.jsonl", rows)
    write_json(out / "base_scores.json", summary)
    _print_table(rows, summary)


def _train(out: Path, model: str, split: Path, steps: int) -> Path:
    _stage(3, f"train a LoRA adapter ({steps} steps)")
    run = out / "train"
    options = TrainOverrides(model=model, train_data=str(split / "train.jsonl"), validation_data=str(split / "validation.jsonl"),
                             out=str(run), max_steps=steps, eval_every=max(1, steps // 5), save_every=max(1, steps // 5))
    result = train("lora-chat", options, resume=(run / "config.yaml").exists())
    return result.adapter or run / "adapter"


def _merge(out: Path, adapter: Path, model: str, dest: Path | None = None) -> Path:
    if dest is None:
        _stage(4, "merge the adapter into a full-precision base")
    dest = dest or out / "merged"
    marker = dest / "toolkit-merge.json"
    if marker.exists() and marker.stat().st_mtime >= (adapter / "adapter_model.safetensors").stat().st_mtime:
        from toolkit.console import err

        err.print(f"reusing {dest} (merged after the adapter was written)")
        return dest
    merge(adapter, dest, base=model)
    return dest


def _export(out: Path, merged: Path, model: str, quant: str) -> tuple[Path, Path]:
    _stage(5, f"export GGUF: tuned f16 + {quant}, and the base in {quant} for a fair comparison")
    params = ROOT / "modelfiles" / "default.yaml"
    export(str(merged), out=out / "gguf", quant=[quant], name="tuned", parameters=params)
    export(model, out=out / "gguf", quant=[quant], name="base", parameters=params)
    return out / "gguf" / f"tuned-{quant}.gguf", out / "gguf" / f"base-{quant}.gguf"


def _verify(out: Path, merged: Path, dev: Path, prompts: int) -> None:
    _stage(6, "verify the tuned GGUFs against the merged HF model")
    files = sorted((out / "gguf").glob("tuned-*.gguf"))
    verify(str(merged), gguf=files, data=dev, prompts=prompts, tokens=32)


def _sweep(out: Path, gguf: Path, dev: Path, sweep_file: str, quick: bool) -> Path:
    _stage(7, f"sweep decoding parameters ({sweep_file})")
    dest = out / "sweep"
    sweep(sweep_file, model=str(gguf), data=dev, out=dest, modelfile=gguf.with_suffix(".Modelfile"),
          trials=3 if quick else 0, prompts=3 if quick else 0)
    import json

    from toolkit.console import err

    if json.loads((dest / "best.json").read_text())["chosen"] == "default":
        err.print("the sweep kept the default values, so the +swept systems below decode exactly as the default ones")
    return dest / "best.yaml"


def _compare(out: Path, base_gguf: Path, tuned_gguf: Path, best: Path, test: Path, params, quick: bool) -> Path:
    _stage(8, "compare base vs tuned (default and swept parameters) on the test split")
    # tuned right after base: `toolkit rate` shows the first two systems unless told otherwise
    systems = [f"tuned={tuned_gguf}", f"base+swept={base_gguf}@{best}", f"tuned+swept={tuned_gguf}@{best}"]
    compare(systems, CompareSettings(data=test, prompts=3 if quick else 0), out=out / "compare", base=str(base_gguf), params=params)
    return out / "compare" / "report.html"


def _dpo(out: Path, model: str, split: Path, quant: str, params, steps: int, quick: bool) -> Path:
    """Pairs from the train and dev splits (rejected = the base model's own answer), a short DPO run
    from the SFT run, merged and exported like the SFT model."""
    _stage(STAGES + 1, f"preference pairs from the base model's answers, then DPO from the SFT run ({steps} steps)")
    pairs = {name: out / "prefs" / f"{name}.jsonl" for name in ("train", "validation")}
    for name, dest in pairs.items():
        # one epoch's worth of training prompts: generating (and scoring) more would only cost time
        limit = 8 if quick else (steps * 2 if name == "train" else 0)
        prefs(split / f"{name}.jsonl", out=dest, model=model, limit=limit, params=params.replace(max_tokens=min(params.max_tokens, 96)))
    run = out / "dpo"
    options = TrainOverrides(model=str(out / "train"), train_data=str(pairs["train"]), validation_data=str(pairs["validation"]),
                             out=str(run), max_steps=steps, eval_every=max(1, steps // 3), save_every=max(1, steps // 3))
    result = train("dpo-cpu", options, resume=(run / "config.yaml").exists())
    merged = _merge(out, result.adapter or run / "adapter", str(run / "start"), dest=out / "merged-dpo")
    export(str(merged), out=out / "gguf", quant=[quant], name="dpo", parameters=ROOT / "modelfiles" / "default.yaml")
    return out / "gguf" / f"dpo-{quant}.gguf"


def _compare_dpo(out: Path, base_gguf: Path, tuned_gguf: Path, dpo_gguf: Path, test: Path, params, quick: bool) -> Path:
    _stage(STAGES + 2, "compare base, SFT and SFT+DPO on the test split")
    compare([f"sft={tuned_gguf}", f"sft+dpo={dpo_gguf}"], CompareSettings(data=test, prompts=3 if quick else 0), out=out / "compare-dpo",
            base=str(base_gguf), params=params)
    return out / "compare-dpo" / "report.html"


def _summary(rows: list[dict], params) -> dict:
    f1 = [r["bertscore_f1"] for r in rows]
    tokens = sum(r["completion_tokens"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    return {
        "examples": len(rows), "params": params.to_dict(), "bertscore_f1_mean": statistics.fmean(f1),
        "bertscore_f1_median": statistics.median(f1), "bertscore_f1_stdev": statistics.stdev(f1) if len(f1) > 1 else 0.0,
        "bertscore_p_mean": statistics.fmean(r["bertscore_p"] for r in rows),
        "bertscore_r_mean": statistics.fmean(r["bertscore_r"] for r in rows),
        "tokens_per_second": tokens / seconds if seconds else 0.0,
        "stopped_by_length": sum(r["finish_reason"] == "length" for r in rows),
    }


def _print_table(rows: list[dict], summary: dict) -> None:
    from rich.table import Table

    from toolkit.console import out

    table = Table(title="Base model on the dev split: BERTScore (MiniLM-L6, layer 6)")
    for col, justify in (("id", "left"), ("problem", "left"), ("P", "right"), ("R", "right"), ("F1", "right"), ("tokens", "right"), ("stop", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "problem")  # type: ignore[arg-type]
    for r in rows:
        problem = r["prompt"] if len(r["prompt"]) <= 40 else r["prompt"][:37] + "..."
        table.add_row(r["id"], problem, f"{r['bertscore_p']:.3f}", f"{r['bertscore_r']:.3f}", f"{r['bertscore_f1']:.3f}",
                      str(r["completion_tokens"]), r["finish_reason"])
    table.add_section()
    table.add_row("mean", f"{summary['examples']} examples, {summary['tokens_per_second']:.0f} tok/s",
                  f"{summary['bertscore_p_mean']:.3f}", f"{summary['bertscore_r_mean']:.3f}",
                  f"{summary['bertscore_f1_mean']:.3f}", "", f"{summary['stopped_by_length']} cut")
    out.print(table)
