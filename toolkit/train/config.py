"""The options of a training run: `TrainConfig`, with defaults from the seed study, loadable from
YAML (a file or a recipe name from this package's `recipes/`), and written resolved into the run
directory. Every field's `option()` text is its `--help` line; `TrainOverrides` is the same fields
as options of `toolkit train` (None = not given), which go on top of a recipe or YAML file.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from toolkit.errors import ConfigError
from toolkit.options import default_of, option, overrides

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


@dataclass
class TrainConfig:
    """Everything a training run needs; defaults are the seed study's (LoRA r=8, alpha=16, ...)."""

    model: str = option("smollm2", "Base model: embedded name (smollm2), local HF directory or .gguf (dequantized to fp32 once).")
    train_data: str = option("data/built/train.jsonl", "Training examples: a built split (toolkit data build), QA CSV/JSONL or chat JSONL.")
    validation_data: str = option("data/built/validation.jsonl", "Held-out examples for the validation loss ('' = none).")
    out: str = option("runs/train", "Run directory: config.yaml, adapter/, checkpoints/, metrics.jsonl, loss.png.")
    format: Literal["chat", "tagged"] = option("chat", "Prompt format: the model's chat template, or <problem>..</problem><approach>..</approach> with added tokens.")
    system: str = option("", "System prompt for the chat format ('' = whatever the chat template does by default).")
    r: int = option(8, "LoRA rank.")
    alpha: int = option(16, "LoRA alpha (the update is scaled by alpha/r).")
    dropout: float = option(0.05, "LoRA dropout.")
    target_modules: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"], "Module names LoRA adapts.")
    lr: float = option(1e-4, "Peak learning rate (AdamW).")
    batch_size: int = option(2, "Examples per micro-batch (per process).")
    grad_accum: int = option(2, "Micro-batches per optimizer step.")
    max_length: int = option(512, "Longest tokenized example; longer responses are cut (and lose their end-of-turn token).")
    max_steps: int = option(0, "Optimizer steps to run (0 = use epochs).")
    epochs: float = option(3.0, "Passes over the training data when max_steps is 0.")
    warmup_ratio: float = option(0.03, "Fraction of the steps spent warming the learning rate up from 0.")
    lr_scheduler: Literal["linear", "cosine", "constant"] = option("linear", "Learning-rate decay after warmup.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    max_grad_norm: float = option(1.0, "Clip the gradient norm to this (0 = no clipping).")
    seed: int = option(0, "Seed for LoRA init, data order and dropout: same seed, same data -> same losses.")
    eval_every: int = option(50, "Validation loss every N steps (also at step 0 and at the end; 0 = only those).")
    save_every: int = option(100, "Checkpoint every N steps for --resume (0 = no checkpoints).")
    keep_checkpoints: int = option(2, "How many of the newest checkpoints to keep.")
    group_by_length: bool = option(True, "Batch examples of similar length together (seeded), so little compute goes to padding.")
    qlora: bool = option(False, "Load the base in 4-bit NF4 (bitsandbytes) and train LoRA on top.")
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass: less memory, ~30% slower (for 1-7B bases).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option("auto", "auto = bf16 on a GPU that supports it (else fp16), fp32 on CPU and Apple MPS.")
    stop_after: int = option(0, "Stop after this many steps as if interrupted, keeping a checkpoint for --resume (0 = run to the end).")
    method: Literal["sft", "dpo", "simpo"] = option("sft", "sft: prompt/response; dpo: preference pairs vs the starting model "
                                                           "(--model: SFT run, adapter or merged); simpo: reference-free.")
    beta: float = option(0.1, "dpo/simpo: how far the policy may move from the reference (DPO's beta, IPO's tau, SimPO's reward scale).")
    loss_type: Literal["sigmoid", "ipo", "robust", "hinge"] = option("sigmoid", "dpo loss: sigmoid (DPO), ipo, robust (label-smoothed, "
                                                                                "for noisy labels: set label_smoothing) or hinge.")
    label_smoothing: float = option(0.0, "robust loss: assumed share of pairs whose labels are flipped, in [0, 0.5) (the paper suggests 0.1).")
    simpo_gamma: float = option(0.5, "simpo: target reward margin (gamma).")
    precompute_ref: bool = option(True, "dpo: compute the reference log-probs once before training, so each step runs one model, not two.")
    skip_bad: bool = option(False, "Preference data: skip bad rows and count them, instead of stopping before training with the first few listed.")
    prompt_col: str = option("prompt", "Preference data: the field holding the prompt (as `data check --prompt-col`; common names are recognised).")
    chosen_col: str = option("chosen", "Preference data: the field holding the chosen reply.")
    rejected_col: str = option("rejected", "Preference data: the field holding the rejected reply.")

    def validate(self) -> TrainConfig:
        """Raise a one-line ConfigError for a value out of range."""
        checks = [
            (self.r >= 1, "r", "must be >= 1"), (self.alpha >= 1, "alpha", "must be >= 1"),
            (0 <= self.dropout < 1, "dropout", "must be in [0, 1)"), (self.lr > 0, "lr", "must be > 0"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"), (self.grad_accum >= 1, "grad_accum", "must be >= 1"),
            (self.max_length >= 16, "max_length", "must be >= 16"), (self.max_steps >= 0, "max_steps", "must be >= 0"),
            (self.max_steps > 0 or self.epochs > 0, "epochs", "must be > 0 when max_steps is 0"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"), (self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0"),
            (self.eval_every >= 0, "eval_every", "must be >= 0"), (self.save_every >= 0, "save_every", "must be >= 0"),
            (self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1"), (self.stop_after >= 0, "stop_after", "must be >= 0"),
            (bool(self.target_modules), "target_modules", "needs at least one module name"),
            (self.beta > 0, "beta", "must be > 0"), (0 <= self.label_smoothing < 0.5, "label_smoothing", "must be in [0, 0.5)"),
            (self.simpo_gamma >= 0, "simpo_gamma", "must be >= 0"),
            (bool(str(self.train_data)), "train_data", "is required"),
        ]
        for ok, name, what in checks:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r} {what}", fix=f"set a valid --{name.replace('_', '-')}")
        return self

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **{k: coerce(k, v) for k, v in changes.items()})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_yaml(self, header: str = "") -> str:
        import yaml

        body = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        return "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + body


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
TrainOverrides = overrides(TrainConfig, "TrainOverrides", """training options (the ones given override --config)

    `TrainConfig`'s fields as `toolkit train`'s options: None = not given (the config's value, else the default).""")


def field_type(name: str) -> Any:
    """The type hint of field `name` (`int`, `float`, `Literal[...]`, ...)."""
    import typing

    return typing.get_type_hints(TrainConfig)[name]


def field_default(name: str) -> Any:
    """Field `name`'s default value (a fresh list for list fields)."""
    return default_of(FIELDS[name])


def coerce(name: str, value: Any) -> Any:
    """`value` as field `name`'s type (YAML reads `1e-4` as a string; the CLI gives lists) or a ConfigError."""
    import typing

    if name not in FIELDS:
        raise ConfigError(f"unknown option {name!r}", fix=f"valid options: {', '.join(FIELDS)}")
    hint = field_type(name)
    bad = ConfigError(f"{name}: {value!r} is not a valid {getattr(hint, '__name__', str(hint))}", fix=f"check the value of {name}")
    if typing.get_origin(hint) is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, typing.get_args(hint)))}", fix=f"set {name} to one of them")
        return value
    if typing.get_origin(hint) is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in items):
            raise bad
        return [v.strip() for v in items]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.lower() in {"true", "yes", "1"}
        raise bad
    if hint in (int, float):
        if isinstance(value, bool):
            raise bad
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if hint is int:
            if not number.is_integer():
                raise bad
            return int(number)
        return number
    if value is None:
        raise bad
    return str(value)


