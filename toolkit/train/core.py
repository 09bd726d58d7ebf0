"""`toolkit train`: LoRA / QLoRA supervised fine-tuning, and `toolkit train search` over LoRA settings.

The pieces, each usable on its own:

* `TrainConfig`: every option, with defaults from the seed study; loadable from YAML (a file or a
  recipe name from `toolkit/recipes/`), written resolved into the run directory.
* `tokenize_example`: an `Example` -> `(input_ids, labels)` in the model's chat template or the
  tagged `<problem>..</problem><approach>..</approach>` format; the loss sees only the response and
  the end-of-turn token (masked by position, because this model's pad token *is* its EOS).
* `Collator`, `DataOrder`: dynamic padding and seeded length-grouped batches (what makes training
  ~2x faster than padding to max length), a pure function of (seed, position) so resuming replays
  the exact order.
* `load_for_training`: the base model in fp32 (or bf16 on a GPU that has it), or 4-bit NF4 for QLoRA.
* `run_training`: a plain loop on `accelerate.Accelerator`: CUDA/MPS when present, DDP under
  `accelerate launch` / `torchrun` with no code change; only the main process writes.

Run directory: config.yaml (resolved), adapter/ (PEFT adapter + tokenizer + toolkit-adapter.json),
checkpoints/step-NNNNNN/, metrics.jsonl, loss.png, summary.json.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import inspect
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from toolkit.errors import ConfigError, DataError, ModelError
from toolkit.io import atomic_dir, save_figure, write_json, write_text

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE = "lora-chat"
TAGS = ("<problem>", "</problem>", "<approach>", "</approach>")
ADAPTER_META = "toolkit-adapter.json"
IGNORE = -100  # label value the loss skips
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>")  # first one in the vocab closes a turn
# The tagged format as a chat template, so the same tokenization path serves both formats and the
# merged model (and its GGUF) prompts itself correctly: user -> <problem>..</problem>, the
# generation prompt opens <approach>, an assistant turn ends with </approach> and EOS.
TAGGED_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{ '<problem>' + message['content'] + '</problem>\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '<approach>' + message['content'] + '</approach>' + eos_token }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<approach>' }}{%- endif -%}"
)
# Options that may differ when resuming: they do not change what is trained.
RESUME_MAY_CHANGE = frozenset({"stop_after", "save_every", "keep_checkpoints", "eval_every"})


# ---------------------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """Everything a training run needs; defaults are the seed study's (LoRA r=8, alpha=16, ...)."""

    model: str = "smollm2"
    """Base model: embedded name (smollm2), local HF directory or .gguf (dequantized to fp32 once)."""
    train_data: str = "data/built/train.jsonl"
    """Training examples: a built split (toolkit data build), QA CSV/JSONL or chat JSONL."""
    validation_data: str = "data/built/validation.jsonl"
    """Held-out examples for the validation loss ('' = none)."""
    out: str = "runs/train"
    """Run directory: config.yaml, adapter/, checkpoints/, metrics.jsonl, loss.png."""
    format: Literal["chat", "tagged"] = "chat"
    """Prompt format: the model's chat template, or <problem>..</problem><approach>..</approach> with added tokens."""
    system: str = ""
    """System prompt for the chat format ('' = whatever the chat template does by default)."""
    r: int = 8
    """LoRA rank."""
    alpha: int = 16
    """LoRA alpha (the update is scaled by alpha/r)."""
    dropout: float = 0.05
    """LoRA dropout."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"])
    """Module names LoRA adapts."""
    lr: float = 1e-4
    """Peak learning rate (AdamW)."""
    batch_size: int = 2
    """Examples per micro-batch (per process)."""
    grad_accum: int = 2
    """Micro-batches per optimizer step."""
    max_length: int = 512
    """Longest tokenized example; longer responses are cut (and lose their end-of-turn token)."""
    max_steps: int = 0
    """Optimizer steps to run (0 = use epochs)."""
    epochs: float = 3.0
    """Passes over the training data when max_steps is 0."""
    warmup_ratio: float = 0.03
    """Fraction of the steps spent warming the learning rate up from 0."""
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate decay after warmup."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm to this (0 = no clipping)."""
    seed: int = 0
    """Seed for LoRA init, data order and dropout: same seed, same data -> same losses."""
    eval_every: int = 50
    """Validation loss every N steps (also at step 0 and at the end; 0 = only those)."""
    save_every: int = 100
    """Checkpoint every N steps for --resume (0 = no checkpoints)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    group_by_length: bool = True
    """Batch examples of similar length together (seeded), so little compute goes to padding."""
    qlora: bool = False
    """Load the base in 4-bit NF4 (bitsandbytes) and train LoRA on top."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% slower (for 1-7B bases)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto = bf16 on a GPU that supports it (else fp16), fp32 on CPU and Apple MPS."""
    stop_after: int = 0
    """Stop after this many steps as if interrupted, keeping a checkpoint for --resume (0 = run to the end)."""

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


