"""compare's result, typed, and everything that shows it: the terminal table, report.md,
report.html and the plots.

`summarise` builds a `CompareResult` from the scored systems in one place; `compare` then sets the
human ratings, the judge, its settings and the machine; `CompareResult.to_dict` is results.json.
The tables list the metrics that were scored, named by their `METRICS` labels
(toolkit/evaluate/metrics.py); the terminal table and box plots those marked `shown`; the headline
sentence, histogram and per-generation score read `PRIMARY`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import ClassVar

from toolkit.evaluate.human import describe
from toolkit.evaluate.human import render_html as human_html
from toolkit.evaluate.human import render_markdown as human_markdown
from toolkit.evaluate.judge_report import calibration_line, warning
from toolkit.evaluate.judge_report import render_html as judge_html
from toolkit.evaluate.judge_report import render_markdown as judge_markdown
from toolkit.evaluate.machine import measured_line
from toolkit.evaluate.metrics import METRICS, PRIMARY, Metric
from toolkit.evaluate.stats import Interval, PairedComparison, bootstrap_mean, paired
from toolkit.io import save_figure


def _plain(value):
    """JSON-ready: typed parts through their `to_dict`, containers item by item."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class _Serialised:
    """`to_dict` over a dataclass's fields in their order; the fields in OPTIONAL are left out when None."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)
                if not (f.name in self.OPTIONAL and getattr(self, f.name) is None)}


@dataclass
class SystemResult(_Serialised):
    """One system: what it is, its mean per metric with a bootstrap interval, its outputs' sizes,
    and its paired difference from the reference system per metric (None for the reference)."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("vs_reference",)

    label: str
    model: str
    params: dict
    params_source: str
    metrics: dict[str, Interval]
    mean_output_tokens: float
    stopped_by_length: int
    tokens_per_second: float
    vs_reference: dict[str, PairedComparison] | None = None


@dataclass
class OutputResult:
    """One system's answer to one prompt, with its score per metric."""

    text: str
    finish_reason: str
    tokens: int
    scores: dict[str, float]

    def to_dict(self) -> dict:
        # the scores sit beside the text in results.json, one key per metric
        return {"text": self.text, "finish_reason": self.finish_reason, "tokens": self.tokens, **self.scores}


@dataclass
class ExampleResult(_Serialised):
    """One test prompt, its reference and every system's answer (by system label)."""

    id: str
    prompt: str
    reference: str
    outputs: dict[str, OutputResult]


@dataclass
class CompareResult(_Serialised):
    """Every number of compare's report. `to_dict` is results.json (keys in field order; no
    `judge` key without a judge).

    Attributes:
        examples: test prompts compared.
        reference_system: the first system's label; differences are against it.
        systems: one row per system, the reference first.
        per_example: each prompt's answers and scores.
        human: the blind human ratings' summary per rated pair (toolkit/evaluate/human.py).
        judge: the pairwise judge's result (toolkit/evaluate/judge.py), None without --judge.
        generated: outputs generated in this run (not cached) per system.
        settings: the options `compare --again` repeats the run with.
        seconds: the run's wall time.
        machine: where the numbers were measured (toolkit/evaluate/machine.py).
    """

    OPTIONAL: ClassVar[tuple[str, ...]] = ("judge", "machine")

    examples: int
    reference_system: str
    systems: list[SystemResult]
    per_example: list[ExampleResult]
    human: list[dict] = field(default_factory=list)
    judge: dict | None = None
    generated: dict[str, int] = field(default_factory=dict)
    settings: dict | None = None
    seconds: float = 0.0
    machine: dict | None = None

    @property
    def metrics(self) -> list[Metric]:
        """The metrics that were scored, in the table's order."""
        return [METRICS[m] for m in self.systems[0].metrics] if self.systems else []


