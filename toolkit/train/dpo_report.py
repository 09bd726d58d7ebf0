"""What a preference-tuning run reports: the Zephyr recipe's table at every evaluation (training
loss, validation loss, rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins,
logps/chosen, logps/rejected, logits/chosen, logits/rejected), as rows of metrics.jsonl, as
OUT/eval.csv, as a rich table and as plots (loss, accuracies, margins); and the health checks for
the mistakes DPO users report most (policy = reference, wrong reference, NaN, likelihood collapse).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from toolkit.io import save_figure, write_text

# TRL's metric names (DPOTrainer and CPOTrainer log them; `eval_` in front at evaluation)
REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
           "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected")
COLUMNS = ("step", "train_loss", "val_loss", *REWARDS)
LN2 = math.log(2)


def eval_row(step: int, logs: dict, train_losses: list[float]) -> dict:
    """A metrics.jsonl row for one evaluation: TRL's eval metrics under their own names, the
    validation loss as `val_loss`, and the mean training loss of the steps since the last evaluation."""
    row = {"step": step, "val_loss": logs.get("eval_loss")}
    row["train_loss"] = sum(train_losses) / len(train_losses) if train_losses else None
    row.update({f"eval_{k}": logs[f"eval_{k}"] for k in REWARDS if f"eval_{k}" in logs})
    return row


def train_row(step: int, logs: dict) -> dict:
    """A metrics.jsonl row for one optimizer step (the training batch's own rewards included)."""
    row = {"step": step, "epoch": logs.get("epoch"), "loss": logs.get("loss"), "lr": logs.get("learning_rate"),
           "grad_norm": logs.get("grad_norm")}
    row.update({k: logs[k] for k in (*REWARDS, "nll_loss") if k in logs})
    return row


def table_rows(rows: list[dict]) -> list[dict]:
    """The evaluation rows of metrics.jsonl as the table's columns."""
    return [{"step": r["step"], "train_loss": r.get("train_loss"), "val_loss": r.get("val_loss"),
             **{k: r.get(f"eval_{k}") for k in REWARDS}} for r in rows if "val_loss" in r]


def to_csv(table: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})
    return buf.getvalue()


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


def print_table(table: list[dict], title: str) -> None:
    """One column per evaluation step when that fits the terminal (ten metrics as rows), else one
    row per step with the terminal widened (logs and pipes have no width of their own)."""
    from rich.table import Table

    from toolkit.console import out

    shown = Table(title=title)
    if 16 + 10 * len(table) <= out.width:
        shown.add_column("step", justify="left")
        for row in table:
            shown.add_column(str(row["step"]), justify="right")
        for col in COLUMNS[1:]:
            shown.add_row(col.replace("_", " "), *(_cell(row.get(col)) for row in table))
        out.print(shown)
        return
    for col in COLUMNS:
        shown.add_column(col.replace("_", " "), justify="right", no_wrap=True, min_width=len(col))
    for row in table:
        shown.add_row(*(_cell(row.get(c)) for c in COLUMNS))
    from rich.console import Console

    Console(file=out.file, width=max(out.width, 200)).print(shown)


def markdown_table(table: list[dict]) -> str:
    """The same table as Markdown (for notes and reports)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---:|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in COLUMNS) + " |" for r in table]
    return "\n".join(lines)


def plot(rows: list[dict], dest: Path) -> Path:
    """Three panels over steps: loss (train per step, validation per evaluation), validation
    rewards/accuracies, validation rewards/margins (with the training batches' own, faint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r.get("loss") is not None]
    evals = [r for r in rows if r.get("val_loss") is not None]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=100)
    panels = (("loss", "val_loss", "loss"), ("rewards/accuracies", "eval_rewards/accuracies", "reward accuracy"),
              ("rewards/margins", "eval_rewards/margins", "reward margin (chosen - rejected)"))
    for ax, (train_key, eval_key, label) in zip(axes, panels):
        points = [(r["step"], r[train_key]) for r in train if r.get(train_key) is not None]
        if points:
            ax.plot(*zip(*points), lw=1, alpha=0.45, label="training batch")
        points = [(r["step"], r[eval_key]) for r in evals if r.get(eval_key) is not None]
        if points:
            ax.plot(*zip(*points), "o-", lw=2, label="validation")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].axhline(0.5, color="grey", lw=0.8, ls="--")
    return save_figure(fig, dest)


def _finite(row: dict) -> bool:
    return all(v is None or not isinstance(v, float) or math.isfinite(v) for v in row.values())


def health(rows: list[dict], warmup_steps: int, loss_type: str, method: str = "dpo") -> list[str]:
    """Warnings for the DPO failure modes users file most (see the research notes, A4)."""
    warnings: list[str] = []
    table = table_rows(rows)
    bad = next((r for r in rows if not _finite(r)), None)
    if bad is not None:
        warnings.append(f"NaN/inf in the metrics at step {bad['step']}: lower --lr or --beta, or train in fp32 (--precision fp32)")
    if not table:
        return warnings
    first, last = table[0], table[-1]
    if method == "dpo" and first["step"] == 0 and first.get("rewards/accuracies") == 1.0:
        warnings.append("rewards/accuracies is 1.0 at step 0: the reference is not the starting policy (or the pairs are "
                        "trivially separable); start DPO from the SFT run you want to improve, never the raw base")
    late = [r for r in table if r["step"] > max(warmup_steps, 0)]
    if method == "dpo" and loss_type == "sigmoid" and late and all(
            r.get("val_loss") is not None and abs(r["val_loss"] - LN2) < 2e-3 and abs(r.get("rewards/margins") or 0) < 1e-3
            for r in late):
        warnings.append(f"validation loss flat at ln 2 ({LN2:.4f}) after warm-up with margins ~0: the policy is not moving "
                        "away from the reference (adapter not training? --lr or --beta too small? too few steps?)")
    c0, c1 = first.get("logps/chosen"), last.get("logps/chosen")
    r0, r1 = first.get("logps/rejected"), last.get("logps/rejected")
    if None not in (c0, c1, r0, r1) and last is not first:
        drop = c0 - c1
        if drop > max(1.0, 0.1 * abs(c0)) and r1 < r0:
            warnings.append(f"chosen log-probs are collapsing with the rejected ones ({c0:.1f} -> {c1:.1f} vs {r0:.1f} -> {r1:.1f}): "
                            "the margin grows by pushing both down; lower --lr or --beta, or train fewer steps")
    return warnings


def write_outputs(out: Path, rows: list[dict], title: str) -> list[dict]:
    """eval.csv, dpo.png and the rich table; returns the table."""
    table = table_rows(rows)
    write_text(out / "eval.csv", to_csv(table))
    plot(rows, out / "dpo.png")
    if table:
        print_table(table, title)
    return table


__all__ = ["REWARDS", "COLUMNS", "eval_row", "train_row", "table_rows", "to_csv", "print_table", "markdown_table", "plot",
           "health", "write_outputs"]
