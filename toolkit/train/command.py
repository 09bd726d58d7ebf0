"""`toolkit train`: the command, a thin layer over `run_training`. Its options are `TrainConfig`'s
fields (`TrainOverrides`: the CLI lists one option per field, with the field's help and default).
"""

from __future__ import annotations

from pathlib import Path

from toolkit.train.config import TrainOverrides, field_default, load_config, recipe_names
from toolkit.train.dpo import run_preference
from toolkit.train.loop import run_training
from toolkit.train.rundir import TrainResult


def train(config: str | None = None, options: TrainOverrides = TrainOverrides(), resume: bool = False) -> TrainResult:
    """Fine-tune a LoRA adapter (or QLoRA with --qlora) on prompt/response examples.

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
      torchrun --nproc_per_node 2 -m toolkit train --config lora-chat

    Args:
        config: YAML config file or recipe name; options given here override it.
        resume: continue OUT from its last checkpoint, with the same data order (options as the run's config.yaml).
    """
    cfg_file = config
    if resume and not config:
        saved = Path(options.out or field_default("out")) / "config.yaml"
        cfg_file = str(saved) if saved.exists() else None  # `--out DIR --resume` continues with the run's own options
    cfg = load_config(cfg_file, **options.given())
    if cfg.method != "sft":  # preference tuning runs on TRL's trainers (toolkit/train/dpo.py)

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


# the recipes are read from the package, so the list in --help cannot go stale
train.__doc__ = (train.__doc__ or "").replace("{recipes}", recipe_names())
