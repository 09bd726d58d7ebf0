"""`toolkit train --method dpo|simpo`: preference tuning after SFT, on TRL's trainers.

What is TRL's: the losses (DPO sigmoid, IPO, robust, hinge; SimPO through the CPO trainer), the
tokenization of conversational pairs through the chat template, the reference log-probabilities
computed once before training (`precompute_ref_log_probs`), the metrics (rewards/*, logps/*,
logits/*) and the loop itself (transformers' Trainer: optimizer, schedule, checkpoints, resume).
What is the toolkit's: reading every preference format with bad rows reported by line
(`toolkit.data.preference`), choosing the reference (an SFT adapter is merged first, into
OUT/start, and DPO trains a fresh LoRA on top, so reference = adapters disabled = the SFT model,
never the raw base), stopping as if killed (`stop_after`), the rich progress bar, metrics.jsonl,
eval.csv, the table and plots, the health warnings, and an adapter that `toolkit merge` and
`toolkit export` take like an SFT one (toolkit-adapter.json names OUT/start as its base).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.data.columns import Columns
from toolkit.data.preference import read_pairs
from toolkit.errors import ConfigError, DataError, ModelError
from toolkit.io import write_json, write_text
from toolkit.models import resolve
from toolkit.train.config import TrainConfig
from toolkit.train.dpo_report import eval_row, health, table_rows, train_row, write_outputs
from toolkit.train.merge import merge
from toolkit.train.model import (
    ADAPTER_META,
    build_adapter_meta,
    check_target_modules,
    device_kind,
    resolve_precision,
    save_adapter,
)
from toolkit.train.rundir import (
    TrainResult,
    already_finished,
    append_metric,
    open_run_dir,
    plot_losses,
    read_metrics,
    result_from_summary,
    write_metrics,
)
from toolkit.train.tokens import end_of_turn_id

START = "start"  # OUT/start: the merged SFT model, the reference policy and the DPO adapter's base


@dataclass
class Pairs:
    """The training and validation pairs (`toolkit.data.preference.Pair`) and what was skipped."""

    train: list
    val: list
    skipped: dict[str, int] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)

    def trl(self, role: str, system: str = "") -> list[dict]:
        """One side in TRL's conversational form, the system prompt put first where a pair has none."""
        return [p.to_trl(system) for p in (self.train if role == "train" else self.val)]


def load_pairs(cfg: TrainConfig) -> Pairs:
    """Read train/validation pairs (any preference format); bad rows stop here, before any model
    loads, unless `skip_bad`."""
    from toolkit.console import err

    columns = Columns(prompt=cfg.prompt_col, chosen=cfg.chosen_col, rejected=cfg.rejected_col)
    result = Pairs([], [])
    for role, path in (("train", cfg.train_data), ("validation", cfg.validation_data)):
        if not path:
            continue
        if not Path(path).exists():
            raise DataError(f"{role} file not found", path=path,
                            fix="make preference pairs with `toolkit data prefs SPLIT --out FILE`, or pass --train-data FILE")
        read = read_pairs(path, skip_bad=cfg.skip_bad, columns=columns)
        rows = read.pairs
        result.skipped[role], result.formats[role] = len(read.bad), read.format
        if read.bad:
            err.print(f"[yellow]{path}: skipped {len(read.bad)} bad rows (first: {read.bad[0]})[/]", soft_wrap=True)
        if role == "train":
            result.train = rows
        else:
            result.val = rows
    return result


def find_sft_adapter(spec: str) -> Path | None:
    path = Path(spec)
    for candidate in (path, path / "adapter"):
        if (candidate / "adapter_config.json").exists():
            return candidate
    return None


def start_model(cfg: TrainConfig, out: Path) -> tuple[Path, dict]:
    """(HF directory of the starting policy, its toolkit-merge.json): an SFT adapter is merged into
    OUT/start first (once; a resumed run reuses it); a merged SFT model is used as it is."""
    from toolkit.console import err

    adapter = find_sft_adapter(cfg.model)
    if adapter is not None:
        dest = out / START
        if not (dest / "toolkit-merge.json").exists():
            merge(adapter, dest)
        return dest, json.loads((dest / "toolkit-merge.json").read_text(encoding="utf-8"))
    hf_dir = resolve(cfg.model).require_hf()
    marker = hf_dir / "toolkit-merge.json"
    if not marker.exists():
        err.print(f"[yellow]{cfg.model} is not an SFT run or merged SFT model: the reference policy is this model itself. "
                  "The Zephyr recipe starts DPO from the SFT model (--model RUN_DIR of toolkit train).[/]", soft_wrap=True)
        return hf_dir, {}
    return hf_dir, json.loads(marker.read_text(encoding="utf-8"))