def _versus(m: Metric, reference: list[float], scores: list[float], seed: int) -> PairedComparison:
    """`scores - reference` over the prompts; the win rate counts a win in the metric's direction."""
    c = paired(reference, scores, seed=seed)
    return c if m.higher_is_better else replace(c, win_rate=1 - c.win_rate)  # ties stay half


def summarise(systems: list, examples: list, seed: int) -> CompareResult:
    """Per-system means with intervals and paired differences against the first system, from
    compare's scored `System`s (label, model, params, params_source, outputs, scores by metric name)."""
    ref = systems[0]
    scored = [METRICS[m] for m in ref.scores]
    rows = []
    for s in systems:
        tokens = sum(o["completion_tokens"] for o in s.outputs)
        seconds = sum(o["seconds"] for o in s.outputs)
        rows.append(SystemResult(
            s.label, s.model, s.params.to_dict(), s.params_source,
            metrics={m.name: bootstrap_mean(s.scores[m.name], seed=seed) for m in scored},
            mean_output_tokens=statistics.fmean(o["completion_tokens"] for o in s.outputs),
            stopped_by_length=sum(o["finish_reason"] == "length" for o in s.outputs),
            tokens_per_second=tokens / seconds if seconds else 0.0,
            vs_reference=None if s is ref else {m.name: _versus(m, ref.scores[m.name], s.scores[m.name], seed) for m in scored}))
    per_example = [
        ExampleResult(ex.id, ex.prompt, ex.response, {
            s.label: OutputResult(s.outputs[i]["text"], s.outputs[i]["finish_reason"], s.outputs[i]["completion_tokens"],
                                  {m.name: s.scores[m.name][i] for m in scored}) for s in systems})
        for i, ex in enumerate(examples)]
    return CompareResult(len(examples), ref.label, rows, per_example)