def recipe_path(name: str | os.PathLike) -> Path:
    """A YAML file path, or a bare recipe name (`lora-tagged`) from this package's recipes/."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    bundled = RECIPES_DIR / f"{Path(str(name)).stem}.yaml"
    if path.suffix == "" and os.sep not in str(name) and bundled.is_file():
        return bundled
    recipes = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise ConfigError(f"config {name!s} not found", fix=f"pass a YAML file or a recipe name: {recipes}")


def recipe_names() -> str:
    """The bundled train recipes, comma-separated (the search space is not one)."""
    return ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if p.stem != "search-space"))


def read_yaml(path: Path) -> dict:
    """A YAML mapping (empty file = {}), or a one-line ConfigError."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', None) or type(exc).__name__})",
                          fix="fix the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value", fix="write one `option: value` per line")
    return data


def load_config(config: str | os.PathLike | None = None, **overrides: Any) -> TrainConfig:
    """TrainConfig from defaults < YAML file or recipe < overrides (None values are ignored)."""
    values: dict[str, Any] = {}
    if config:
        path = recipe_path(config)
        raw = read_yaml(path)
        unknown = [k for k in raw if k not in FIELDS]
        if unknown:
            raise ConfigError(f"{path}: unknown key {unknown[0]!r}", fix=f"valid keys: {', '.join(FIELDS)}")
        values.update({k: coerce(k, v) for k, v in raw.items()})
    values.update({k: coerce(k, v) for k, v in overrides.items() if v is not None})
    return TrainConfig(**values).validate()
