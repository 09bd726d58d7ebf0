"""Decoding parameters: one validated definition for every place that needs them.

`DecodingParams` is the CLI's generation options (`--temperature` ...), the sweep's search space
bounds, the llama.cpp call arguments, the Ollama `options` and the OpenAI request body. Each field's
`Spec` holds its bounds, help and its name in each backend, so the mappings cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import ConfigError


@dataclass(frozen=True)
class Spec:
    """Bounds and names of one decoding parameter."""

    type: type
    low: float
    high: float
    help: str
    ollama: str | None
    openai: str | None
    llamacpp: str | None
    low_open: bool = False  # True: the value must be strictly above `low`


SPECS: dict[str, Spec] = {
    "temperature": Spec(float, 0.0, 2.0, "sampling temperature; 0 is greedy", "temperature", "temperature", "temperature"),
    "top_p": Spec(float, 0.0, 1.0, "nucleus sampling: keep the smallest token set with this much probability", "top_p", "top_p", "top_p", low_open=True),
    "top_k": Spec(int, 0, 1000, "keep only the k most likely tokens (0 = all)", "top_k", "top_k", "top_k"),
    "min_p": Spec(float, 0.0, 1.0, "drop tokens below this fraction of the top token's probability", "min_p", "min_p", "min_p"),
    "max_tokens": Spec(int, 1, 32768, "most tokens to generate", "num_predict", "max_tokens", "max_tokens"),
    "repeat_penalty": Spec(float, 0.5, 2.0, "penalty for repeating recent tokens (1 = none)", "repeat_penalty", "repeat_penalty", "repeat_penalty"),
    "seed": Spec(int, 0, 2**31 - 1, "sampling seed: same seed, same text", "seed", "seed", "seed"),
    "num_ctx": Spec(int, 128, 131072, "context window in tokens", "num_ctx", None, None),
}
# Ollama's options (api.Options + api.Runner JSON tags) and their Go kinds: what a request's
# `options`, a Modelfile PARAMETER and `api.FormatParams` accept. Read by the Modelfile parser and
# the server's option checks alike.
OLLAMA_OPTION_TYPES: dict[str, type] = {
    "num_keep": int, "seed": int, "num_predict": int, "top_k": int, "top_p": float,
    "min_p": float, "typical_p": float, "repeat_last_n": int, "temperature": float,
    "repeat_penalty": float, "presence_penalty": float, "frequency_penalty": float,
    "stop": list, "num_ctx": int, "num_batch": int, "num_gpu": int, "main_gpu": int,
    "use_mmap": bool, "num_thread": int, "draft_num_predict": int,
}
SWEEPABLE = ("temperature", "top_p", "top_k", "min_p", "max_tokens", "repeat_penalty")


@dataclass(frozen=True)
class DecodingParams:
    """How to decode: validated on creation, mapped to each backend by the `to_*` methods."""

    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.0
    max_tokens: int = 256
    repeat_penalty: float = 1.1
    seed: int = 42
    num_ctx: int = 2048
    stop: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for name, spec in SPECS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name} must be a number, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):  # NaN passes every bound check
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
            if spec.type is int and isinstance(value, float) and not value.is_integer():
                raise ConfigError(f"{name} must be a whole number, got {value!r}")
            object.__setattr__(self, name, spec.type(value))
            check_bounds(name, value)
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ConfigError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "parameters") -> DecodingParams:
        """Build from a mapping (YAML, JSON, CLI), naming any unknown key and the valid ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown decoding parameter {unknown[0]!r}", fix=f"valid: {', '.join(sorted(known))}")
        return cls(**values)

    @classmethod
    def from_ollama_options(cls, options: dict[str, Any], base: DecodingParams | None = None) -> DecodingParams:
        """The inverse of `to_ollama_options`; Ollama options we do not model are ignored, as Ollama does."""
        names = {spec.ollama: name for name, spec in SPECS.items() if spec.ollama}
        values = {names[k]: v for k, v in options.items() if k in names and v is not None}
        if options.get("num_predict") is not None and options["num_predict"] < 0:
            values.pop("max_tokens")  # -1 means "until the context is full"; keep our bound
        if options.get("stop"):
            values["stop"] = tuple(options["stop"])
        return (base or cls()).replace(**values)

    @classmethod
    def from_openai(cls, body: dict[str, Any], base: DecodingParams | None = None) -> DecodingParams:
        """The inverse of `to_openai` (also accepts `max_completion_tokens` and a string `stop`)."""
        names = {spec.openai: name for name, spec in SPECS.items() if spec.openai}
        values = {names[k]: v for k, v in body.items() if k in names and v is not None}
        if body.get("max_completion_tokens") is not None:
            values["max_tokens"] = body["max_completion_tokens"]
        stop = body.get("stop")
        if stop:
            values["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        return (base or cls()).replace(**values)

    def replace(self, **changes: Any) -> DecodingParams:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["stop"] = list(self.stop)
        return data

    def to_llamacpp(self) -> dict[str, Any]:
        """Keyword arguments for llama-cpp-python's `create_completion`/`create_chat_completion`."""
        args = {spec.llamacpp: getattr(self, name) for name, spec in SPECS.items() if spec.llamacpp}
        args["stop"] = list(self.stop)
        return args

    def to_ollama_options(self) -> dict[str, Any]:
        """Ollama `options`: every field sent explicitly, so server defaults never leak in."""
        options = {spec.ollama: getattr(self, name) for name, spec in SPECS.items() if spec.ollama}
        if self.stop:
            options["stop"] = list(self.stop)
        return options

    def to_openai(self) -> dict[str, Any]:
        """An OpenAI-compatible request body's sampling fields (llama.cpp's server reads the extras)."""
        body = {spec.openai: getattr(self, name) for name, spec in SPECS.items() if spec.openai}
        if self.stop:
            body["stop"] = list(self.stop)
        return body


def check_bounds(name: str, value: float, *, where: str = "") -> None:
    """Raise a one-line ConfigError if `value` is outside the parameter's valid range."""
    if name not in SPECS:
        raise ConfigError(f"{where}unknown decoding parameter {name!r}", fix=f"valid: {', '.join(SPECS)}")
    spec = SPECS[name]
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}{name}={value} is not a finite number")
    too_low = value <= spec.low if spec.low_open else value < spec.low
    if too_low or value > spec.high:
        low = f"({spec.low}" if spec.low_open else f"[{spec.low}"
        raise ConfigError(f"{where}{name}={value} is outside its valid range {low}, {spec.high}]")


DEFAULTS = DecodingParams()


def load_parameters(path: Path, base: DecodingParams | None = None) -> DecodingParams:
    """Decoding parameters from a YAML file (a mapping, or a `parameters:` key holding one); the
    file's values go on top of `base` (default: the toolkit's defaults). A file that cannot be read,
    is not a mapping, or names an unknown or out-of-range parameter raises a one-line ConfigError."""
    import yaml  # lazy: every command module imports params.py, and `--help` must not pay for YAML

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read YAML ({exc.__class__.__name__})", fix="check the file") from None
    data = data.get("parameters", data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of decoding parameters")
    parsed = DecodingParams.from_dict(data, where=str(path))  # names and ranges checked here
    return parsed if base is None else base.replace(**{k: getattr(parsed, k) for k in data})