def field_docs(cls: type = TrainConfig) -> dict[str, str]:
    """Each field's docstring (the string literal under it), read from the source."""
    try:
        tree = ast.parse(inspect.cleandoc("\n" + inspect.getsource(cls)))
    except (OSError, TypeError):  # no source (frozen app): the help loses its per-option text, nothing else
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = str(after.value.value)  # type: ignore[union-attr]
    return docs


def _hint(name: str) -> Any:
    import typing

    return typing.get_type_hints(TrainConfig)[name]


def _default(name: str) -> Any:
    f = FIELDS[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]


def coerce(name: str, value: Any) -> Any:
    """`value` as field `name`'s type (YAML reads `1e-4` as a string; the CLI gives lists) or a ConfigError."""
    import typing

    if name not in FIELDS:
        raise ConfigError(f"unknown option {name!r}", fix=f"valid options: {', '.join(FIELDS)}")
    hint = _hint(name)
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
    """A YAML file path, or a bare recipe name (`lora-tagged`) from toolkit/recipes/."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    bundled = RECIPES_DIR / f"{Path(str(name)).stem}.yaml"
    if path.suffix == "" and os.sep not in str(name) and bundled.is_file():
        return bundled
    recipes = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise ConfigError(f"config {name!s} not found", fix=f"pass a YAML file or a recipe name: {recipes}")


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


# ------------------------------------------------------------------------------------ tokenizing


def end_of_turn_id(tokenizer) -> int:
    """The token that ends an assistant turn: the template's end-of-turn token, else EOS."""
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN:
        if token in vocab:
            return vocab[token]
    if tokenizer.eos_token_id is None:
        raise ModelError("the tokenizer has no EOS or end-of-turn token", fix="use a chat/instruct model")
    return tokenizer.eos_token_id


def prepare_tokenizer(tokenizer, fmt: str) -> list[int]:
    """Set the tokenizer up for `fmt`; for `tagged`, add the tag tokens and the tagged chat template.

    Returns the ids of the tokens added to the vocabulary (empty when none were new).
    """
    if fmt == "chat":
        if not tokenizer.chat_template:
            raise ModelError("this model's tokenizer has no chat template", fix="use --format tagged, or an instruct model")
        return []
    if fmt != "tagged":
        raise ConfigError(f"unknown format {fmt!r}", fix="use chat or tagged")
    before = len(tokenizer)
    tokenizer.add_tokens(list(TAGS), special_tokens=True)
    tokenizer.chat_template = TAGGED_TEMPLATE
    return list(range(before, len(tokenizer)))


def messages_for(example, fmt: str, system: str = "") -> list[dict]:
    """The conversation to train on: [system] + user prompt + assistant response (or a chat example's turns)."""
    meta = getattr(example, "meta", None) or {}
    messages = meta.get("messages")
    if not (isinstance(messages, list) and messages and messages[-1].get("role") == "assistant"):
        messages = [{"role": "user", "content": example.prompt}, {"role": "assistant", "content": example.response}]
    messages = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
    if fmt == "chat" and system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}] + messages
    if fmt == "tagged":
        messages = [m for m in messages if m["role"] != "system"]  # the tagged format has no system turn
    return messages


