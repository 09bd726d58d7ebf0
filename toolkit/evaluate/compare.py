"""`toolkit compare`: did fine-tuning (and the swept parameters) help, by how much, and is it real?

Each system is a model plus decoding parameters. All systems answer the same prompts with the same
seeds through the same backend; the zero-shot base model is always included unless dropped. Every
example is scored with BLEU, ROUGE-L and BERTScore P/R/F1; each difference against the first system
gets a paired bootstrap interval, a signed-rank test and a win rate. Generations are cached by
(model digest, parameters, prompt), so adding a system later only generates for that system.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.errors import ConfigError, DataError
from toolkit.params import DEFAULTS, DecodingParams
from toolkit.runtime.cache import GenerationCache, model_id

METRIC_LABELS = {"bertscore_f1": "BERTScore F1", "bertscore_p": "BERTScore P", "bertscore_r": "BERTScore R",
                 "rouge_l": "ROUGE-L", "bleu": "BLEU"}


@dataclass
class System:
    """A model with its decoding parameters, under a label."""

    label: str
    model: str
    params: DecodingParams = DEFAULTS
    params_source: str = "defaults"
    outputs: list[dict] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)


def parse_system(spec: str, base_params: DecodingParams) -> System:
    """`LABEL=MODEL[@PARAMS.yaml]`: e.g. `tuned=runs/demo/gguf/tuned-Q4_K_M.gguf@runs/sweeps/demo/best.yaml`."""
    from toolkit.export.convert import load_parameters

    label, sep, rest = spec.partition("=")
    if not sep or not label or not rest:
        raise ConfigError(f"system {spec!r} is not LABEL=MODEL[@PARAMS.yaml]", fix="e.g. --system tuned=model.gguf@best.yaml")
    model, _, params_file = rest.partition("@")
    if params_file:
        # the file's values on top of this run's options; every system keeps the same seed and stops
        params = load_parameters(Path(params_file), base=base_params).replace(seed=base_params.seed, stop=base_params.stop)
        return System(label, model, params, params_file)
    return System(label, model, base_params)


def stored_run(out: Path, given: list[str]) -> tuple[list[System], dict]:
    """The systems and options of the run that wrote OUT/results.json, for `compare --again`."""
    import json

    if given:
        raise ConfigError("--again runs the systems stored in the folder again and takes no systems",
                          fix="drop the systems, or drop --again")
    path = Path(out) / "results.json"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: there is no compare run to repeat",
                          fix="run compare with its systems and this --out first") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} ({exc.__class__.__name__})", fix="run compare with its systems again") from None
    settings = result.get("settings")
    if not isinstance(settings, dict):
        raise ConfigError(f"{path} was written before compare stored its options",
                          fix="run compare with its systems once more; --again works from then on")
    systems = [System(s["label"], s["model"], DecodingParams.from_dict(s["params"], where=f"{path}: {s['label']}"),
                      s["params_source"]) for s in result["systems"]]
    return systems, settings


def check_fairness(systems: list[System], backend: str, allow_mixed: bool) -> None:
    """Base and tuned must run through the same backend and the same quantization type."""
    if backend != "llamacpp" or allow_mixed:
        return
    from toolkit.export.verify import gguf_type
    from toolkit.models import resolve

    types = {s.label: gguf_type(resolve(s.model, hf=False).require_llamacpp()[0]) for s in systems}
    if len(set(types.values())) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in types.items())
        raise ConfigError(f"systems use different quantization types ({listing})",
                          fix="export every model with the same --quant (or pass --allow-mixed-quant)")


def generate_system(system: System, examples: list, backend: str, url: str, cache: GenerationCache,
                    parallel: int | None = None) -> int:
    """Fill `system.outputs`, generating only what the cache lacks; returns how many were generated.
    Each generation is cached as it finishes, so an interrupted run loses none."""
    from collections import deque

    from toolkit.console import progress
    from toolkit.runtime.backends import open_backend

    mid = model_id(backend, system.model, url)
    keys = [GenerationCache.key(mid, system.params, ex.prompt) for ex in examples]
    cached = [cache.get(k) for k in keys]
    todo = deque((i, [{"role": "user", "content": examples[i].prompt}], system.params) for i, c in enumerate(cached) if c is None)
    generated = len(todo)
    if todo:
        with open_backend(backend, system.model, n_ctx=system.params.num_ctx, url=url or None, parallel=parallel) as engine, \
                progress() as bar:
            task = bar.add_task(f"generate {system.label}", total=len(todo), info="")
            engine.reserve([conv for _, conv, _ in todo], system.params.max_tokens)  # KV room sized to these prompts
            for i, gen in engine.generate_stream(lambda: todo.popleft() if todo else None):
                cached[i] = gen.to_dict()
                cache.put(keys[i], cached[i])
                bar.advance(task)
    system.outputs = cached
    return generated


def score_systems(systems: list[System], examples: list, scorer: str, scorer_layer: int | None) -> None:
    from toolkit.evaluate.metrics import METRICS, MetricSuite, ScorerConfig

    suite = MetricSuite(ScorerConfig(scorer, scorer_layer))
    refs = [ex.response for ex in examples]
    for s in systems:
        s.scores = suite.score([o["text"] for o in s.outputs], refs, METRICS)


def summarise(systems: list[System], examples: list, seed: int) -> dict:
    """Every number of the report: per-system means with intervals, paired differences vs the first."""
    from toolkit.evaluate.metrics import METRICS
    from toolkit.evaluate.stats import bootstrap_mean, paired

    ref = systems[0]
    result = {"examples": len(examples), "reference_system": ref.label, "systems": []}
    for s in systems:
        tokens = sum(o["completion_tokens"] for o in s.outputs)
        seconds = sum(o["seconds"] for o in s.outputs)
        entry = {"label": s.label, "model": s.model, "params": s.params.to_dict(), "params_source": s.params_source,
                 "metrics": {m: bootstrap_mean(s.scores[m], seed=seed).to_dict() for m in METRICS},
                 "mean_output_tokens": statistics.fmean(o["completion_tokens"] for o in s.outputs),
                 "stopped_by_length": sum(o["finish_reason"] == "length" for o in s.outputs),
                 "tokens_per_second": tokens / seconds if seconds else 0.0}
        if s is not ref:
            entry["vs_reference"] = {m: paired(ref.scores[m], s.scores[m], seed=seed).to_dict() for m in METRICS}
        result["systems"].append(entry)
    result["per_example"] = [
        {"id": ex.id, "prompt": ex.prompt, "reference": ex.response,
         "outputs": {s.label: {"text": s.outputs[i]["text"], "finish_reason": s.outputs[i]["finish_reason"],
                               "tokens": s.outputs[i]["completion_tokens"],
                               **{m: s.scores[m][i] for m in METRICS}} for s in systems}}
        for i, ex in enumerate(examples)]
    return result


def make_plots(systems: list[System], folder: Path) -> dict[str, Path]:
    """The seed study's per-example BERTScore F1 histogram per system, and box plots per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolkit.io import save_figure

    folder.mkdir(parents=True, exist_ok=True)
    scores = [s.scores["bertscore_f1"] for s in systems]
    lo, hi = min(map(min, scores)), max(map(max, scores))
    bins = [lo + (hi - lo) * i / 15 for i in range(16)] if hi > lo else 15
    # one panel per system on shared axes: overlaid histograms of 4 systems are unreadable
    fig, axes = plt.subplots(len(systems), 1, figsize=(8, 1.2 + 1.3 * len(systems)), sharex=True, sharey=True, squeeze=False)
    for i, (ax, s, values) in enumerate(zip(axes[:, 0], systems, scores)):
        mean = statistics.fmean(values)
        ax.hist(values, bins=bins, color=f"C{i}", alpha=0.85)
        ax.axvline(mean, color="black", linestyle="--", linewidth=1)
        ax.set_title(f"{s.label}: mean {mean:.3f}", fontsize=9, loc="left")
        ax.set_ylabel("examples")
    axes[-1, 0].set_xlabel("BERTScore F1 per example (dashed: mean)")
    fig.suptitle("Per-example BERTScore F1 by system")
    made = {"histogram": save_figure(fig, folder / "bertscore_f1_hist.png")}
    metrics = ["bertscore_f1", "rouge_l", "bleu"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 4.2))
    for ax, m in zip(axes, metrics):
        ax.boxplot([s.scores[m] for s in systems], tick_labels=[s.label for s in systems], showmeans=True)
        ax.set_title(METRIC_LABELS[m])
        ax.tick_params(axis="x", rotation=20)
    made["boxplots"] = save_figure(fig, folder / "boxplots.png")
    return made


