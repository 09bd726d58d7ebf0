"""PARAMETER values typed as Ollama's `api.FormatParams` types them: whole numbers, float32 numbers,
Go's bool spellings, and stop strings collected into a list."""

from __future__ import annotations

import re
import struct

from toolkit.params import OLLAMA_OPTION_TYPES

_FLOAT32_MAX = 3.4028234663852886e38
_GO_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)")
_GO_BOOL = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
            "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


def _float32(value: float) -> float:
    """Round to float32 and back to the shortest decimal, as Go's JSON encodes a float32."""
    f32 = struct.unpack("f", struct.pack("f", value))[0]
    for digits in range(1, 10):
        text = f"{f32:.{digits}g}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == f32:
            return float(text)
    return f32


def parse_value(name: str, raw: str) -> object:
    """Type one PARAMETER value like `api.FormatParams`; raise ValueError with Ollama's text."""
    kind = OLLAMA_OPTION_TYPES[name]
    if kind is list:
        return [raw]
    if kind is bool:
        if raw not in _GO_BOOL:
            raise ValueError(f"invalid bool value [{raw}]")
        return _GO_BOOL[raw]
    if kind is int:
        if not re.fullmatch(r"[+-]?[0-9]+", raw) or not -2**63 <= int(raw) < 2**63:
            raise ValueError(f"invalid int value [{raw}]")
        return int(raw)
    # Go also accepts inf/nan here, but such a value cannot be sent as JSON, so we refuse it.
    if not _GO_FLOAT.fullmatch(raw) or abs(float(raw)) > _FLOAT32_MAX * (1 + 2**-25):
        raise ValueError(f"invalid float value [{raw}]")
    return _float32(float(raw))


# How our messages name each type ("must be a whole number").
TYPE_WORDS = {int: "a whole number", float: "a number", bool: "true or false", list: "a string"}
