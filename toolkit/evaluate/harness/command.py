"""`toolkit eval`: lm-evaluation-harness tasks on GGUFs (in process), Modelfiles, HF directories or
a `toolkit serve` URL, on local task data, with paired comparisons between the models.

The harness does the work it is trusted for (task definitions, few-shot sampling, metrics and
their standard errors, the results JSON); this module picks the models and the data, keeps every
scored request in OUT/requests.sqlite (keyed by model identity and request, so a killed run
resumes where it stopped), and writes the reports.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from toolkit.errors import BackendError, ConfigError
from toolkit.evaluate.harness import tasks as taskmod
from toolkit.evaluate.harness.lm import RequestCache, cached_lm, gguf_lm_class
from toolkit.evaluate.harness.report import headline, paired, print_tables, render, task_items
from toolkit.evaluate.harness.tasks import Prebuilt, mmlu_summary
from toolkit.evaluate.machine import measured_line
from toolkit.io import write_json, write_jsonl, write_text
from toolkit.models import file_digest, is_hf_dir, resolve
from toolkit.runtime.llamacpp import machine_summary


def parse_models(specs: list[str]) -> list[tuple[str, str]]:
    """`LABEL=MODEL` or `MODEL` -> (label, model); labels unique (a bare model is labelled by its name)."""
    pairs = []
    for spec in specs:
        label, sep, model = spec.partition("=")
        if not sep or "/" in label or not label or label.startswith("http"):
            label, model = ("server" if spec.startswith("http") else Path(spec.rstrip("/")).stem or spec), spec
        pairs.append((label, model))
    labels = [label for label, _ in pairs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two models are labelled alike: {labels}", fix="label them: --model base=M1 tuned=M2")
    return pairs


def open_model(model: str, requests: Path, *, batch_size: int, n_batch: int, progress):
    """(harness LM answering through the request cache, identity, description) for a model spec: a
    server URL (`local-completions`), an HF directory (the harness's `hf`, fp32), or anything
    `toolkit.models.resolve` knows (a GGUF, a Modelfile with ADAPTER, an embedded name) in process."""
    if model.startswith(("http://", "https://")):
        from lm_eval.models.openai_completions import LocalCompletionsAPI

        base = model.rstrip("/").removesuffix("/v1/completions")
        url = base + "/v1/completions"
        lm = LocalCompletionsAPI(base_url=url, model=_served_name(base), tokenizer_backend="remote", tokenized_requests=True,
                                 num_concurrent=1, max_retries=1)
        identity = f"server:{url}"
        return cached_lm(lm, RequestCache(requests, identity), progress), identity, f"{url} (local-completions)"
    path = Path(model)
    if is_hf_dir(path):
        from lm_eval.models.huggingface import HFLM

        weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        identity = "hf:" + "+".join(file_digest(w) for w in weights)
        lm = HFLM(pretrained=str(path), dtype="float32", device="cpu", batch_size=batch_size)
        return cached_lm(lm, RequestCache(requests, identity), progress), identity, f"{path} (hf, fp32, batch {batch_size})"
    resolved = resolve(model, hf=False)
    gguf, lora = resolved.require_llamacpp()
    identity = resolved.weights_id()
    lm = gguf_lm_class()(str(gguf), lora=str(lora) if lora else None, n_batch=n_batch, cache=RequestCache(requests, identity))
    lm.progress = progress
    return lm, identity, f"{gguf.name}" + (f" + LoRA {lora.name}" if lora else "") + " (llama.cpp, in process)"


def _served_name(base: str) -> str:
    """The first model a server lists on /v1/models (`toolkit serve` serves one unless told more)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(base + "/v1/models", timeout=30) as reply:
            return json.loads(reply.read())["data"][0]["id"]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise BackendError(f"cannot list the models of {base}: {exc}", fix="start `toolkit serve` there, or check the URL") from None


class _Bar:
    """The progress callback the models call: (requests done, total when a new batch starts)."""

    def __init__(self, bar, label: str):
        self.bar, self.task = bar, bar.add_task(label, total=None, info="")

    def __call__(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.bar.update(self.task, total=total, completed=0)
        self.bar.advance(self.task, done)


def run_model(lm, selection, samples, seed: int) -> dict:
    """The harness's simple_evaluate on prebuilt tasks, with its per-item samples logged."""
    from lm_eval import simple_evaluate

    return simple_evaluate(model=lm, tasks=list(selection.tasks), task_manager=Prebuilt(selection.tasks), samples=samples,
                           log_samples=True, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                           fewshot_random_seed=seed, bootstrap_iters=1000)


def summarize(results: dict, selection, tasks: list[tuple[str, int]]) -> dict[str, dict]:
    """{requested task: metrics + item count}: the harness's rows, `mmlu` pooled over its subjects."""
    summary = {}
    for task, _ in tasks:
        if task == "mmlu":
            row = mmlu_summary(results, selection.mmlu_subjects)
        elif task in results["results"]:
            row = dict(results["results"][task], n=results["n-samples"][task]["effective"])
        else:
            row = None
        if row is not None:
            summary[task] = row
    return summary


def evaluate(tasks: list[str], model: list[str] = ("default",), data_dir: Path = Path("data/benchmarks"),
             out: Path = Path("runs/eval"), limit: int | None = None, num_fewshot: int | None = None, seed: int = 1234,
             batch_size: int = 8, n_batch: int = 512) -> int:
    """Score models on lm-evaluation-harness tasks (ARC, HellaSwag, MMLU, ...) offline, and compare them paired.

    TASKS are task names (arc_easy arc_challenge hellaswag piqa winogrande openbookqa mmlu
    truthfulqa_mc2 gsm8k) or presets: `study` (ARC-Challenge 25-shot, HellaSwag 10-shot, MMLU
    5-shot), `leaderboard` (the Open LLM Leaderboard v1's six) and `zeroshot` (seven tasks, 0-shot).
    The harness's own task definitions and metrics score them; a GGUF is scored in process by
    llama.cpp. Every model after the first is compared with the first on the same items (McNemar,
    paired bootstrap): give f16, Q8_0 and Q4_K_M GGUFs of one model for a quantization table.
    Scored requests are cached in OUT/requests.sqlite, so an interrupted run resumes. Writes
    OUT/report.md, OUT/summary.json and per model OUT/LABEL/results.json + samples.jsonl.

    Args:
        model: models as LABEL=MODEL or MODEL: a GGUF, a Modelfile (with ADAPTER), an embedded name,
            an HF directory (the harness's `hf` model, fp32) or a `toolkit serve` URL.
        data_dir: one folder per task (arc_easy/, hellaswag/, mmlu/, ...) holding a save_to_disk
            folder, Parquet/JSONL exports or the original release files (README: Benchmarks offline).
        out: where the results, reports and request cache go.
        limit: score a seeded random sample of N items per task (not the first N).
        num_fewshot: few-shot examples for every task (default: the preset's, else 0).
        seed: seeds the --limit sample, the few-shot sampling and the bootstrap.
        batch_size: batch size of an HF model.
        n_batch: most tokens per llama.cpp decode (longer contexts are prefilled in several).
    """
    from toolkit.console import progress

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    _quiet_harness()
    out = Path(out)
    chosen = taskmod.expand(list(tasks), num_fewshot)
    pairs = parse_models(list(model) or ["default"])
    with _harness_bars_off():
        selection = taskmod.build(chosen, Path(data_dir), out)
    samples = taskmod.sample(selection.tasks, limit, seed)
    runs: dict[str, dict] = {}
    for label, spec in pairs:
        with progress() as bar, _harness_bars_off():
            lm, identity, described = open_model(spec, out / "requests.sqlite", batch_size=batch_size, n_batch=n_batch,
                                                 progress=_Bar(bar, label))
            results = run_model(lm, selection, samples, seed)
        runs[label] = {"model": spec, "identity": identity, "described": described,
                       "summary": summarize(results, selection, chosen)}
        _write_run(out / label, results)
    return _finish(out, runs, chosen, selection, limit, seed, data_dir)


@contextlib.contextmanager
def _harness_bars_off() -> Iterator[None]:
    """Every tqdm bar off while the harness runs (ours shows the progress). TQDM_DISABLE cannot do
    it: tqdm reads it at import as a default, and the harness passes `disable=False` explicitly."""
    from tqdm import std

    saved = std.tqdm.__dict__["__init__"]
    shown = std.tqdm.__init__  # the plain function, with tqdm's own defaults applied

    def hidden(self, *args, **kwargs) -> None:
        shown(self, *args, **(kwargs | {"disable": True}))

    std.tqdm.__init__ = hidden
    try:
        yield
    finally:
        std.tqdm.__init__ = saved


def _quiet_harness() -> None:
    import logging

    for name in ("lm_eval", "lm-eval", "lm_eval.api.task", "lm_eval.evaluator"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _write_run(folder: Path, results: dict) -> None:
    """The harness's results JSON (as its CLI writes it, samples apart) and one line per scored item."""
    import json

    from lm_eval.utils import handle_non_serializable

    samples = results.pop("samples", {})
    write_text(folder / "results.json", json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False))
    rows = [json.loads(json.dumps({"task": task, **s}, default=handle_non_serializable)) for task, items in samples.items() for s in items]
    write_jsonl(folder / "samples.jsonl", [{k: r[k] for k in r if k not in ("arguments", "resps", "filtered_resps")} | {"resps": r.get("filtered_resps")}
                                           for r in rows])
    results["samples"] = samples


def _finish(out: Path, runs: dict, chosen, selection, limit, seed: int, data_dir) -> int:
    comparisons = []
    labels = list(runs)
    samples = {label: _load_samples(out / label) for label in labels}
    subjects = {"mmlu": selection.mmlu_subjects}
    for other in labels[1:]:
        for task, _ in chosen:
            row = runs[labels[0]]["summary"].get(task)
            if row is None:
                continue
            metric = headline(row)
            comparisons.append(paired(task, metric, (labels[0], task_items(samples[labels[0]], subjects, task, metric)),
                                      (other, task_items(samples[other], subjects, task, metric)), seed=seed))
    machine = machine_summary(probe=False)
    notes = [f"{label}: {run['described']}" for label, run in runs.items()]
    notes.append(f"data: {data_dir}" + (f"; MMLU subjects scored: {', '.join(selection.mmlu_subjects)}" if selection.mmlu_subjects else ""))
    notes.append(f"items: a seeded random sample of {limit} per task (seed {seed})" if limit else "items: every item of each task")
    notes.append(measured_line(machine))
    write_text(out / "report.md", render(runs, chosen, comparisons, notes))
    write_json(out / "summary.json", {"runs": runs, "tasks": chosen, "comparisons": [c.to_dict() for c in comparisons],
                                      "limit": limit, "seed": seed, "mmlu_subjects": selection.mmlu_subjects, "machine": machine})
    print_tables(runs, chosen, comparisons)
    return 0


def _load_samples(folder: Path) -> dict:
    """The per-item rows of one model's run, as the harness's `samples` (task -> rows)."""
    import json

    samples: dict[str, list] = {}
    for line in (folder / "samples.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        samples.setdefault(row["task"], []).append(row)
    return {"samples": samples}