def render(tokenizer, messages: list[dict]) -> tuple[str, str]:
    """(prompt text up to the assistant's reply, full text) through the tokenizer's chat template."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ModelError("the chat template renders a reply that does not start with its generation prompt",
                         fix="use --format tagged, or a model whose template appends the reply")
    return prompt, full


def tokenize_example(tokenizer, example, fmt: str = "chat", max_length: int = 512, system: str = "") -> tuple[list[int], list[int]]:
    """`(input_ids, labels)` for one example: labels are -100 on the prompt, the reply's tokens and its
    end-of-turn token after it; anything the template adds after end-of-turn (a newline) is dropped.

    Prompt and reply are tokenized separately, exactly as at inference time, where the prompt is
    tokenized alone and the model writes the rest. An example longer than `max_length` keeps its
    prompt and loses the end of its reply; one whose prompt alone fills `max_length` has no labels.
    """
    if fmt == "tagged" and TAGS[0] not in tokenizer.get_vocab():
        raise ModelError("the tokenizer has no tag tokens", fix="call prepare_tokenizer(tokenizer, 'tagged') first")
    prompt, full = render(tokenizer, messages_for(example, fmt, system))
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    eot = end_of_turn_id(tokenizer)
    if eot in reply_ids:  # keep through the last end-of-turn token: it is what teaches the model to stop
        reply_ids = reply_ids[: len(reply_ids) - reply_ids[::-1].index(eot)]
    input_ids = (prompt_ids + reply_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + reply_ids)[:max_length]
    return input_ids, labels


@dataclass
class Tokenized:
    """A tokenized dataset and what was left out of it."""

    rows: list[dict]
    truncated: int = 0
    empty: int = 0
    too_long: int = 0

    @property
    def lengths(self) -> list[int]:
        return [len(r["input_ids"]) for r in self.rows]


def tokenize_dataset(tokenizer, examples: Sequence, cfg: TrainConfig, path: str | os.PathLike) -> Tokenized:
    """Tokenize `examples`; a DataError names the file when no row is usable."""
    from toolkit.console import track

    data = Tokenized([])
    eot = end_of_turn_id(tokenizer)
    # a bar only where tokenizing takes noticeable time (a Kaggle-sized split: minutes)
    for ex in track(examples, f"Tokenizing {Path(path).name}") if len(examples) > 5000 else examples:
        if not str(ex.response).strip():
            data.empty += 1
            continue
        input_ids, labels = tokenize_example(tokenizer, ex, cfg.format, cfg.max_length, cfg.system)
        if all(label == IGNORE for label in labels):
            data.too_long += 1
            continue
        data.truncated += labels[-1] != eot
        data.rows.append({"id": ex.id, "input_ids": input_ids, "labels": labels})
    if not data.rows:
        why = []
        if data.empty:
            why.append(f"{data.empty} with an empty response")
        if data.too_long:
            why.append(f"{data.too_long} whose prompt fills max_length={cfg.max_length}")
        raise DataError(f"no usable rows ({', '.join(why) or 'the file has no examples'})", path=path,
                        fix="each row needs a prompt and a non-empty response (built split: prompt/response; QA: question/answer)")
    return data


def load_rows(tokenizer, path: str | os.PathLike, cfg: TrainConfig, role: str = "train") -> Tokenized:
    from toolkit.data.records.records import load_examples

    if not Path(path).exists():
        fix = ("build the splits with `toolkit data build data/sample/abstracts.jsonl`, or pass --train-data FILE" if role == "train"
               else "pass --validation-data FILE, or --validation-data '' to train without validation")
        raise DataError(f"{role} file not found", path=path, fix=fix)
    return tokenize_dataset(tokenizer, load_examples(Path(path)), cfg, path)


# ------------------------------------------------------------------------------ batches and order


@dataclass
class Collator:
    """Pad a list of rows to the longest one: pad id in inputs, -100 in labels, 0 in the attention mask.

    Padding is by position, never by token id: this tokenizer's pad token is also its end-of-turn
    token, which must stay a label.
    """

    pad_id: int

    def __call__(self, rows: Sequence[dict]) -> dict:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True) -> list[list[int]]:
    """One epoch's batches of example indices: a seeded shuffle; with grouping, each window of
    16 batches is sorted by length before being cut into batches, and the batches are shuffled again.
    The batch holding the longest example goes first, so running out of memory happens at once.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = batch_size * 16
        order = [i for s in range(0, len(order), window)
                 for i in sorted(order[s:s + window], key=lambda i: -lengths[i])]
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
        longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
        batches.insert(0, batches.pop(longest))
    return batches