def make_plots(result: CompareResult, folder: Path) -> dict[str, Path]:
    """The per-example histogram of the headline metric per system, and box plots per shown metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def per_example(label: str, name: str) -> list[float]:
        return [ex.outputs[label].scores[name] for ex in result.per_example]

    folder.mkdir(parents=True, exist_ok=True)
    primary, systems = METRICS[PRIMARY], result.systems
    scores = [per_example(s.label, PRIMARY) for s in systems]
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
    axes[-1, 0].set_xlabel(f"{primary.label} per example (dashed: mean)")
    fig.suptitle(f"Per-example {primary.label} by system")
    made = {"histogram": save_figure(fig, folder / f"{PRIMARY}_hist.png")}
    shown = [m for m in result.metrics if m.shown]
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 4.2), squeeze=False)
    for ax, m in zip(axes[0], shown):
        ax.boxplot([per_example(s.label, m.name) for s in systems], tick_labels=[s.label for s in systems], showmeans=True)
        ax.set_title(m.label)
        ax.tick_params(axis="x", rotation=20)
    made["boxplots"] = save_figure(fig, folder / "boxplots.png")
    return made


def _fmt(ci: Interval) -> str:
    return f"{ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def _diff(c: PairedComparison) -> str:
    d = c.diff
    mark = " ✓" if c.significant else ""
    return f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}] p={c.p_value:.2g} win {c.win_rate:.0%}{mark}"


def headline(result: CompareResult) -> str:
    """One honest sentence about the headline metric against the first system."""
    primary = METRICS[PRIMARY]
    parts = []
    for s in result.systems[1:]:
        c = s.vs_reference[PRIMARY]
        d = c.diff
        better = primary.better(0.0, d.mean)
        verdict = ("better than" if better else "worse than") if c.significant else "not distinguishable from"
        parts.append(f"{s.label} is {verdict} {result.reference_system} on {primary.label} ({d.mean:+.3f}, "
                     f"95% CI [{d.low:+.3f}, {d.high:+.3f}], Wilcoxon p={c.p_value:.2g}, n={c.n})")
    return "; ".join(parts) + "." if parts else "Only one system was compared."


def render_markdown(result: CompareResult, plots: dict[str, str], examples_shown: int = 5) -> str:
    metrics, primary = result.metrics, METRICS[PRIMARY]
    lines = ["# Base vs tuned: comparison report", "", f"**{headline(result)}**", "",
             f"{result.examples} test prompts, the same seeds for every system; differences are against "
             f"`{result.reference_system}` (paired bootstrap 95% CI, Wilcoxon signed-rank p, win rate; ✓ = beyond noise).", "",
             *([measured_line(result.machine), ""] if result.machine is not None else []),
             "| system | model | params | " + " | ".join(m.label for m in metrics) + " | tokens | cut by length | tok/s |",
             "|---|---|---|" + "---|" * (len(metrics) + 3)]
    for s in result.systems:
        lines.append(f"| {s.label} | `{Path(s.model).name}` | {s.params_source} | "
                     + " | ".join(_fmt(s.metrics[m.name]) for m in metrics)
                     + f" | {s.mean_output_tokens:.0f} | {s.stopped_by_length} | {s.tokens_per_second:.0f} |")
    lines += ["", "## Differences against " + result.reference_system, "",
              "| system | " + " | ".join(m.label for m in metrics) + " |", "|---|" + "---|" * len(metrics)]
    for s in result.systems[1:]:
        lines.append(f"| {s.label} | " + " | ".join(_diff(s.vs_reference[m.name]) for m in metrics) + " |")
    lines.append("")
    lines += _extra_markdown(result)
    for name, rel in plots.items():
        lines += [f"![{name}]({rel})", ""]
    lines += ["## Example generations", ""]
    for ex in result.per_example[:examples_shown]:
        lines += [f"### {ex.id}", "", f"**Prompt:** {ex.prompt}", "", f"**Reference:** {ex.reference}", ""]
        for label, o in ex.outputs.items():
            lines += [f"**{label}** ({primary.label} {o.scores[PRIMARY]:.3f}, {o.tokens} tokens, {o.finish_reason}): {o.text.strip()}", ""]
    return "\n".join(lines)


def _extra_markdown(result: CompareResult) -> list[str]:
    """The human ratings (`toolkit rate`) and the pairwise judge (`--judge`), when there are any."""
    lines = []
    if result.human:
        lines += human_markdown(result.human)
    if result.judge:
        lines += judge_markdown(result.judge)
    return lines


def _extra_html(result: CompareResult) -> str:
    parts = ""
    if result.human:
        parts += human_html(result.human)
    if result.judge:
        parts += judge_html(result.judge)
    return parts


def render_html(result: CompareResult, plots: dict[str, Path], examples_shown: int = 8) -> str:
    """A self-contained page: tables, the plots embedded as data URIs, side-by-side generations."""
    import base64
    import html

    esc = html.escape
    metrics, primary = result.metrics, METRICS[PRIMARY]
    head = "".join(f"<th>{esc(m.label)}</th>" for m in metrics)
    rows = "".join(
        f"<tr><td>{esc(s.label)}</td><td><code>{esc(Path(s.model).name)}</code></td><td>{esc(s.params_source)}</td>"
        + "".join(f"<td>{esc(_fmt(s.metrics[m.name]))}</td>" for m in metrics)
        + f"<td>{s.mean_output_tokens:.0f}</td><td>{s.stopped_by_length}</td><td>{s.tokens_per_second:.0f}</td></tr>"
        for s in result.systems)
    diffs = "".join(f"<tr><td>{esc(s.label)}</td>" + "".join(f"<td>{esc(_diff(s.vs_reference[m.name]))}</td>" for m in metrics) + "</tr>"
                    for s in result.systems[1:])
    images = "".join(f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'
                     f"<figcaption>{esc(name)}</figcaption></figure>" for name, path in plots.items())
    labels = [s.label for s in result.systems]
    machine = f"<p>{esc(measured_line(result.machine))}</p>" if result.machine is not None else ""
    examples = "".join(
        f"<section class=ex><h3>{esc(ex.id)}</h3><p><b>Prompt:</b> {esc(ex.prompt)}</p><div class=grid>"
        f"<div><h4>reference</h4><p>{esc(ex.reference)}</p></div>"
        + "".join(f"<div><h4>{esc(l)} <small>{esc(primary.brief)} {ex.outputs[l].scores[PRIMARY]:.3f}</small></h4>"
                  f"<p>{esc(ex.outputs[l].text.strip())}</p></div>" for l in labels)
        + "</div></section>" for ex in result.per_example[:examples_shown])
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px}"
             "th{background:#f3f3f3}img{max-width:100%}figure{margin:1em 0}.grid{display:grid;"
             f"grid-template-columns:repeat({len(labels) + 1},1fr);gap:8px}}.grid div{{background:#fafafa;padding:6px;font-size:13px}}"
             ".headline{font-size:1.1em;background:#eef6ee;padding:.6em;border-left:4px solid #4a4}"
             ".warn{background:#fbeaea;padding:.6em;border-left:4px solid #c44}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>Base vs tuned</title><style>{style}</style></head><body>"
            f"<h1>Base vs tuned: comparison report</h1><p class=headline>{esc(headline(result))}</p>"
            f"<p>{result.examples} test prompts; differences against <b>{esc(result.reference_system)}</b> "
            "(paired bootstrap 95% CI, Wilcoxon p, win rate; ✓ = beyond noise).</p>"
            f"{machine}"
            f"<table><tr><th>system</th><th>model</th><th>params</th>{head}<th>tokens</th><th>cut by length</th><th>tok/s</th></tr>{rows}</table>"
            f"<h2>Differences</h2><table><tr><th>system</th>{head}</tr>{diffs}</table>{_extra_html(result)}{images}"
            f"<h2>Example generations</h2>{examples}</body></html>")


def print_table(result: CompareResult) -> None:
    """The terminal summary: the shown metrics per system, the headline difference, the headline
    sentence, and the human and judge results when there are any."""
    from rich.table import Table

    from toolkit.console import out

    shown, primary = [m for m in result.metrics if m.shown], METRICS[PRIMARY]
    table = Table(title=f"compare on {result.examples} prompts (vs {result.reference_system})")
    for col in ("system", *(m.label for m in shown), f"Δ {primary.brief} vs ref", "tokens"):
        table.add_column(col, justify="left" if col == "system" else "right")
    for s in result.systems:
        delta = _diff(s.vs_reference[PRIMARY]) if s.vs_reference is not None else "-"
        table.add_row(s.label, *(_fmt(s.metrics[m.name]) for m in shown), delta, f"{s.mean_output_tokens:.0f}")
    out.print(table)
    out.print(f"[bold]{headline(result)}[/]", soft_wrap=True)
    _print_human(result.human)
    if result.judge:
        _print_judge(result.judge)


def _print_human(humans: list[dict]) -> None:
    from toolkit.console import out

    for h in humans:
        lines = describe(h)
        out.print(lines[1], soft_wrap=True)
        if h["stale"]:  # then describe's last line says how many
            out.print(f"[bold yellow]{lines[-1]}[/] Ratings count only against the outputs they were made on: "
                      "run the systems with the options of the rated run (`toolkit compare --again --out DIR`).", soft_wrap=True)


def _print_judge(j: dict) -> None:
    from toolkit.console import out

    for s in j["systems"]:
        out.print(f"judge {j['model']}: {s['label']} vs {s['vs']}: {s['wins']} wins / {s['ties']} ties / {s['losses']} losses, "
                  f"order consistency {s['order_consistency']:.0%}", soft_wrap=True)
    out.print(calibration_line(j), soft_wrap=True)
    if warning(j):
        out.print(f"[bold red]{warning(j)}[/]", soft_wrap=True)