def _fmt(ci: dict) -> str:
    return f"{ci['mean']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


def _diff(c: dict) -> str:
    d = c["diff"]
    mark = " ✓" if c["significant"] else ""
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] p={c['p_value']:.2g} win {c['win_rate']:.0%}{mark}"


def headline(result: dict) -> str:
    """One honest sentence about the main metric against the first system."""
    ref = result["reference_system"]
    parts = []
    for s in result["systems"][1:]:
        c = s["vs_reference"]["bertscore_f1"]
        d = c["diff"]
        verdict = ("better than" if d["mean"] > 0 else "worse than") if c["significant"] else "not distinguishable from"
        parts.append(f"{s['label']} is {verdict} {ref} on BERTScore F1 ({d['mean']:+.3f}, 95% CI [{d['low']:+.3f}, {d['high']:+.3f}], "
                     f"Wilcoxon p={c['p_value']:.2g}, n={c['n']})")
    return "; ".join(parts) + "." if parts else "Only one system was compared."


def render_markdown(result: dict, plots: dict[str, str], examples_shown: int = 5) -> str:
    from toolkit.evaluate.machine import measured_line
    from toolkit.evaluate.metrics import METRICS

    lines = ["# Base vs tuned: comparison report", "", f"**{headline(result)}**", "",
             f"{result['examples']} test prompts, the same seeds for every system; differences are against "
             f"`{result['reference_system']}` (paired bootstrap 95% CI, Wilcoxon signed-rank p, win rate; ✓ = beyond noise).", "",
             *([measured_line(result["machine"]), ""] if "machine" in result else []),
             "| system | model | params | " + " | ".join(METRIC_LABELS[m] for m in METRICS) + " | tokens | cut by length | tok/s |",
             "|---|---|---|" + "---|" * (len(METRICS) + 3)]
    for s in result["systems"]:
        lines.append(f"| {s['label']} | `{Path(s['model']).name}` | {s['params_source']} | "
                     + " | ".join(_fmt(s["metrics"][m]) for m in METRICS)
                     + f" | {s['mean_output_tokens']:.0f} | {s['stopped_by_length']} | {s['tokens_per_second']:.0f} |")
    lines += ["", "## Differences against " + result["reference_system"], "",
              "| system | " + " | ".join(METRIC_LABELS[m] for m in METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for s in result["systems"][1:]:
        lines.append(f"| {s['label']} | " + " | ".join(_diff(s["vs_reference"][m]) for m in METRICS) + " |")
    lines.append("")
    lines += _extra_markdown(result)
    for name, rel in plots.items():
        lines += [f"![{name}]({rel})", ""]
    lines += ["## Example generations", ""]
    for ex in result["per_example"][:examples_shown]:
        lines += [f"### {ex['id']}", "", f"**Prompt:** {ex['prompt']}", "", f"**Reference:** {ex['reference']}", ""]
        for label, o in ex["outputs"].items():
            lines += [f"**{label}** (BERTScore F1 {o['bertscore_f1']:.3f}, {o['tokens']} tokens, {o['finish_reason']}): {o['text'].strip()}", ""]
    return "\n".join(lines)


def _extra_markdown(result: dict) -> list[str]:
    """The human ratings (`toolkit rate`) and the pairwise judge (`--judge`), when there are any."""
    lines = []
    if result.get("human"):
        from toolkit.evaluate.human import render_markdown as human_markdown

        lines += human_markdown(result["human"])
    if result.get("judge"):
        from toolkit.evaluate.judge_report import render_markdown as judge_markdown

        lines += judge_markdown(result["judge"])
    return lines


def _extra_html(result: dict) -> str:
    parts = ""
    if result.get("human"):
        from toolkit.evaluate.human import render_html as human_html

        parts += human_html(result["human"])
    if result.get("judge"):
        from toolkit.evaluate.judge_report import render_html as judge_html

        parts += judge_html(result["judge"])
    return parts


def render_html(result: dict, plots: dict[str, Path], examples_shown: int = 8) -> str:
    """A self-contained page: tables, the plots embedded as data URIs, side-by-side generations."""
    import base64
    import html

    from toolkit.evaluate.machine import measured_line
    from toolkit.evaluate.metrics import METRICS

    esc = html.escape
    head = "".join(f"<th>{esc(METRIC_LABELS[m])}</th>" for m in METRICS)
    rows = "".join(
        f"<tr><td>{esc(s['label'])}</td><td><code>{esc(Path(s['model']).name)}</code></td><td>{esc(s['params_source'])}</td>"
        + "".join(f"<td>{esc(_fmt(s['metrics'][m]))}</td>" for m in METRICS)
        + f"<td>{s['mean_output_tokens']:.0f}</td><td>{s['stopped_by_length']}</td><td>{s['tokens_per_second']:.0f}</td></tr>"
        for s in result["systems"])
    diffs = "".join(f"<tr><td>{esc(s['label'])}</td>" + "".join(f"<td>{esc(_diff(s['vs_reference'][m]))}</td>" for m in METRICS) + "</tr>"
                    for s in result["systems"][1:])
    images = "".join(f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'
                     f"<figcaption>{esc(name)}</figcaption></figure>" for name, path in plots.items())
    labels = [s["label"] for s in result["systems"]]
    machine = f"<p>{esc(measured_line(result['machine']))}</p>" if "machine" in result else ""
    examples = "".join(
        f"<section class=ex><h3>{esc(ex['id'])}</h3><p><b>Prompt:</b> {esc(ex['prompt'])}</p><div class=grid>"
        f"<div><h4>reference</h4><p>{esc(ex['reference'])}</p></div>"
        + "".join(f"<div><h4>{esc(l)} <small>F1 {ex['outputs'][l]['bertscore_f1']:.3f}</small></h4><p>{esc(ex['outputs'][l]['text'].strip())}</p></div>" for l in labels)
        + "</div></section>" for ex in result["per_example"][:examples_shown])
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px}"
             "th{background:#f3f3f3}img{max-width:100%}figure{margin:1em 0}.grid{display:grid;"
             f"grid-template-columns:repeat({len(labels) + 1},1fr);gap:8px}}.grid div{{background:#fafafa;padding:6px;font-size:13px}}"
             ".headline{font-size:1.1em;background:#eef6ee;padding:.6em;border-left:4px solid #4a4}"
             ".warn{background:#fbeaea;padding:.6em;border-left:4px solid #c44}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>Base vs tuned</title><style>{style}</style></head><body>"
            f"<h1>Base vs tuned: comparison report</h1><p class=headline>{esc(headline(result))}</p>"
            f"<p>{result['examples']} test prompts; differences against <b>{esc(result['reference_system'])}</b> "
            "(paired bootstrap 95% CI, Wilcoxon p, win rate; ✓ = beyond noise).</p>"
            f"{machine}"
            f"<table><tr><th>system</th><th>model</th><th>params</th>{head}<th>tokens</th><th>cut by length</th><th>tok/s</th></tr>{rows}</table>"
            f"<h2>Differences</h2><table><tr><th>system</th>{head}</tr>{diffs}</table>{_extra_html(result)}{images}"
            f"<h2>Example generations</h2>{examples}</body></html>")