@dataclass
class DataOrder:
    """The stream of micro-batches a process trains on: a pure function of (seed, position), so a
    resumed run continues with exactly the batches an uninterrupted run would have seen.

    With several processes, each epoch's batches are dealt round-robin; every process gets the same
    number (the remainder is dropped), so none waits on the others at an epoch boundary.
    """

    lengths: list[int]
    batch_size: int
    seed: int
    group_by_length: bool = True
    rank: int = 0
    world_size: int = 1
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def per_epoch(self) -> int:
        """Micro-batches per epoch for one process."""
        return max(1, math.ceil(len(self.lengths) / self.batch_size) // self.world_size)

    def epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._cache:
            batches = epoch_batches(self.lengths, self.batch_size, self.seed, epoch, self.group_by_length)
            if self.world_size > 1:
                batches = batches[self.rank::self.world_size]
            self._cache = {epoch: batches[: self.per_epoch]}  # one epoch at a time is all a run needs
        return self._cache[epoch]

    def batch(self, position: int) -> list[int]:
        """The indices of this process's micro-batch number `position` (counting across epochs)."""
        return self.epoch(position // self.per_epoch)[position % self.per_epoch]


# ------------------------------------------------------------------------------------- the model


def _device_kind() -> str:
    """cuda, mps or cpu: what Accelerator will pick (`accelerate launch --cpu` forces cpu)."""
    import torch

    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in {"1", "true", "yes"}:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_precision(precision: str) -> str:
    """`auto` -> bf16 on a CUDA GPU that supports it, fp16 on an older one, fp32 on CPU and MPS."""
    import torch

    if precision != "auto":
        return precision
    if _device_kind() == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def load_for_training(model_spec: str = "smollm2", qlora: bool = False, fmt: str = "chat", precision: str = "fp32",
                      device_map: Any = None):
    """(model, tokenizer, ResolvedModel): the base ready for PEFT.

    Full precision: weights in fp32 (bf16/fp16 on GPUs, where the frozen base needs half the memory;
    LoRA weights stay fp32). QLoRA: Linear layers in 4-bit NF4 through bitsandbytes, which also runs
    on CPU. For `tagged`, the tag tokens are added, the embeddings resized and each new row set to
    the mean embedding of the tokens its text was split into before (`<problem>` ~ "<", "problem", ">").
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.models import resolve

    resolved = resolve(model_spec)
    hf_dir = resolved.require_hf()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    old_vocab = len(tokenizer)
    fresh = prepare_tokenizer(tokenizer, fmt)  # empty when the base already has the tags (trained before)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if qlora:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = device_map or {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(hf_dir, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load {hf_dir} for training: {str(exc).splitlines()[0]}",
                         fix="pass an HF causal-LM directory or an embedded name") from None
    if fresh:
        _add_token_rows(model, tokenizer, fresh, old_vocab)
    return model, tokenizer, resolved


def added_token_ids(tokenizer, fmt: str) -> list[int]:
    """Ids of the tokens the format adds (the tags), which must be trained and saved with the adapter."""
    return [tokenizer.convert_tokens_to_ids(t) for t in TAGS] if fmt == "tagged" else []


def _add_token_rows(model, tokenizer, new_ids: list[int], old_vocab: int) -> None:
    import torch

    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:  # some models already have spare rows
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        for tid in new_ids:
            pieces = [i for i in tokenizer(tokenizer.convert_ids_to_tokens(tid), add_special_tokens=False, split_special_tokens=True)["input_ids"]
                      if i < old_vocab]
            emb[tid] = emb[pieces].mean(0) if pieces else emb[:old_vocab].mean(0)
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.data_ptr():  # untied head: start the same way
            for tid in new_ids:
                out.weight[tid] = out.weight[:old_vocab].mean(0)


def linear_module_names(model) -> list[str]:
    """The distinct last-name parts of the model's Linear layers (what target_modules can name)."""
    import torch

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__.startswith("Linear"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def check_target_modules(model, targets: Sequence[str]) -> None:
    available = linear_module_names(model)
    for target in targets:
        if target not in available:
            raise ConfigError(f"target module {target!r} is not in this model",
                              fix=f"available: {', '.join(n for n in available if n != 'lm_head')}")


def base_identity(hf_dir: str | os.PathLike) -> dict:
    """What identifies a base model: a hash of its config (minus bookkeeping keys), its vocab size
    and a hash of one weight tensor, so an adapter is never merged into a different model."""
    hf_dir = Path(hf_dir)
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    volatile = {"transformers_version", "_name_or_path", "_model_name_or_path", "dtype", "torch_dtype", "use_cache",
                "quantization_config", "vocab_size", "architectures"}
    canon = json.dumps({k: v for k, v in config.items() if k not in volatile}, sort_keys=True)
    tensor, digest = _tensor_digest(hf_dir)
    return {"config_sha256": hashlib.sha256(canon.encode()).hexdigest(), "vocab_size": config.get("vocab_size"),
            "tensor": tensor, "tensor_sha256": digest}


def _tensor_digest(hf_dir: Path) -> tuple[str | None, str | None]:
    from safetensors import safe_open

    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
    elif (hf_dir / "model.safetensors").exists():
        with safe_open(hf_dir / "model.safetensors", framework="pt") as f:
            weight_map = {k: "model.safetensors" for k in f.keys()}
    else:
        return None, None
    names = sorted(weight_map)
    name = next((n for n in names if n.endswith("layers.0.self_attn.q_proj.weight")), names[0])
    with safe_open(hf_dir / weight_map[name], framework="pt") as f:
        t = f.get_tensor(name)
    return name, hashlib.sha256(t.float().contiguous().numpy().tobytes()).hexdigest()


def same_base(recorded: dict, actual: dict) -> bool:
    keys = [k for k in ("config_sha256", "tensor_sha256") if recorded.get(k) and actual.get(k)]
    return bool(keys) and all(recorded[k] == actual[k] for k in keys) and recorded.get("vocab_size") == actual.get("vocab_size")


# ---------------------------------------------------------------------------------- the training


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

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


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


def _checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("step-*")) if (out / "checkpoints").is_dir() else []


def _trainable_state(model) -> dict:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(model, tokenizer, dest: Path, meta: dict) -> Path:
    """Write the PEFT adapter, its tokenizer (with any added tokens and the format's chat template)
    and toolkit-adapter.json atomically into `dest`."""
    import warnings

    with atomic_dir(dest) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PEFT's notes on resized embeddings: the new rows are saved as trainable tokens
            # save_embedding_layers=False: the trained rows of added tokens are stored as trainable tokens;
            # the full 49k-row matrices would add 200+ MB for nothing.
            model.save_pretrained(tmp, save_embedding_layers=False)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / ADAPTER_META, meta)
        (tmp / "README.md").unlink(missing_ok=True)  # PEFT's empty model card template
    return dest


def _save_checkpoint(out: Path, step: int, model, tokenizer, optimizer, scheduler, state: dict, meta: dict, keep: int) -> None:
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
    for old in _checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(ckpt: Path, model, optimizer, scheduler) -> dict:
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


def _read_metrics(path: Path, upto: int) -> list[dict]:
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
    accelerator = Accelerator(mixed_precision=_mixed_precision(precision), cpu=_device_kind() == "cpu")
    main = accelerator.is_main_process
    if resume and _finished(out, cfg):
        if main:
            err.print(f"{out} already finished training; its adapter is {out / 'adapter'}")
        return _result_from_summary(out)
    ckpts = _open_run_dir(out, cfg, resume)
    train_set, val_set = _load_data(cfg, main)  # before the model: a bad file fails in a second
    model, tokenizer, resolved, new_ids = _build_model(cfg, accelerator, precision)
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
            state = _load_checkpoint(ckpts[-1], self.unwrapped, self.optimizer, self.scheduler)
            if state.get("world_size", 1) != world:
                raise ConfigError(f"--resume: the run used {state.get('world_size')} processes, this one has {world}",
                                  fix="resume with the same number of processes")
            self.start = state["step"]
        rows = _read_metrics(self.metrics_path, self.start) if ckpts else []
        self.losses = [r["loss"] for r in rows if "loss" in r]
        self.val_losses = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            # stop_after belongs to one session, not to the run: a re-run or resume goes to the end
            write_text(self.out / "config.yaml", self.cfg.replace(stop_after=0).to_yaml(
                f"Resolved config of this run. Resume with: toolkit train --out {self.out} --resume"))
            _write_metrics(self.metrics_path, rows)
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
            _save_checkpoint(self.out, done, self.unwrapped, self.tokenizer, self.optimizer, self.scheduler, state, self.meta,
                             cfg.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def train(self, show_progress: bool = True) -> TrainResult:
        from toolkit.console import progress

        cfg = self.cfg
        if self.start == 0 and self.val_set is not None:
            v0 = self.validate(0)
            if self.main:
                _append_metric(self.metrics_path, {"step": 0, "val_loss": v0})
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
                    _append_metric(self.metrics_path, row)
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
            plot_losses(_read_metrics(self.metrics_path, steps), self.out / "loss.png")
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


def _finished(out: Path, cfg: TrainConfig) -> bool:
    """A resumed run that already reached its end (after checking the options match the run's)."""
    _check_resume_config(out, cfg)
    summary = out / "summary.json"
    return summary.exists() and bool(json.loads(summary.read_text()).get("completed"))


def _open_run_dir(out: Path, cfg: TrainConfig, resume: bool) -> list[Path]:
    """The checkpoints to resume from; refuses to start over an existing run without --resume."""
    if resume:
        return _checkpoints(out)
    if (out / "config.yaml").exists() or _checkpoints(out) or (out / "adapter").exists():
        raise ConfigError(f"{out} already holds a training run", fix="pass --resume to continue it, or a new --out")
    return []


def _load_data(cfg: TrainConfig, main: bool) -> tuple[Tokenized, Tokenized | None]:
    from transformers import AutoTokenizer

    from toolkit.console import err
    from toolkit.models import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve(cfg.model).require_hf())
    prepare_tokenizer(tokenizer, cfg.format)
    train_set = load_rows(tokenizer, cfg.train_data, cfg)
    val_set = load_rows(tokenizer, cfg.validation_data, cfg, "validation") if cfg.validation_data else None
    if main and (train_set.empty or train_set.too_long or train_set.truncated):
        err.print(f"[yellow]{cfg.train_data}: {len(train_set.rows)} rows used; skipped {train_set.empty} with an empty response "
                  f"and {train_set.too_long} whose prompt fills max_length; {train_set.truncated} replies cut at "
                  f"max_length={cfg.max_length}[/]")
    return train_set, val_set


def _build_model(cfg: TrainConfig, accelerator, precision: str):
    """(PEFT model, tokenizer, ResolvedModel, ids of added tokens)."""
    from accelerate.utils import set_seed
    from peft import LoraConfig, get_peft_model

    device_map = {"": accelerator.device} if cfg.qlora and accelerator.device.type != "cpu" else None
    model, tokenizer, resolved = load_for_training(cfg.model, cfg.qlora, cfg.format, precision, device_map)
    check_target_modules(model, cfg.target_modules)
    new_ids = added_token_ids(tokenizer, cfg.format)
    if cfg.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
    set_seed(cfg.seed)  # LoRA's A matrices are drawn here
    # added tokens: PEFT trainable tokens train (and save) just their rows, tied lm_head included
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
                      task_type="CAUSAL_LM", trainable_token_indices={"embed_tokens": new_ids} if new_ids else None)
    return get_peft_model(model, lora), tokenizer, resolved, new_ids


