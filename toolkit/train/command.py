"""`toolkit train`: the command, a thin layer over `run_training`. Its options are `TrainConfig`'s
fields, and its `--help` is built from their docstrings and defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from toolkit.train.config import FIELDS, field_default, field_docs, load_config, recipe_names
from toolkit.train.loop import run_training
from toolkit.train.rundir import TrainResult


def train(
    config: str | None = None,
    model: str | None = None,
    train_data: str | None = None,
    validation_data: str | None = None,
    out: str | None = None,
    format: Literal["chat", "tagged"] | None = None,
    system: str | None = None,
    r: int | None = None,
    alpha: int | None = None,
    dropout: float | None = None,
    target_modules: list[str] | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    grad_accum: int | None = None,
    max_length: int | None = None,
    max_steps: int | None = None,
    epochs: float | None = None,
    warmup_ratio: float | None = None,
    lr_scheduler: Literal["linear", "cosine", "constant"] | None = None,
    weight_decay: float | None = None,
    max_grad_norm: float | None = None,
    seed: int | None = None,
    eval_every: int | None = None,
    save_every: int | None = None,
    keep_checkpoints: int | None = None,
    group_by_length: bool | None = None,
    qlora: bool | None = None,
    gradient_checkpointing: bool | None = None,
    precision: Literal["auto", "fp32", "bf16", "fp16"] | None = None,
    stop_after: int | None = None,
    method: Literal["sft", "dpo", "simpo"] | None = None,
    beta: float | None = None,
    loss_type: Literal["sigmoid", "ipo", "robust", "hinge"] | None = None,
    label_smoothing: float | None = None,
    simpo_gamma: float | None = None,
    precompute_ref: bool | None = None,
    skip_bad: bool | None = None,
    prompt_col: str | None = None,
    chosen_col: str | None = None,
    rejected_col: str | None = None,
    resume: bool = False,
) -> TrainResult:
    options = {k: v for k, v in locals().items() if k in FIELDS}
    cfg_file = config
    if resume and not config:
        saved = Path(out or field_default("out")) / "config.yaml"
        cfg_file = str(saved) if saved.exists() else None  # `--out DIR --resume` continues with the run's own options
    cfg = load_config(cfg_file, **options)
    if cfg.method != "sft":  # preference tuning runs on TRL's trainers (toolkit/train/dpo.py)
        from toolkit.train.dpo import run_preference

        result = run_preference(cfg, resume=resume)
    else:
        result = run_training(cfg, resume=resume)
    _print_result(result)
    return result


def _print_result(result: TrainResult) -> None:
    from toolkit.console import out as stdout

    val = result.val_losses
    if not result.is_main:
        return
    if not result.completed:
        stdout.print(f"stopped at step {result.steps}/{result.total_steps}; continue with --resume (run dir {result.out})")
        return
    line = f"adapter {result.adapter}  ({result.steps} steps, {result.seconds:.0f}s, {result.tokens_per_s:.0f} tok/s)"
    if val:
        line += f"\nvalidation loss {val.get(0, float('nan')):.4f} at step 0 -> {val[max(val)]:.4f} at step {max(val)}"
    stdout.print(line, highlight=False, soft_wrap=True)


_TRAIN_INTRO = """Fine-tune a LoRA adapter (or QLoRA with --qlora) on prompt/response examples.

Writes OUT/config.yaml (resolved), OUT/adapter (PEFT adapter + tokenizer), OUT/metrics.jsonl
(step, loss, lr, tokens/s, validation loss), OUT/loss.png and checkpoints for --resume. Uses a
GPU (CUDA or Apple MPS) when there is one. Options override --config; --config takes a YAML file
or a recipe name ({recipes}).

Preference tuning (--method dpo, after SFT): --model is the SFT run (its adapter is merged into
OUT/start, the reference policy) and --train-data/--validation-data hold preference pairs (TRL
prompt/chosen/rejected, ShareGPT preference or Anthropic HH; `toolkit data prefs` makes them). A
fresh LoRA is trained with TRL's DPOTrainer; OUT/eval.csv and OUT/dpo.png hold the rewards table.
  toolkit train --config dpo-cpu --model runs/lora-chat --train-data prefs/train.jsonl

Several GPUs or machines (data parallel, no code change):
  accelerate launch --num_processes 2 -m toolkit train --config lora-chat
  torchrun --nproc_per_node 2 -m toolkit train --config lora-chat"""


def _command_doc(intro: str, extra: dict[str, str]) -> str:
    docs = field_docs()
    lines = [intro, "", "Args:"]
    for name, text in extra.items():
        lines.append(f"    {name}: {text}")
    for name in FIELDS:
        default = field_default(name)
        shown = ",".join(default) if isinstance(default, list) else default
        lines.append(f"    {name}: {docs.get(name, '')} (default: {shown!s})" if shown != "" else f"    {name}: {docs.get(name, '')}")
    return "\n".join(lines)


train.__doc__ = _command_doc(_TRAIN_INTRO.format(recipes=recipe_names()), {
    "config": "YAML config file or recipe name; options given here override it.",
}) + "\n    resume: continue OUT from its last checkpoint, with the same data order (options as the run's config.yaml)."