def load_start(hf_dir: Path, precision: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    if not tokenizer.chat_template:
        raise ModelError(f"{hf_dir}: the tokenizer has no chat template; preference pairs are rendered through it",
                         fix="start from an SFT run of toolkit train (its adapter carries the template)")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    try:
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load {hf_dir}: {str(exc).splitlines()[0]}", fix="pass an SFT run, adapter or HF model directory") from None
    return model, tokenizer


def total_steps(cfg: TrainConfig, n_train: int) -> int:
    """Optimizer steps of the run: max_steps, or epochs over the pairs (fixed up front, so the
    schedule of a stopped and resumed run is the one of an uninterrupted run)."""
    if cfg.max_steps:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * math.ceil(n_train / cfg.batch_size) / cfg.grad_accum))


def trainer_args(cfg: TrainConfig, out: Path, steps: int, precision: str, has_val: bool, resuming: bool):
    """DPOConfig (or CPOConfig for SimPO), with every value that differs from TRL's defaults set
    explicitly: fp32 and no gradient checkpointing on CPU (TRL defaults to bf16 and checkpointing)."""
    common: dict[str, Any] = dict(
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size * 2, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, lr_scheduler_type={"constant": "constant_with_warmup"}.get(cfg.lr_scheduler, cfg.lr_scheduler),
        warmup_steps=float(cfg.warmup_ratio), weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        max_steps=steps, seed=cfg.seed, data_seed=cfg.seed, logging_steps=1,
        eval_strategy="steps" if has_val else "no", eval_steps=cfg.eval_every or steps,
        eval_on_start=has_val and not resuming,
        save_strategy="steps" if cfg.save_every else "no", save_steps=cfg.save_every or steps,
        save_total_limit=cfg.keep_checkpoints, report_to="none", disable_tqdm=True, log_level="warning",
        bf16=precision == "bf16", fp16=precision == "fp16", gradient_checkpointing=cfg.gradient_checkpointing,
        use_cpu=device_kind() == "cpu", dataloader_num_workers=0, max_length=cfg.max_length, beta=cfg.beta,
        disable_dropout=True)
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)  # transformers' rename
        if cfg.method == "simpo":
            from trl.experimental.cpo import CPOConfig

            return CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, simpo_gamma=cfg.simpo_gamma)
        from trl import DPOConfig

        return DPOConfig(**common, loss_type=[cfg.loss_type], label_smoothing=cfg.label_smoothing,
                         precompute_ref_log_probs=cfg.precompute_ref, precompute_ref_batch_size=cfg.batch_size * 2)


@contextlib.contextmanager
def _quiet_tqdm():
    """TRL and datasets draw tqdm bars while preparing; the toolkit shows its own status instead."""
    import datasets

    before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()
        if before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = before


def build_trainer(cfg: TrainConfig, model, tokenizer, pairs: Pairs, system: str, args, callbacks: list):
    """TRL's trainer with a fresh LoRA (`peft_config`) on the starting model: with DPO the
    reference is that model with the adapter disabled, its log-probs computed once here."""
    from datasets import Dataset
    from peft import LoraConfig

    from toolkit.console import status

    check_target_modules(model, cfg.target_modules)
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
                      task_type="CAUSAL_LM")
    train = Dataset.from_list(pairs.trl("train", system))
    val = Dataset.from_list(pairs.trl("validation", system)) if pairs.val else None
    what = "tokenizing pairs" + (", computing reference log-probs once" if cfg.method == "dpo" and cfg.precompute_ref else "")
    with _quiet_tqdm(), status(f"{cfg.method.upper()}: {what} ({len(pairs.train)} train, {len(pairs.val)} validation pairs)"):
        if cfg.method == "simpo":
            from trl.experimental.cpo import CPOTrainer as Trainer
        else:
            from trl import DPOTrainer as Trainer
        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val, processing_class=tokenizer,
                          peft_config=lora, callbacks=callbacks)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every log dict; the bar and the table say it better
    return trainer