def _optimizer(cfg: TrainConfig, model, total_steps: int):
    import torch
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = {"constant": "constant_with_warmup"}.get(cfg.lr_scheduler, cfg.lr_scheduler)
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=round(cfg.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    return params, optimizer, scheduler


def adapter_meta(cfg: TrainConfig, resolved, tokenizer, new_ids: list[int]) -> dict:
    """toolkit-adapter.json: the base's identity (merge refuses another base) and how to prompt."""
    from toolkit import __version__

    stops = [tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer))]
    if cfg.format == "tagged":
        stops.append(TAGS[3])
    return {
        "toolkit_version": __version__,
        "base": {"spec": cfg.model, "name": resolved.name, "hf_dir": str(resolved.hf_dir), **base_identity(resolved.require_hf())},
        "format": cfg.format,
        "system": cfg.system,
        "added_tokens": {tokenizer.convert_ids_to_tokens(i): i for i in new_ids},
        "stop": stops,
        "qlora": cfg.qlora,
        "lora": {"r": cfg.r, "alpha": cfg.alpha, "dropout": cfg.dropout, "target_modules": list(cfg.target_modules)},
    }


def _append_metric(path: Path, row: dict) -> None:
    # one write() per whole line: a kill leaves at most one cut line, which readers skip
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def _write_metrics(path: Path, rows: list[dict]) -> None:
    from toolkit.io import write_jsonl

    write_jsonl(path, rows)


