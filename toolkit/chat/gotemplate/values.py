"""Go values as a template sees them: structs (`GoStruct`), Ollama's JSON-printing maps, Go truth,
and printing them as fmt's %v and encoding/json do (Go's float formatting included)."""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

from toolkit.chat.gotemplate.errors import TemplateError


class GoStruct(dict):
    """A Go struct value: fields by Go name; `json_names` keeps the JSON tags in field order.

    Unlike a map it is always true in `if`, and a missing field is an error, not a zero value.
    `stringer` marks Ollama types whose String() method prints them as JSON (Tool, ToolFunction).
    """

    def __init__(self, type_name: str, fields: list[tuple[str, str, Any]], stringer: bool = False):
        super().__init__((go, value) for go, _, value in fields)
        self.type_name = type_name
        self.json_names = [(go, tag) for go, tag, _ in fields]
        self.stringer = stringer


class JSONMap(dict):
    """A Go map type with a String() method that prints JSON (ToolCallFunctionArguments)."""


def truth(value: Any) -> bool:
    """Go template truth: zero values, nil and empty containers are false; structs are true."""
    if isinstance(value, GoStruct):
        return True
    if value is None:
        return False
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) > 0
    if isinstance(value, (bool, int, float)):
        return value != 0
    return True


def type_name(value: Any) -> str:
    if isinstance(value, GoStruct):
        return value.type_name
    return {bool: "bool", int: "int", float: "float64", str: "string", list: "[]interface {}",
            dict: "map[string]interface {}", JSONMap: "api.ToolCallFunctionArguments"}.get(type(value), type(value).__name__)


def _shortest(value: float) -> tuple[str, int]:
    """Shortest round-trip digits of |value| and the decimal exponent of the first digit."""
    _, digits, exponent = Decimal(repr(abs(value))).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    return text, len(digits) + exponent - 1


def _float_text(value: float, use_exponent: bool) -> str:
    """Go's shortest formatting ('f' or 'e' with precision -1)."""
    if not use_exponent:
        text = format(Decimal(repr(value)), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    digits, exp = _shortest(value)
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{'-' if value < 0 else ''}{mantissa}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"


def go_float(value: float) -> str:
    """fmt %v of a float64: %g with the shortest digits, exponent below 1e-4 or from 1e21."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    exp = _shortest(value)[1]
    return _float_text(value, not -4 <= exp < 21)


def _json_float(value: float) -> str:
    """encoding/json of a float64: 'e' below 1e-6 or from 1e21, with e-07 shortened to e-7."""
    if not math.isfinite(value):
        raise TemplateError(f"json: unsupported value: {go_float(value)}")
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    text = _float_text(value, abs(value) < 1e-6 or abs(value) >= 1e21)
    return re.sub(r"e-0(\d)$", r"e-\1", text)


def go_print(value: Any, top: bool = False) -> str:
    """A value as text/template prints it (fmt %v, Ollama's String() methods)."""
    if value is None:
        return "<no value>" if top else "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, GoStruct):
        if value.stringer:
            return go_json(value)
        return "{" + " ".join(go_print(v) for v in value.values()) + "}"
    if isinstance(value, JSONMap):
        return go_json(value)
    if isinstance(value, dict):
        return "map[" + " ".join(f"{go_print(k)}:{go_print(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_print(v) for v in value) + "]"
    return str(value)


def _json_empty(value: Any) -> bool:
    """Go's omitempty: false, 0, "", nil and empty slices/maps (never a struct)."""
    if value is None or isinstance(value, GoStruct):
        return value is None
    if isinstance(value, (bool, int, float)):
        return value == 0
    return isinstance(value, (str, list, tuple, dict)) and len(value) == 0


def go_json(value: Any) -> str:
    """encoding/json.Marshal: struct fields in order with omitempty, sorted map keys,
    HTML-safe escaping and Go's float formatting."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _json_float(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                        ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
            text = text.replace(ch, esc)
        return text
    if isinstance(value, GoStruct):
        parts = []
        for go_name, tag in value.json_names:
            name, _, opt = tag.partition(",")
            item = value[go_name]
            if opt == "omitempty" and _json_empty(item):
                continue
            parts.append(f"{go_json(name)}:{go_json(item)}")
        return "{" + ",".join(parts) + "}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{go_json(str(k))}:{go_json(value[k])}" for k in sorted(value, key=str)) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    raise TemplateError(f"json: unsupported type {type(value).__name__}")