def _last_checkpoint(out: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = out / "checkpoints"
    found = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    return Path(found) if found else None


def _step_of(ckpt: Path | None) -> int:
    return int(ckpt.name.rsplit("-", 1)[-1]) if ckpt else 0


def run_preference(cfg: TrainConfig, resume: bool = False, show_progress: bool = True) -> TrainResult:
    """Preference-tune a fresh LoRA on top of the starting (SFT) model as `cfg` says; `resume`
    continues from the run's last checkpoint with the same data order and the same numbers."""
    from toolkit.console import err

    cfg.validate()
    if cfg.qlora:
        raise ConfigError("--qlora is not supported with --method dpo/simpo", fix="drop --qlora (the LoRA trains on a full-precision copy)")
    out = Path(cfg.out)
    if resume and already_finished(out, cfg):
        err.print(f"{out} already finished training; its adapter is {out / 'adapter'}")
        return result_from_summary(out)
    open_run_dir(out, resume)
    ckpt = _last_checkpoint(out) if resume else None
    out.mkdir(parents=True, exist_ok=True)
    pairs = load_pairs(cfg)
    start, start_meta = start_model(cfg, out)
    system = cfg.system or start_meta.get("system", "")
    precision = resolve_precision(cfg.precision)
    model, tokenizer = load_start(start, precision)
    steps = total_steps(cfg, len(pairs.train))
    rows = read_metrics(out / "metrics.jsonl", _step_of(ckpt)) if ckpt else []
    write_text(out / "config.yaml", cfg.replace(stop_after=0).to_yaml(
        f"Resolved config of this run. Resume with: toolkit train --out {out} --resume"))
    write_metrics(out / "metrics.jsonl", rows)
    run = _Session(cfg, out, steps, rows)
    args = trainer_args(cfg, out, steps, precision, bool(pairs.val), ckpt is not None)
    trainer = build_trainer(cfg, model, tokenizer, pairs, system, args,
                            run.callbacks(show_progress))
    if ckpt:
        err.print(f"resuming {out} from {ckpt.name} (step {_step_of(ckpt)} of {steps})")
    begin = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    seconds = time.perf_counter() - begin
    done = trainer.state.global_step
    completed = done >= steps
    adapter = None
    if completed:
        meta = preference_adapter_meta(cfg, start, start_meta, tokenizer, system)
        adapter = save_adapter(trainer.model, tokenizer, out / "adapter", meta)
    return run.finish(done, seconds, adapter, pairs, start, precision)


def preference_adapter_meta(cfg: TrainConfig, start: Path, start_meta: dict, tokenizer, system: str) -> dict:
    """toolkit-adapter.json of the preference adapter: its base is the starting model (OUT/start),
    so `toolkit merge RUN` gives SFT+DPO in one model."""
    stops = start_meta.get("stop") or [tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer))]
    start = start.resolve()
    preference = {"method": cfg.method, "beta": cfg.beta, "loss_type": cfg.loss_type if cfg.method == "dpo" else "simpo",
                  "label_smoothing": cfg.label_smoothing, "started_from": cfg.model,
                  "reference": str(start) if cfg.method == "dpo" else None}
    return build_adapter_meta(cfg, spec=str(start), name=start.name, hf_dir=start, fmt=start_meta.get("format", "chat"),
                              system=system, stops=stops, preference=preference)