def _result_from_summary(out: Path) -> TrainResult:
    summary = json.loads((out / "summary.json").read_text())
    rows = _read_metrics(out / "metrics.jsonl", summary["steps"])
    return TrainResult(out, Path(summary["adapter"]) if summary.get("adapter") else None, summary["steps"], summary["total_steps"],
                       [r["loss"] for r in rows if "loss" in r], {r["step"]: r["val_loss"] for r in rows if "val_loss" in r},
                       summary.get("tokens_per_s") or 0.0, summary.get("seconds") or 0.0, True)


# ---------------------------------------------------------------------------------- the commands


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
    resume: bool = False,
) -> TrainResult:
    options = {k: v for k, v in locals().items() if k in FIELDS}
    cfg_file = config
    if resume and not config:
        saved = Path(out or _default("out")) / "config.yaml"
        cfg_file = str(saved) if saved.exists() else None  # `--out DIR --resume` continues with the run's own options
    cfg = load_config(cfg_file, **options)
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

Several GPUs or machines (data parallel, no code change):
  accelerate launch --num_processes 2 -m toolkit train --config lora-chat
  torchrun --nproc_per_node 2 -m toolkit train --config lora-chat"""


def _command_doc(intro: str, extra: dict[str, str]) -> str:
    docs = field_docs()
    lines = [intro, "", "Args:"]
    for name, text in extra.items():
        lines.append(f"    {name}: {text}")
    for name in FIELDS:
        default = _default(name)
        shown = ",".join(default) if isinstance(default, list) else default
        lines.append(f"    {name}: {docs.get(name, '')} (default: {shown!s})" if shown != "" else f"    {name}: {docs.get(name, '')}")
    return "\n".join(lines)


def _recipe_names() -> str:
    return ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if p.stem != "search-space"))


train.__doc__ = _command_doc(_TRAIN_INTRO.format(recipes=_recipe_names()), {
    "config": "YAML config file or recipe name; options given here override it.",
}) + "\n    resume: continue OUT from its last checkpoint, with the same data order (options as the run's config.yaml)."


# ------------------------------------------------------------------------------------- the search


SEARCHABLE = ("lr", "r", "alpha", "dropout", "weight_decay", "warmup_ratio", "batch_size", "grad_accum", "lr_scheduler", "max_grad_norm")


@dataclass
class Dimension:
    """One searched option: numeric range [low, high] (log-uniform with log: true) or a list of choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        if _hint(self.name) is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log, step=self.step)