def print_table(result: dict) -> None:
    from rich.table import Table

    from toolkit.console import out

    table = Table(title=f"compare on {result['examples']} prompts (vs {result['reference_system']})")
    for col in ("system", "BERTScore F1", "ROUGE-L", "BLEU", "Δ F1 vs ref", "tokens"):
        table.add_column(col, justify="left" if col == "system" else "right")
    for s in result["systems"]:
        delta = _diff(s["vs_reference"]["bertscore_f1"]) if "vs_reference" in s else "-"
        table.add_row(s["label"], _fmt(s["metrics"]["bertscore_f1"]), _fmt(s["metrics"]["rouge_l"]),
                      _fmt(s["metrics"]["bleu"]), delta, f"{s['mean_output_tokens']:.0f}")
    out.print(table)
    out.print(f"[bold]{headline(result)}[/]", soft_wrap=True)
    for h in result.get("human", []):
        from toolkit.evaluate.human import describe

        lines = describe(h)
        out.print(lines[1], soft_wrap=True)
        if h["stale"]:  # then describe's last line says how many
            out.print(f"[bold yellow]{lines[-1]}[/] Ratings count only against the outputs they were made on: "
                      "run the systems with the options of the rated run (`toolkit compare --again --out DIR`).", soft_wrap=True)
    if result.get("judge"):
        from toolkit.evaluate.judge_report import calibration_line, warning

        j = result["judge"]
        for s in j["systems"]:
            out.print(f"judge {j['model']}: {s['label']} vs {s['vs']}: {s['wins']} wins / {s['ties']} ties / {s['losses']} losses, "
                      f"order consistency {s['order_consistency']:.0%}", soft_wrap=True)
        out.print(calibration_line(j), soft_wrap=True)
        if warning(j):
            out.print(f"[bold red]{warning(j)}[/]", soft_wrap=True)