@dataclass
class _Session:
    """One training session's bookkeeping: the metrics rows it writes, the bar, the warnings."""

    cfg: TrainConfig
    out: Path
    steps: int
    rows: list[dict]
    since_eval: list[float] = field(default_factory=list)
    warned_nan: bool = False
    tokens: int = 0

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def on_log(self, step: int, logs: dict) -> str | None:
        """Record one log call of the trainer; returns the progress-bar text for it."""
        from toolkit.console import err

        if "eval_loss" in logs:
            row = eval_row(step, logs, self.since_eval)
            self.since_eval = []
        elif "loss" in logs:
            row = train_row(step, logs)
            self.since_eval.append(float(logs["loss"]))
            self.tokens = int(logs.get("num_tokens", self.tokens))
        else:
            return None  # the trainer's closing summary
        if not self.warned_nan and any(isinstance(v, float) and not math.isfinite(v) for v in row.values()):
            self.warned_nan = True
            err.print(f"[bold yellow]warning: NaN/inf in the metrics at step {step}[/]: lower --lr or --beta, or use --precision fp32")
        self.rows.append(row)
        append_metric(self.metrics_path, row)
        last = next((r for r in reversed(self.rows) if "val_loss" in r), None)
        val = f" | val acc {last.get('eval_rewards/accuracies', float('nan')):.2f} margin {last.get('eval_rewards/margins', float('nan')):.3f}" if last else ""
        loss = next((r["loss"] for r in reversed(self.rows) if r.get("loss") is not None), None)
        return (f"loss {loss:.3f}" if loss is not None else "") + val

    def callbacks(self, show_progress: bool) -> list:
        from transformers import TrainerCallback

        session, cfg = self, self.cfg

        class _Toolkit(TrainerCallback):
            bar = None
            task = None

            def on_train_begin(self, args, state, control, **kwargs):
                if show_progress and state.is_world_process_zero:
                    from toolkit.console import progress

                    self.bar = progress()
                    self.bar.start()
                    self.task = self.bar.add_task(cfg.method.upper(), total=state.max_steps, completed=state.global_step, info="")

            def on_step_end(self, args, state, control, **kwargs):
                if cfg.stop_after and state.global_step == cfg.stop_after < state.max_steps:
                    control.should_save = True  # a checkpoint to resume from, as if killed right after it
                    control.should_training_stop = True
                if self.bar is not None:
                    self.bar.update(self.task, completed=state.global_step)

            def on_log(self, args, state, control, logs=None, **kwargs):
                if state.is_world_process_zero and logs:
                    info = session.on_log(state.global_step, logs)
                    if self.bar is not None and info is not None:
                        self.bar.update(self.task, info=info)

            def on_train_end(self, args, state, control, **kwargs):
                if self.bar is not None:
                    self.bar.stop()
                    self.bar = None

        return [_Toolkit()]

    def finish(self, done: int, seconds: float, adapter: Path | None, pairs: Pairs, start: Path, precision: str) -> TrainResult:
        """The table, plots, health warnings and summary.json."""
        from toolkit.console import err

        cfg, out = self.cfg, self.out
        rows = read_metrics(self.metrics_path, done)
        completed = done >= self.steps
        table = write_outputs(out, rows, f"{cfg.method.upper()} on {len(pairs.val)} validation pairs (beta {cfg.beta:g}, "
                                          f"{cfg.loss_type if cfg.method == 'dpo' else 'simpo'})")
        plot_losses(rows, out / "loss.png")
        warnings = health(rows, round(cfg.warmup_ratio * self.steps), cfg.loss_type, cfg.method)
        for w in warnings:
            err.print(f"[bold yellow]health:[/] {w}", soft_wrap=True)
        losses = [r["loss"] for r in rows if r.get("loss") is not None]
        val = {r["step"]: r["val_loss"] for r in rows if r.get("val_loss") is not None}
        first, last = (table[0], table[-1]) if table else ({}, {})
        write_json(out / "summary.json", {
            "completed": completed, "steps": done, "total_steps": self.steps, "method": cfg.method,
            "loss_type": cfg.loss_type if cfg.method == "dpo" else "simpo", "beta": cfg.beta,
            "val_loss_start": val.get(0), "val_loss_end": val[max(val)] if val else None,
            "val_accuracy_start": first.get("rewards/accuracies"), "val_accuracy_end": last.get("rewards/accuracies"),
            "val_margin_start": first.get("rewards/margins"), "val_margin_end": last.get("rewards/margins"),
            "final_loss": losses[-1] if losses else None, "health": warnings,
            "pairs_per_s": round(done * cfg.batch_size * cfg.grad_accum / seconds, 3) if seconds else None,
            "tokens_per_s": round(self.tokens / seconds, 2) if seconds else None, "seconds": round(seconds, 1),
            "adapter": str(adapter) if adapter else None, "train_pairs": len(pairs.train), "validation_pairs": len(pairs.val),
            "skipped_rows": pairs.skipped, "formats": pairs.formats, "reference": str(start) if cfg.method == "dpo" else None,
            "device": device_kind(), "precision": precision})
        return TrainResult(out, adapter, done, self.steps, losses, val, self.tokens / seconds if seconds else 0.0, seconds, completed)


def read_table(run: str | os.PathLike) -> list[dict]:
    """The evaluation table of a finished (or stopped) preference run, from its metrics.jsonl."""
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        raise DataError("no metrics.jsonl here", path=run, fix="pass a run directory of toolkit train --method dpo")
    return table_rows(read_metrics(path, 1 << 62))


__all__ = ["run_preference", "read_table", "load_pairs", "start_model", "trainer_args", "total_steps", "ADAPTER_META"]
