"""`toolkit demo`: the whole pipeline on the embedded default model and the bundled sample data."""

from __future__ import annotations

import statistics
from pathlib import Path

from .params import DEFAULTS

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"


def demo(out: Path = Path("runs/demo"), model: str = "smollm2", data: Path = SAMPLE / "abstracts.jsonl",
         max_tokens: int = 200, limit: int = 0) -> int:
    """Run the pipeline on the embedded default: build the data, generate on the dev split, score.

    Args:
        out: where the demo writes its data, generations and scores.
        model: the base model (embedded name, .gguf file or HF directory).
        data: arXiv-style abstracts to build the problem -> approach pairs from.
        max_tokens: most tokens per generation.
        limit: use only the first N dev examples (0 = all).
    """
    from .backends import open_backend
    from .console import err
    from .data import build, load_examples
    from .generate import generate_rows
    from .io import write_json, write_jsonl
    from .scoring import BertScorer

    err.rule("[bold]1/3 build the dataset")
    build([Path(data)], out=out / "data", seed=0)
    dev = load_examples(out / "data" / "validation.jsonl")
    dev = dev[:limit] if limit else dev

    err.rule(f"[bold]2/3 generate with the base model on {len(dev)} dev examples")
    params = DEFAULTS.replace(max_tokens=max_tokens)
    with open_backend("llamacpp", model, n_ctx=params.num_ctx) as backend:
        rows = list(generate_rows(backend, dev, params, description="base model"))
    write_jsonl(out / "base_generations.jsonl", rows)

    err.rule("[bold]3/3 score with BERTScore (all-MiniLM-L6-v2)")
    scores = BertScorer().score([r["output"] for r in rows], [r["reference"] for r in rows])
    for row, p, r, f in zip(rows, scores.precision, scores.recall, scores.f1):
        row.update(bertscore_p=p, bertscore_r=r, bertscore_f1=f)
    summary = _summary(rows, params)
    write_jsonl(out / "base_generations.jsonl", rows)
    write_json(out / "base_scores.json", summary)
    _print_table(rows, summary)
    err.print(f"results in {out}/")
    return 0


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

    from .console import out

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