def load_space(spec: str | os.PathLike) -> list[Dimension]:
    """The search space from YAML: `option: {low, high, log?, step?}` or `option: {choices: [...]}`."""
    path = recipe_path(spec)
    raw = read_yaml(path)
    if not raw:
        raise ConfigError(f"{path}: the search space is empty", fix="name options to search, e.g. lr: {low: 1.0e-5, high: 1.0e-3, log: true}")
    dims = []
    for name, body in raw.items():
        if name not in SEARCHABLE:
            raise ConfigError(f"{path}: {name!r} cannot be searched", fix=f"searchable options: {', '.join(SEARCHABLE)}")
        if isinstance(body, list):
            body = {"choices": body}
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: {name} must be {{low, high[, log]}} or {{choices: [...]}}", fix="see toolkit/recipes/search-space.yaml")
        unknown = set(body) - {"low", "high", "log", "step", "choices"}
        if unknown:
            raise ConfigError(f"{path}: {name}: unknown key {sorted(unknown)[0]!r}", fix="valid keys: low, high, log, step, choices")
        if "choices" in body:
            if not isinstance(body["choices"], list) or not body["choices"]:
                raise ConfigError(f"{path}: {name}: choices must be a non-empty list", fix="e.g. choices: [4, 8, 16]")
            dims.append(Dimension(name, choices=[coerce(name, c) for c in body["choices"]]))
            continue
        if "low" not in body or "high" not in body:
            raise ConfigError(f"{path}: {name} needs low and high (or choices)", fix=f"e.g. {name}: {{low: 1.0e-5, high: 1.0e-3, log: true}}")
        low, high = float(coerce(name, body["low"])), float(coerce(name, body["high"]))
        if not low < high or (body.get("log") and low <= 0):
            raise ConfigError(f"{path}: {name}: need low < high (and low > 0 with log: true)", fix="fix the bounds")
        dims.append(Dimension(name, low, high, bool(body.get("log", False)), float(body["step"]) if body.get("step") else None))
    return dims


