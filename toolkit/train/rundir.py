"""The run directory a training run writes and resumes from: config.yaml (resolved), adapter/,
checkpoints/step-NNNNNN/ (adapter, trainable weights, optimizer, scheduler, RNG states),
metrics.jsonl, loss.png and summary.json; and `TrainResult`, what a run produced.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import ConfigError
from toolkit.io import atomic_dir, save_figure, write_json, write_jsonl
from toolkit.train.config import FIELDS, TrainConfig, load_config
from toolkit.train.model import save_adapter

# Options that may differ when resuming: they do not change what is trained.
RESUME_MAY_CHANGE = frozenset({"stop_after", "save_every", "keep_checkpoints", "eval_every"})


@dataclass
class TrainResult:
    """What a run produced."""

    out: Path
    adapter: Path | None
    steps: int
    total_steps: int
    losses: list[float]
    val_losses: dict[int, float]
    tokens_per_s: float
    seconds: float
    completed: bool
    is_main: bool = True  # False in the other processes of a multi-process run, which write nothing


def list_checkpoints(out: Path) -> list[Path]:
    """The run's checkpoint directories, oldest first."""
    return sorted((out / "checkpoints").glob("step-*")) if (out / "checkpoints").is_dir() else []


def _trainable_state(model) -> dict:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(out: Path, step: int, model, tokenizer, optimizer, scheduler, state: dict, meta: dict, keep: int) -> None:
    import torch
    from safetensors.torch import save_file

    dest = out / "checkpoints" / f"step-{step:06d}"
    with atomic_dir(dest) as tmp:
        save_adapter(model, tokenizer, tmp / "adapter", meta)
        save_file(_trainable_state(model), tmp / "trainable.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        write_json(tmp / "state.json", state)
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(ckpt: Path, model, optimizer, scheduler) -> dict:
    import torch
    from safetensors.torch import load_file

    trained = load_file(ckpt / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in trained]
    if missing:
        raise ConfigError(f"checkpoint {ckpt} does not match this model ({missing[0]} missing)",
                          fix="resume with the options the run was started with, or start a new --out")
    with torch.no_grad():
        for name, value in trained.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
    rng = torch.load(ckpt / "rng.pt", weights_only=False)  # written by this code, never downloaded
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((ckpt / "state.json").read_text())


def read_metrics(path: Path, upto: int) -> list[dict]:
    """Rows of metrics.jsonl with step <= `upto` (a line cut short by a kill is skipped)."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                row = json.loads(line)
                if isinstance(row, dict) and row.get("step", 0) <= upto:
                    rows.append(row)
    return rows


def plot_losses(rows: list[dict], dest: Path) -> Path:
    """The training loss per step and the validation loss at its evaluations, as a PNG (atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1, alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (per response token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, dest)


def _check_resume_config(out: Path, cfg: TrainConfig) -> None:
    saved_path = out / "config.yaml"
    if not saved_path.exists():
        return
    saved = load_config(saved_path)
    for name in FIELDS:
        if name not in RESUME_MAY_CHANGE and getattr(saved, name) != getattr(cfg, name):
            raise ConfigError(f"--resume: {name}={getattr(cfg, name)!r} differs from the run's {getattr(saved, name)!r} ({saved_path})",
                              fix="resume with the run's options (toolkit train --out DIR --resume), or start a new --out")


def already_finished(out: Path, cfg: TrainConfig) -> bool:
    """A resumed run that already reached its end (after checking the options match the run's)."""
    _check_resume_config(out, cfg)
    summary = out / "summary.json"
    return summary.exists() and bool(json.loads(summary.read_text()).get("completed"))


def open_run_dir(out: Path, resume: bool) -> list[Path]:
    """The checkpoints to resume from; refuses to start over an existing run without --resume."""
    if resume:
        return list_checkpoints(out)
    if (out / "config.yaml").exists() or list_checkpoints(out) or (out / "adapter").exists():
        raise ConfigError(f"{out} already holds a training run", fix="pass --resume to continue it, or a new --out")
    return []


def append_metric(path: Path, row: dict) -> None:
    # one write() per whole line: a kill leaves at most one cut line, which readers skip
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def write_metrics(path: Path, rows: list[dict]) -> None:
    write_jsonl(path, rows)


def result_from_summary(out: Path) -> TrainResult:
    """The result of a finished run, read back from its summary.json and metrics.jsonl."""
    summary = json.loads((out / "summary.json").read_text())
    rows = read_metrics(out / "metrics.jsonl", summary["steps"])
    return TrainResult(out, Path(summary["adapter"]) if summary.get("adapter") else None, summary["steps"], summary["total_steps"],
                       [r["loss"] for r in rows if "loss" in r], {r["step"]: r["val_loss"] for r in rows if "val_loss" in r},
                       summary.get("tokens_per_s") or 0.0, summary.get("seconds") or 0.0, True)
