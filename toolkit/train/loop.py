"""`run_training`: LoRA / QLoRA supervised fine-tuning as a plain loop on `accelerate.Accelerator`:
CUDA/MPS when present, DDP under `accelerate launch` / `torchrun` with no code change; only the
main process writes. The loss is the mean over every response token of an optimizer step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import ConfigError, DataError
from toolkit.io import write_json, write_text
from toolkit.models import resolve
from toolkit.train.batches import Collator, DataOrder
from toolkit.train.config import TrainConfig
from toolkit.train.model import adapter_meta, build_lora_model, device_kind, resolve_precision, save_adapter
from toolkit.train.rundir import (
    TrainResult,
    already_finished,
    append_metric,
    load_checkpoint,
    open_run_dir,
    plot_losses,
    read_metrics,
    result_from_summary,
    save_checkpoint,
    write_metrics,
)
from toolkit.train.tokens import IGNORE, Tokenized, end_of_turn_id, load_rows, prepare_tokenizer


def _mixed_precision(precision: str) -> str:
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def _reseed(seed: int, step: int, rank: int) -> None:
    """Dropout masks are a function of (seed, step, process): resuming at any step replays them exactly."""
    import torch

    torch.manual_seed(((seed * 1_000_003 + step) * 1009 + rank) % (2**63))


def _loss_sum(model, batch: dict):
    """(sum of token losses, number of label tokens): logits only where a label follows (the reply),
    so the 49k-wide output layer skips prompt and pad positions."""
    import torch.nn.functional as F

    labels = batch["labels"]
    keep = labels != IGNORE
    keep = keep.roll(-1, dims=1)  # position t predicts token t+1
    keep[:, -1] = False
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    targets = labels[:, 1:][keep[:, :-1]]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets, reduction="sum"), targets.numel()


def evaluate(model, rows: list[dict], collate: Collator, batch_size: int, rank: int = 0, world_size: int = 1,
             accelerator=None) -> float:
    """Mean token loss over `rows` (shared out over processes), batches sorted by length."""
    import torch

    was_training = model.training
    model.eval()
    mine = sorted(rows, key=lambda r: len(r["input_ids"]))[rank::world_size]
    total = torch.zeros(2, dtype=torch.float64)
    device = next(p.device for p in model.parameters())
    with torch.no_grad():
        for s in range(0, len(mine), batch_size):
            batch = {k: v.to(device) for k, v in collate(mine[s:s + batch_size]).items()}
            loss, n = _loss_sum(model, batch)
            total += torch.tensor([loss.item(), n], dtype=torch.float64)
    if accelerator is not None and world_size > 1:
        total = accelerator.reduce(total.to(accelerator.device), reduction="sum").cpu()
    model.train(was_training)
    return float(total[0] / max(total[1], 1))


def _total_steps(cfg: TrainConfig, per_epoch: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))


def run_training(cfg: TrainConfig, resume: bool = False, on_eval: Callable[[int, float], None] | None = None,
                 show_progress: bool = True) -> TrainResult:
    """Train a LoRA adapter as `cfg` says; `resume` continues from the run's last checkpoint.

    `on_eval(step, val_loss)` is called after each validation (the search uses it to prune trials).
    """
    from accelerate import Accelerator

    from toolkit.console import err

    cfg.validate()
    out = Path(cfg.out)
    precision = resolve_precision(cfg.precision)
    accelerator = Accelerator(mixed_precision=_mixed_precision(precision), cpu=device_kind() == "cpu")
    main = accelerator.is_main_process
    if resume and already_finished(out, cfg):
        if main:
            err.print(f"{out} already finished training; its adapter is {out / 'adapter'}")
        return result_from_summary(out)
    ckpts = open_run_dir(out, resume)
    train_set, val_set = _load_data(cfg, main)  # before the model: a bad file fails in a second
    model, tokenizer, resolved, new_ids = build_lora_model(cfg, accelerator, precision)
    if math.ceil(len(train_set.rows) / cfg.batch_size) < accelerator.num_processes:
        raise DataError(f"{len(train_set.rows)} usable rows make fewer batches than the {accelerator.num_processes} processes",
                        path=cfg.train_data, fix="use more data, a smaller --batch-size or fewer processes")
    order = DataOrder(train_set.lengths, cfg.batch_size, cfg.seed, cfg.group_by_length,
                      accelerator.process_index, accelerator.num_processes)
    total_steps = _total_steps(cfg, order.per_epoch)
    params, optimizer, scheduler = _optimizer(cfg, model, total_steps)
    # the scheduler stays outside prepare(): Accelerate would step it once per process
    model, optimizer = accelerator.prepare(model, optimizer)
    run = _Run(cfg, out, accelerator, model, accelerator.unwrap_model(model), tokenizer, optimizer, scheduler, params,
               train_set, val_set, order, total_steps, adapter_meta(cfg, resolved, tokenizer, new_ids), on_eval)
    run.restore(ckpts)
    return run.train(show_progress)


@dataclass
class _Run:
    """One training session: the loop, validation, checkpoints and the files it writes."""

    cfg: TrainConfig
    out: Path
    accelerator: Any
    model: Any  # as prepared by Accelerate (DDP-wrapped under several processes)
    unwrapped: Any
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    params: list
    train_set: Tokenized
    val_set: Tokenized | None
    order: DataOrder
    total_steps: int
    meta: dict
    on_eval: Callable[[int, float], None] | None
    start: int = 0
    losses: list = field(default_factory=list)
    val_losses: dict = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def restore(self, ckpts: list[Path]) -> None:
        """Load the last checkpoint (if any), keep the metrics up to it, write the resolved config."""
        from toolkit.console import err

        world = self.accelerator.num_processes
        if ckpts:
            state = load_checkpoint(ckpts[-1], self.unwrapped, self.optimizer, self.scheduler)
            if state.get("world_size", 1) != world:
                raise ConfigError(f"--resume: the run used {state.get('world_size')} processes, this one has {world}",
                                  fix="resume with the same number of processes")
            self.start = state["step"]
        rows = read_metrics(self.metrics_path, self.start) if ckpts else []
        self.losses = [r["loss"] for r in rows if "loss" in r]
        self.val_losses = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            # stop_after belongs to one session, not to the run: a re-run or resume goes to the end
            write_text(self.out / "config.yaml", self.cfg.replace(stop_after=0).to_yaml(
                f"Resolved config of this run. Resume with: toolkit train --out {self.out} --resume"))
            write_metrics(self.metrics_path, rows)
            if ckpts:
                err.print(f"resuming {self.out} from {ckpts[-1].name} (step {self.start} of {self.total_steps})")
        self.accelerator.wait_for_everyone()

    def validate(self, step: int) -> float | None:
        if self.val_set is None:
            return None
        acc = self.accelerator
        value = evaluate(self.unwrapped, self.val_set.rows, self.collate, self.cfg.batch_size * 2, acc.process_index,
                         acc.num_processes, acc)
        self.val_losses[step] = value
        if self.on_eval is not None:
            self.on_eval(step, value)
        return value

    @property
    def collate(self) -> Collator:
        pad = self.tokenizer.pad_token_id
        return Collator(pad if pad is not None else end_of_turn_id(self.tokenizer))

    def step(self, step: int) -> dict:
        """One optimizer step over `grad_accum` micro-batches; returns its metrics row."""
        import torch

        cfg, acc, world = self.cfg, self.accelerator, self.accelerator.num_processes
        t0 = time.perf_counter()
        _reseed(cfg.seed, step, acc.process_index)
        collate = self.collate
        batches = [collate([self.train_set.rows[i] for i in self.order.batch(step * cfg.grad_accum + j)])
                   for j in range(cfg.grad_accum)]
        counts = torch.tensor([sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches),
                               sum(int(b["attention_mask"].sum()) for b in batches),
                               sum(b["input_ids"].numel() for b in batches)], dtype=torch.float64)
        if world > 1:
            counts = acc.reduce(counts.to(acc.device), reduction="sum").cpu()
        n_labels = max(float(counts[0]), 1.0)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for j, batch in enumerate(batches):
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            with contextlib.nullcontext() if j == len(batches) - 1 else acc.no_sync(self.model):  # sync grads once
                loss, _ = _loss_sum(self.model, batch)
                # the mean over every label token of the whole step (all micro-batches, all
                # processes): DDP averages gradients over processes, hence `* world`
                acc.backward(loss * world / n_labels)
            loss_sum += loss.detach().double().cpu()
        grad_norm = acc.clip_grad_norm_(self.params, cfg.max_grad_norm) if cfg.max_grad_norm else None
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if world > 1:
            loss_sum = acc.reduce(loss_sum.to(acc.device), reduction="sum").cpu()
        seconds = time.perf_counter() - t0
        done = step + 1
        return {"step": done, "epoch": round(done * cfg.grad_accum / self.order.per_epoch, 3), "loss": float(loss_sum) / n_labels,
                "lr": lr, "grad_norm": float(grad_norm) if grad_norm is not None else None, "tokens": int(counts[1]),
                "tokens_per_s": round(float(counts[1]) / seconds, 2), "padded_tokens_per_s": round(float(counts[2]) / seconds, 2),
                "seconds": round(seconds, 3)}

    def checkpoint(self, done: int) -> None:
        cfg, per_epoch = self.cfg, self.order.per_epoch
        if self.main:
            micro = done * cfg.grad_accum
            state = {"step": done, "micro_batches": micro, "epoch": micro // per_epoch, "batch_in_epoch": micro % per_epoch,
                     "world_size": self.accelerator.num_processes, "seed": cfg.seed}
            save_checkpoint(self.out, done, self.unwrapped, self.tokenizer, self.optimizer, self.scheduler, state, self.meta,
                             cfg.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def train(self, show_progress: bool = True) -> TrainResult:
        from toolkit.console import progress

        cfg = self.cfg
        if self.start == 0 and self.val_set is not None:
            v0 = self.validate(0)
            if self.main:
                append_metric(self.metrics_path, {"step": 0, "val_loss": v0})
        stop = min(self.total_steps, cfg.stop_after) if cfg.stop_after else self.total_steps
        self.model.train()
        begin, useful, step_seconds = time.perf_counter(), 0, 0.0
        with (progress() if self.main and show_progress else contextlib.nullcontext()) as bar:
            task = bar.add_task("Training", total=self.total_steps, completed=self.start, info="") if bar else None
            for step in range(self.start, stop):
                row = self.step(step)
                useful, step_seconds = useful + row["tokens"], step_seconds + row["seconds"]
                self.losses.append(row["loss"])
                done = row["step"]
                if (cfg.eval_every and done % cfg.eval_every == 0) or done == self.total_steps:
                    row["val_loss"] = self.validate(done)
                if self.main:
                    append_metric(self.metrics_path, row)
                    if bar:
                        bar.update(task, completed=done, info=self.info(row))
                if ((cfg.save_every and done % cfg.save_every == 0) or done == cfg.stop_after) and done < self.total_steps:
                    self.checkpoint(done)
        seconds = time.perf_counter() - begin
        return self.finish(stop, seconds, useful, step_seconds)

    def info(self, row: dict) -> str:
        val = f" | val {self.val_losses[max(self.val_losses)]:.3f}" if self.val_losses else ""
        return f"loss {row['loss']:.3f}{val} | {row['tokens_per_s']:.0f} tok/s"

    def finish(self, steps: int, seconds: float, useful: int, step_seconds: float) -> TrainResult:
        """Save the adapter (when the run is complete), the loss curve and summary.json."""
        completed = steps >= self.total_steps
        adapter = None
        if self.main:
            if completed:
                adapter = save_adapter(self.unwrapped, self.tokenizer, self.out / "adapter", self.meta)
            plot_losses(read_metrics(self.metrics_path, steps), self.out / "loss.png")
            val = self.val_losses
            write_json(self.out / "summary.json", {
                "completed": completed, "steps": steps, "total_steps": self.total_steps,
                "val_loss_start": val.get(0), "val_loss_end": val[max(val)] if val else None,
                "final_loss": self.losses[-1] if self.losses else None,
                "tokens_per_s": round(useful / seconds, 2) if seconds else None,  # incl. validation and checkpoints
                "train_tokens_per_s": round(useful / step_seconds, 2) if step_seconds else None,
                "seconds": round(seconds, 1), "adapter": str(adapter) if adapter else None,
                "train_rows": len(self.train_set.rows), "processes": self.accelerator.num_processes,
                "device": str(self.accelerator.device), "precision": resolve_precision(self.cfg.precision)})
        self.accelerator.wait_for_everyone()
        return TrainResult(self.out, adapter, steps, self.total_steps, list(self.losses), dict(self.val_losses),
                           useful / seconds if seconds else 0.0, seconds, completed, self.main)


def _load_data(cfg: TrainConfig, main: bool) -> tuple[Tokenized, Tokenized | None]:
    from transformers import AutoTokenizer

    from toolkit.console import err

    tokenizer = AutoTokenizer.from_pretrained(resolve(cfg.model).require_hf())
    prepare_tokenizer(tokenizer, cfg.format)
    train_set = load_rows(tokenizer, cfg.train_data, cfg)
    val_set = load_rows(tokenizer, cfg.validation_data, cfg, "validation") if cfg.validation_data else None
    if main and (train_set.empty or train_set.too_long or train_set.truncated):
        err.print(f"[yellow]{cfg.train_data}: {len(train_set.rows)} rows used; skipped {train_set.empty} with an empty response "
                  f"and {train_set.too_long} whose prompt fills max_length; {train_set.truncated} replies cut at "
                  f"max_length={cfg.max_length}[/]")
    return train_set, val_set


def _optimizer(cfg: TrainConfig, model, total_steps: int):
    import torch
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = {"constant": "constant_with_warmup"}.get(cfg.lr_scheduler, cfg.lr_scheduler)
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=round(cfg.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    return params, optimizer, scheduler