def search(
    space: str = "search-space",
    config: str | None = None,
    trials: int = 8,
    trial_steps: int = 30,
    eval_every: int = 10,
    out: str = "runs/search",
    study: str = "lora",
    seed: int = 0,
    model: str | None = None,
    train_data: str | None = None,
    validation_data: str | None = None,
    max_length: int | None = None,
) -> dict:
    """Search LoRA settings (lr, r, alpha, dropout, ...) with Optuna; write the best as a train config.

    Each trial is a short `toolkit train` run on the base config with sampled values; its objective
    is the final validation loss, and trials whose intermediate validation losses trail the median
    are pruned. The study lives in OUT/study.db (SQLite): re-running continues it up to --trials
    finished trials without losing any. The best trial's settings, with the base config's full step
    budget, go to OUT/best.yaml, ready for `toolkit train --config OUT/best.yaml`.

    Args:
        space: YAML search space (file or recipe name): option: {low, high, log} or {choices: [...]}.
        config: base train config (YAML file or recipe name); its values fill everything not searched.
        trials: finished trials (complete or pruned) the study should hold when done.
        trial_steps: optimizer steps per trial.
        eval_every: validation loss (reported to the pruner) every N steps of a trial.
        out: search directory: study.db, trials/, best.yaml.
        study: study name inside study.db.
        seed: seed of the sampler and of every trial's training.
        model: base model (overrides the config).
        train_data: training examples (overrides the config).
        validation_data: validation examples, the objective (overrides the config).
        max_length: longest tokenized example (overrides the config).
    """
    import optuna

    from toolkit.console import err

    dims = load_space(space)
    base = load_config(config, model=model, train_data=train_data, validation_data=validation_data, max_length=max_length, seed=seed)
    if not base.validation_data:
        raise ConfigError("the search needs validation data (its objective)", fix="pass --validation-data FILE")
    if trial_steps < 1 or trials < 1 or eval_every < 1:
        raise ConfigError("trials, trial_steps and eval_every must be >= 1", fix="pass positive values")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(root / 'study.db').resolve()}")
    study_obj = optuna.create_study(
        study_name=study, storage=storage, direction="minimize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, trials)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=eval_every))
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for stale in study_obj.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # left RUNNING by a killed search (one search per study at a time): it will never finish
        storage.set_trial_state_values(stale._trial_id, optuna.trial.TrialState.FAIL)
    done = len(study_obj.get_trials(deepcopy=False, states=finished_states))
    if done:
        err.print(f"study {study!r} in {root / 'study.db'} already has {done} finished trials")

    def objective(trial: optuna.Trial) -> float:
        values = {d.name: d.suggest(trial) for d in dims}
        run_dir = root / "trials" / f"trial-{trial.number:04d}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a trial cut short by a kill is redone, not resumed
        cfg = base.replace(**values, out=str(run_dir), max_steps=trial_steps, eval_every=eval_every, save_every=0, stop_after=0)
        err.print(f"[bold]trial {trial.number}[/]: " + ", ".join(f"{k}={_fmt(v)}" for k, v in values.items()))
        trial.set_user_attr("run_dir", str(run_dir))

        def report(step: int, val_loss: float) -> None:
            if step == 0:
                return
            trial.report(val_loss, step)
            if trial.should_prune():
                err.print(f"  trial {trial.number} pruned at step {step} (val loss {val_loss:.4f})")
                raise optuna.TrialPruned()

        result = run_training(cfg, on_eval=report, show_progress=True)
        final = result.val_losses[max(result.val_losses)]
        err.print(f"  trial {trial.number}: val loss {final:.4f}")
        return final

    remaining = trials - done
    if remaining > 0:
        study_obj.optimize(objective, n_trials=remaining, catch=())
    return _write_best(study_obj, base, root, trials)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _write_best(study_obj, base: TrainConfig, root: Path, trials: int) -> dict:
    import optuna

    from toolkit.console import out as stdout

    complete = study_obj.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    all_trials = study_obj.get_trials(deepcopy=False)
    if not complete:
        raise ConfigError(f"no trial of study {study_obj.study_name!r} completed (all pruned or failed)",
                          fix="run more --trials or widen the space")
    best = study_obj.best_trial
    cfg = base.replace(**best.params, out=str(root / "best"))
    header = (f"Best of {len(complete)} completed trials (study {study_obj.study_name!r} in {root / 'study.db'}):\n"
              f"trial {best.number}, validation loss {best.value:.4f}.\n"
              f"Train it with: toolkit train --config {root / 'best.yaml'}")
    write_text(root / "best.yaml", cfg.to_yaml(header))
    for t in sorted(all_trials, key=lambda t: t.number):
        state = t.state.name.lower()
        value = f"{t.value:.4f}" if t.value is not None else "-"
        stdout.print(f"trial {t.number:>3}  {state:<8}  val {value:<8}  " + ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items()),
                     highlight=False)
    stdout.print(f"best: trial {best.number} (val loss {best.value:.4f}) -> {root / 'best.yaml'}", highlight=False)
    return {"best_trial": best.number, "best_value": best.value, "params": dict(best.params), "best_config": str(root / "best.yaml"),
            "trials": len(all_trials), "complete": len(complete)}


__all__ = [
    "TrainConfig", "TrainResult", "Tokenized", "Collator", "DataOrder", "Dimension", "TAGS", "TAGGED_TEMPLATE", "ADAPTER_META",
    "load_config", "recipe_path", "coerce", "field_docs", "prepare_tokenizer", "messages_for", "render", "tokenize_example",
    "tokenize_dataset", "end_of_turn_id", "epoch_batches", "load_for_training", "linear_module_names", "check_target_modules",
    "base_identity", "same_base", "save_adapter", "plot_losses", "evaluate", "run_training", "train", "search", "load_space",
    "added_token_ids", "load_rows", "adapter_meta", "resolve_precision",
]