def compare(system: list[str] = (), data: Path = Path("runs/demo/data/test.jsonl"), out: Path = Path("runs/compare"),
            base: str = "smollm2", no_base: bool = False, backend: str = "llamacpp", url: str = "", prompts: int = 0,
            scorer: str = "minilm", scorer_layer: int = 0, allow_mixed_quant: bool = False,
            screenshot: bool = False, parallel: int = 0, judge: str = "", judge_backend: str = "llamacpp", judge_url: str = "",
            judge_prompt: Path | None = None, judge_max_tokens: int = 16, again: bool = False,
            params: DecodingParams = DEFAULTS) -> int:
    """Compare systems (model + decoding parameters) on the same test prompts: metrics, significance, report.

    The zero-shot base model is always the first system (the reference for differences) unless
    --no-base. Generations are cached in OUT/generations.sqlite, so re-running with one more system
    only generates for that one. Writes report.md, report.html (self-contained), results.json and plots/.
    Blind human ratings made with `toolkit rate OUT` are added to the report when the folder has
    them; --judge adds a pairwise model judge, calibrated first (see toolkit/evaluate/judge_prompt.txt).

    Args:
        system: systems as LABEL=MODEL[@PARAMS.yaml], e.g. tuned=runs/demo/gguf/tuned-Q4_K_M.gguf@runs/sweeps/demo/best.yaml
        data: the test split with references.
        out: where the report goes.
        base: the base model included as `base` (use the same quantization as the tuned model).
        no_base: leave the zero-shot base out.
        backend: llamacpp, ollama or openai (all systems use the same one).
        url: server URL for the ollama/openai backends.
        prompts: use the first N prompts (0 = all).
        scorer: BERTScore encoder: minilm or a local HF encoder directory.
        scorer_layer: BERTScore layer (0 = the encoder's default).
        allow_mixed_quant: allow systems whose GGUFs have different quantization types.
        screenshot: open report.html in headless Chromium, check every plot renders, save report.png.
        parallel: generations at once (0 = the backend's default: 16 llama.cpp slots, or one request
            at a time to a server; set it to the server's own parallel setting).
        judge: a model that judges each system against the first, in both orders (a model name, a
            GGUF, an Ollama model or a model at --judge-url); empty = no judge.
        judge_backend: llamacpp, ollama or openai for the judge.
        judge_url: server URL for an ollama/openai judge.
        judge_prompt: the judge's prompt template (default: the shipped toolkit/evaluate/judge_prompt.txt).
        judge_max_tokens: most tokens of a judge's reply (the verdict comes first).
        again: run the systems, test data, options and judge stored in OUT/results.json again (after
            `toolkit rate OUT`, to add the ratings: `toolkit compare --again --out OUT`); --judge
            options given here replace the stored judge, and --screenshot applies.
    """
    from toolkit.console import err
    from toolkit.data.readers import load_examples
    from toolkit.evaluate.machine import measured_on
    from toolkit.io import write_json, write_text
    from toolkit.runtime.generation import check_parallel

    if again:
        systems, settings = stored_run(Path(out), list(system))
        data, backend, url, prompts = Path(settings["data"]), settings["backend"], settings["url"], settings["prompts"]
        scorer, scorer_layer, parallel = settings["scorer"], settings["scorer_layer"], settings["parallel"]
        allow_mixed_quant, params = settings["allow_mixed_quant"], params.replace(seed=systems[0].params.seed)
        if not judge and settings.get("judge"):  # the stored judge too: its replies are cached
            j = settings["judge"]
            judge, judge_backend, judge_url, judge_max_tokens = j["model"], j["backend"], j["url"], j["max_tokens"]
            judge_prompt = Path(j["prompt"]) if j["prompt"] else None
    else:
        systems = ([] if no_base else [System("base", base, params)]) + [parse_system(s, params) for s in system]
    if parallel:
        check_parallel(parallel)
    if not systems:
        raise ConfigError("no systems to compare", fix="pass --system LABEL=MODEL or drop --no-base")
    labels = [s.label for s in systems]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"system labels repeat: {labels}", fix="give each system its own LABEL")
    examples = load_examples(data)
    examples = examples[:prompts] if prompts else examples
    if not examples or any(not ex.response.strip() for ex in examples):
        raise DataError("every test example needs a reference response", path=data, fix="use a built test split")
    check_fairness(systems, backend, allow_mixed_quant)
    judge_spec = None
    if judge:  # a bad template or option fails here, before anything is generated
        from toolkit.evaluate.judge import Judge

        judge_spec = Judge.open(judge, judge_backend, judge_url, judge_prompt, judge_max_tokens, params.seed)
    out = Path(out)
    cache = GenerationCache(out / "generations.sqlite")
    start = time.perf_counter()
    try:
        generated = {s.label: generate_system(s, examples, backend, url, cache, parallel or None) for s in systems}
    finally:
        cache.close()
    score_systems(systems, examples, scorer, scorer_layer or None)
    result = summarise(systems, examples, seed=params.seed)
    from toolkit.evaluate.human import human_summary

    result["human"] = human_summary(out, result, seed=params.seed)
    if judge_spec is not None:
        from toolkit.evaluate.judge import run_judge

        result["judge"] = run_judge(judge_spec, systems, examples, out, result["human"], params.seed)
    result["generated"] = generated
    # what `compare --again` needs besides the systems (stored above with their parameters)
    result["settings"] = {"data": str(data), "backend": backend, "url": url, "prompts": prompts, "scorer": scorer,
                          "scorer_layer": scorer_layer, "parallel": parallel, "allow_mixed_quant": allow_mixed_quant,
                          "judge": {"model": judge, "backend": judge_backend, "url": judge_url, "max_tokens": judge_max_tokens,
                                    "prompt": str(judge_prompt) if judge_prompt else None} if judge else None}
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["machine"] = measured_on(backend)
    plots = make_plots(systems, out / "plots")
    write_json(out / "results.json", result)
    write_text(out / "report.md", render_markdown(result, {k: f"plots/{v.name}" for k, v in plots.items()}))
    write_text(out / "report.html", render_html(result, plots))
    print_table(result)
    if screenshot:
        from toolkit.evaluate.browser import BrowserError, render

        shown = render(out / "report.html", out / "report.png")
        if shown.decoded != shown.images:
            raise BrowserError(f"{out / 'report.html'}: the browser decoded {shown.decoded} of {shown.images} plots",
                              fix="open the report in a browser; re-run compare to rewrite it")
        err.print(f"rendered in headless Chromium: {shown.decoded} of {shown.images} plots shown; screenshot: {out / 'report.png'}")
    judged = f"; {result['judge']['generated']} new judge replies" if judge_spec is not None else ""
    err.print(f"generated {sum(generated.values())} new outputs ({', '.join(f'{k}: {v}' for k, v in generated.items())}){judged}; "
              f"report: {out / 'report.html'}")
    return 0
