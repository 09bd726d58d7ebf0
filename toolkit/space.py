"""Search spaces for Optuna: one `Dimension` per searched parameter, read from YAML by `parse_space`.

Shared by `toolkit sweep` (decoding parameters) and `toolkit train search` (training
hyperparameters), so both accept the same entries and name mistakes the same way:

    name: {low: L, high: H[, step: S][, log: true]}    a range (log-uniform with log: true)
    name: {values: [...]}  (or choices: [...], or a bare list)    a list of choices
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from toolkit.errors import ConfigError

_KEYS = ("low", "high", "step", "log", "values", "choices")


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: a range (low, high, optional step, log) or a list of choices.

    Attributes:
        integer: suggest whole numbers (Optuna's suggest_int) instead of floats.
        decimals: round a suggested float to this many places (None: as Optuna gives it).
    """

    name: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list | None = None
    integer: bool = False
    decimals: int | None = None

    def suggest(self, trial) -> Any:
        """This dimension's value for an Optuna trial."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        value = trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        # a stepped float arrives as 0.7000000000000001
        return value if self.decimals is None else round(value, self.decimals)

    def largest(self) -> Any:
        return max(self.choices) if self.choices is not None else self.high

    def grid(self) -> list:
        """Every value of this dimension (a grid needs choices or a step)."""
        if self.choices is not None:
            return list(self.choices)
        if self.step is None:
            raise ConfigError(f"space.{self.name}: a grid needs `values` or a `step`")
        n = int(round((self.high - self.low) / self.step)) + 1
        values = [round(self.low + i * self.step, 10) for i in range(n)]
        return [int(v) for v in values] if self.integer else values


def parse_space(raw: Any, *, where: str, types: Mapping[str, type], decimals: int | None = None,
                valid_hint: str = "", check: Callable[..., None] | None = None, key: str = "space") -> dict[str, Dimension]:
    """Validate a space mapping; every mistake is a one-line ConfigError naming `where` and the field.

    Args:
        raw: the mapping read from YAML (parameter name -> range or choices).
        where: the file (or other source) the mapping came from; messages start with it.
        types: the searchable names and their types: int (whole numbers), float, or str (choices only).
        decimals: places a suggested float is rounded to.
        valid_hint: the fix shown for an unknown name (default: the searchable names).
        check: `check(name, value, where=prefix)` raises a ConfigError for a value out of its bounds.
        key: the YAML key the mapping sits under (a sweep file's `space`), or "" when the whole file
            is the space (training search): messages name the field as the user wrote it.
    """
    if not isinstance(raw, dict) or not raw:
        example = next(iter(types), "name")
        what = f"`{key}` must map parameter names to ranges" if key else "the search space is empty: it must map names to ranges"
        raise ConfigError(f"{where}: {what}", fix=f"e.g. {example}: {{low: L, high: H}} or {example}: {{values: [...]}}")
    dims = {}
    for name, spec in raw.items():
        field_where = f"{where}: {key}.{name}" if key else f"{where}: {name}"
        if name not in types:
            raise ConfigError(f"{field_where}: unknown parameter {name!r} (it cannot be searched)", fix=valid_hint or f"searchable: {', '.join(types)}")
        if isinstance(spec, list):
            spec = {"values": spec}
        if not isinstance(spec, dict):
            raise ConfigError(f"{field_where} must be {{low, high[, step, log]}} or {{values: [...]}}")
        bad = sorted(set(spec) - set(_KEYS))
        if bad:
            raise ConfigError(f"{field_where}: unknown key {bad[0]!r}", fix="use low, high, step, log, values or choices")
        if "values" in spec and "choices" in spec:
            raise ConfigError(f"{field_where}: give values or choices, not both")
        if "values" in spec or "choices" in spec:
            dims[name] = _choices(name, spec, field_where, types[name], check)
        else:
            dims[name] = _range(name, spec, field_where, types[name], decimals, check)
    return dims


def _choices(name: str, spec: dict, where: str, kind: type, check) -> Dimension:
    key = "values" if "values" in spec else "choices"
    values = spec[key]
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}.{key} must be a non-empty list")
    if kind is str:
        for v in values:
            if not isinstance(v, str):
                raise ConfigError(f"{where}.{key}: {v!r} is not a string")
            if check is not None:
                check(name, v, where=f"{where}: ")
        return Dimension(name, choices=list(values))
    if kind not in (int, float):
        return Dimension(name, choices=list(values))
    numbers = []
    for v in values:
        v = _number(v, f"{where}.{key}: {v!r} is not a number")
        if kind is int and float(v) != int(v):
            raise ConfigError(f"{where}: {name} takes whole numbers")
        if check is not None:
            check(name, v, where=f"{where}: ")
        numbers.append(v)
    return Dimension(name, choices=numbers, integer=kind is int)


def _range(name: str, spec: dict, where: str, kind: type, decimals: int | None, check) -> Dimension:
    if kind not in (int, float):
        raise ConfigError(f"{where}: {name} is not a number: list its values", fix=f"e.g. {name}: {{values: [...]}}")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where} needs both low and high (or values)")
    low, high, step = (None if spec.get(k) is None else _number(spec[k], f"{where}.{k} must be a number, got {spec[k]!r}")
                       for k in ("low", "high", "step"))
    if check is not None:
        check(name, low, where=f"{where}.low: ")
        check(name, high, where=f"{where}.high: ")
    if low >= high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high}): need low < high")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}.step must be positive, got {step}")
    if kind is int and any(v is not None and float(v) != int(v) for v in (low, high, step)):
        raise ConfigError(f"{where}: {name} takes whole numbers")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"{where}: log needs low above 0, got {low}")
    if log and step is not None and not (kind is int and step == 1):  # Optuna's rule
        raise ConfigError(f"{where}: log and step do not go together", fix="drop one of them")
    integer = kind is int
    return Dimension(name, float(low), float(high), step, log, integer=integer, decimals=None if integer else decimals)


def _number(value: Any, message: str) -> float:
    """A YAML number; also a numeric string, as YAML 1.1 reads `1e-5` (no dot) as a string."""
    if isinstance(value, str):
        try:
            value = int(value) if value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            raise ConfigError(message) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(message)
    if isinstance(value, float) and not math.isfinite(value):  # .nan and .inf are YAML numbers too
        raise ConfigError(f"{message} (numbers must be finite)")
    return value
