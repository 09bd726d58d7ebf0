"""`toolkit eval`'s tables: scores with standard errors, and every model against the first, paired.

The headline metric of a task is `acc_norm` where the harness reports it, else `acc` (the source
study's reading). Models are compared on the same items: McNemar's exact test on the items where
exactly one of the two is right, and a paired bootstrap interval on the accuracy difference
(`toolkit.evaluate.stats`). With f16, Q8_0 and Q4_K_M GGUFs of one model given in that order, the
comparison table is the quantization table: each quantization against f16.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from toolkit.evaluate.stats import bootstrap_mean, sign_test


def headline(row: dict) -> str:
    """`acc_norm` where the task reports it, else `acc`."""
    return "acc_norm" if "acc_norm,none" in row else "acc"


def per_item(results: dict, task: str, metric: str) -> dict[int, float]:
    """{document index: 0/1} of one task from the harness's logged samples."""
    return {int(s["doc_id"]): float(s[metric]) for s in results.get("samples", {}).get(task, [])}


def task_items(results: dict, subjects: dict[str, list[str]], task: str, metric: str) -> dict[tuple[str, int], float]:
    """Per-item correctness of a reported task; `mmlu` pools its subjects' items."""
    names = [f"mmlu_{s}" for s in subjects.get(task, [])] if task == "mmlu" else [task]
    return {(name, doc): v for name in names for doc, v in per_item(results, name, metric).items()}


@dataclass
class Paired:
    """Model `other` against `base` on one task's shared items."""

    task: str
    metric: str
    base: str
    other: str
    n: int
    acc_base: float
    acc_other: float
    diff: float
    low: float
    high: float
    only_base: int  # items only the base got right
    only_other: int
    mcnemar_p: float

    def to_dict(self) -> dict:
        return asdict(self)


def paired(task: str, metric: str, base: tuple[str, dict], other: tuple[str, dict], *, seed: int = 0) -> Paired:
    """McNemar (exact: a sign test on the discordant items) and a paired bootstrap interval of `other - base`."""
    shared = sorted(set(base[1]) & set(other[1]))
    a = [base[1][k] for k in shared]
    b = [other[1][k] for k in shared]
    interval = bootstrap_mean([y - x for x, y in zip(a, b)], resamples=2000, seed=seed)
    only_base = sum(1 for x, y in zip(a, b) if x > y)
    only_other = sum(1 for x, y in zip(a, b) if y > x)
    mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
    return Paired(task, metric, base[0], other[0], len(shared), mean(a), mean(b), interval.mean, interval.low, interval.high,
                  only_base, only_other, sign_test(only_other, only_base))


def score_rows(runs: dict[str, dict], tasks: list[tuple[str, int]]) -> list[list[str]]:
    """Rows of the score table: task, shots, items, metric, then `score ± stderr` per model."""
    rows = []
    for task, shots in tasks:
        first = next(iter(runs.values()))["summary"].get(task)
        if first is None:
            continue
        for metric in ("acc", "acc_norm") if "acc_norm,none" in first else ("acc",):
            cells = []
            for run in runs.values():
                row = run["summary"].get(task, {})
                value, err = row.get(f"{metric},none"), row.get(f"{metric}_stderr,none")
                cells.append("-" if value is None else f"{100 * value:.1f} ± {100 * err:.1f}" if isinstance(err, float) else f"{100 * value:.1f}")
            rows.append([task, str(shots), str(first.get("n", "")), metric + (" *" if metric == headline(first) else ""), *cells])
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def paired_rows(comparisons: list[Paired]) -> list[list[str]]:
    return [[c.task, c.metric, f"{c.other} vs {c.base}", str(c.n), f"{100 * c.acc_base:.1f}", f"{100 * c.acc_other:.1f}",
             f"{100 * c.diff:+.1f} [{100 * c.low:+.1f}, {100 * c.high:+.1f}]", f"{c.only_base}/{c.only_other}", f"{c.mcnemar_p:.3g}"]
            for c in comparisons]


PAIRED_HEADER = ["task", "metric", "models", "items", "base %", "other %", "diff (95% CI)", "only base/only other right", "McNemar p"]


def render(runs: dict[str, dict], tasks: list[tuple[str, int]], comparisons: list[Paired], notes: list[str]) -> str:
    """The Markdown report: notes (models, data, sample, machine), the score table, the paired table."""
    parts = ["# Benchmarks", "", *[f"- {n}" for n in notes], "",
             markdown_table(["task", "shots", "items", "metric", *runs], score_rows(runs, tasks)), "",
             "`*`: the headline metric (acc_norm where the harness reports it). Scores in %, ± the harness's standard error."]
    if comparisons:
        parts += ["", "## Paired comparison (same items)", "", markdown_table(PAIRED_HEADER, paired_rows(comparisons)), "",
                  "diff: other - base in points, paired bootstrap 95% interval; McNemar: exact test on the items only one model got right."]
    return "\n".join(parts) + "\n"


def print_tables(runs: dict[str, dict], tasks: list[tuple[str, int]], comparisons: list[Paired]) -> None:
    """The same tables in the terminal (rich)."""
    from rich.table import Table

    from toolkit.console import out

    table = Table(title="Benchmarks")
    for col in ["task", "shots", "items", "metric", *runs]:
        table.add_column(col)
    for row in score_rows(runs, tasks):
        table.add_row(*row)
    out.print(table)
    if comparisons:
        paired_table = Table(title="Paired comparison (same items)")
        for col in PAIRED_HEADER:
            paired_table.add_column(col)
        for row in paired_rows(comparisons):
            paired_table.add_row(*row)
        out.print(paired_table)
