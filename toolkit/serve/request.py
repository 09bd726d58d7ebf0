"""Requests and replies of `toolkit serve`: body parsing, field type checks and option mapping.

Bodies are checked field by field with Go's decoder messages, so clients see what Ollama would
say. Ollama `options` and OpenAI sampling fields become `DecodingParams` (`ollama_params`,
`openai_params`), so the bounds and names are the ones the rest of the toolkit uses; `format` and
`response_format` become llama.cpp grammars. Routes answer with a dict (one JSON object), a
`Reply` or a `Stream`, or raise `HTTPError`.

Bodies are read as Go's decoder reads them where Python's `json` is laxer: `NaN` and `Infinity` are
not JSON, a number past float64's range does not fit any field, and a lone UTF-16 surrogate escape
(`"\\ud800"`) becomes U+FFFD, as Go's decoder replaces it (Ollama then runs the request; so do we).
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from toolkit.params import OLLAMA_OPTION_TYPES, SPECS, DecodingParams


class HTTPError(Exception):
    """A reply with a non-2xx status and `{"error": message}` (the /v1 routes wrap it OpenAI's way)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Cancelled(Exception):
    """The client went away: the request's work stops and nothing is sent."""


@dataclass(eq=False)  # compared and hashed by identity: the HTTP layer keeps a set of running ones
class Request:
    method: str
    path: str
    body: bytes | bytearray
    started: float  # perf_counter() when the request arrived: total_duration counts from here
    # set by the HTTP layer when the client leaves; generation checks it between decode steps
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"


@dataclass
class Stream:
    items: Iterator[Any]  # dicts (one JSON object each) or the string "[DONE]" for SSE
    sse: bool = False  # False: NDJSON (Ollama); True: server-sent events (OpenAI)
    named: bool = False  # SSE events named by an `event:` line, the item's `type` (the Responses API)


# ----------------------------------------------------------------------------------------------
# Request bodies, with Go's messages
# ----------------------------------------------------------------------------------------------

Check = tuple[str, Callable[[Any], bool]]


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _list_of(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(test(x) for x in v)


STR: Check = ("string", lambda v: isinstance(v, str))
BOOL: Check = ("bool", lambda v: isinstance(v, bool))
INT: Check = ("int", is_int)
MAP: Check = ("map[string]interface {}", lambda v: isinstance(v, dict))
LIST: Check = ("[]interface {}", lambda v: isinstance(v, list))
STRS: Check = ("[]string", _list_of(lambda x: isinstance(x, str)))
DURATION: Check = ("api.Duration", lambda v: isinstance(v, (int, float, str)) and not isinstance(v, bool))
THINK: Check = ("api.ThinkValue", lambda v: isinstance(v, (bool, str)))
COMMON = {"model": STR, "stream": BOOL, "keep_alive": DURATION, "options": MAP, "think": THINK, "truncate": BOOL,
          "shift": BOOL, "logprobs": BOOL, "top_logprobs": INT}
GENERATE = COMMON | {"prompt": STR, "suffix": STR, "system": STR, "template": STR, "raw": BOOL, "images": STRS,
                     "context": ("[]int", _list_of(is_int))}
CHAT = COMMON | {"messages": ("[]api.Message", _list_of(lambda m: isinstance(m, dict))), "tools": LIST}
MESSAGE = {"role": STR, "content": STR, "thinking": STR, "images": STRS, "tool_calls": LIST, "tool_name": STR}
SHOW = {"model": STR, "name": STR, "verbose": BOOL, "system": STR, "template": STR, "options": MAP}
EMBED = {"model": STR, "truncate": BOOL, "dimensions": INT, "options": MAP, "keep_alive": DURATION}
EMBEDDINGS = {"model": STR, "prompt": STR, "options": MAP, "keep_alive": DURATION}


def _kind(v: Any) -> str:
    """A JSON value's kind as Go's decoder names it."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(v), "null")


class _BadNumber:
    """A number no field can hold (NaN, ±Infinity, past float64, thousands of digits), kept as its
    text until `_clean` finds which field it is in."""

    def __init__(self, text: str):
        self.text = text


def _float(text: str) -> float | _BadNumber:
    value = float(text)
    return value if math.isfinite(value) else _BadNumber(text)


def _int(text: str) -> int | _BadNumber:
    return int(text) if len(text) <= 300 else _BadNumber(text)  # int() refuses 4,300+ digits anyway


_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _clean(value: Any, where: str = "") -> Any:
    """`value` with lone surrogates replaced by U+FFFD (json.loads already joined valid pairs), or a
    400 naming the field of a number that is not finite."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_clean(k): _clean(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, _BadNumber):
        raise HTTPError(400, f'invalid number {value.text} in field "{where or "body"}": numbers must be finite and within range')
    return value


def parse_json(raw: bytes | bytearray) -> Any:
    """A request body's JSON, or a 400 with Go's message."""
    if not raw.strip():
        raise HTTPError(400, "missing request body")
    bad: list[str] = []

    def constant(text: str) -> _BadNumber:
        bad.append(text)
        return _BadNumber(text)

    def number(parse: Callable[[str], Any]) -> Callable[[str], Any]:
        def hook(text: str) -> Any:
            value = parse(text)
            if isinstance(value, _BadNumber):
                bad.append(text)
            return value
        return hook

    try:
        body = json.loads(raw, parse_constant=constant, parse_float=number(_float), parse_int=number(_int))
    except json.JSONDecodeError as exc:
        if exc.pos >= len(exc.doc.rstrip()):
            raise HTTPError(400, "unexpected EOF") from None
        raise HTTPError(400, f"invalid character {exc.doc[exc.pos]!r} looking for beginning of value") from None
    except ValueError:  # not UTF-8
        raise HTTPError(400, "invalid UTF-8 in request body") from None
    return _clean(body) if bad or _SURROGATE_ESCAPE.search(raw) else body


def check_fields(body: dict, struct: str, fields: Mapping[str, Check]) -> dict:
    """Type-check known fields like Go's decoder; null means absent, unknown keys are ignored."""
    for key, value in body.items():
        go_type, test = fields.get(key, ("", lambda v: True))
        if value is not None and not test(value):
            raise HTTPError(400, f"json: cannot unmarshal {_kind(value)} into Go struct field {struct}.{key} of type {go_type}")
    return {k: v for k, v in body.items() if v is not None}


def parse_body(raw: bytes | bytearray, struct: str, fields: Mapping[str, Check]) -> dict:
    """An Ollama request body (a JSON object, api.`struct`) with its `fields` type-checked."""
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise HTTPError(400, f"json: cannot unmarshal {_kind(body)} into Go value of type api.{struct}")
    return check_fields(body, struct, fields)


def embed_inputs(value: Any) -> list[str]:
    """Embedding input: a string or a list of strings ("" and [] embed nothing, as in Ollama)."""
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return [value]
    if STRS[1](value):
        return value
    raise HTTPError(400, "invalid input type")


_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's keep_alive: seconds as a number, or a Go duration string ("5m", "1h30m", "-1s")."""
    if value is None or isinstance(value, (int, float)):
        return value
    text = value.strip()
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    if not body or _DURATION_PART.sub("", body):
        raise HTTPError(400, f'time: invalid duration "{value}"')
    seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(body))
    return -seconds if text.startswith("-") else seconds


# ----------------------------------------------------------------------------------------------
# Options -> DecodingParams, formats -> grammars
# ----------------------------------------------------------------------------------------------


def _option(key: str, value: Any) -> Any:
    """One of Ollama's options (api.Options and api.Runner), type-checked like Ollama's
    Options.FromMap, with its messages."""
    kind = OLLAMA_OPTION_TYPES[key]
    number = isinstance(value, (int, float)) and not isinstance(value, bool) \
        and (isinstance(value, int) or math.isfinite(value))
    if kind is bool and not isinstance(value, bool):
        raise HTTPError(400, f'option "{key}" must be of type boolean')
    if kind is int and not number:
        raise HTTPError(400, f'option "{key}" must be of type integer')
    if kind is float and not number:
        raise HTTPError(400, f'option "{key}" must be of type float32')
    if kind is list and not isinstance(value, list):
        raise HTTPError(400, f'option "{key}" must be of type array')
    if kind is list and not all(isinstance(s, str) for s in value):
        raise HTTPError(400, f'option "{key}" must be of an array of strings')
    return int(value) if kind is int else value  # Go truncates a float given for an integer


def ollama_params(options: Mapping[str, Any], base: DecodingParams) -> DecodingParams:
    """Ollama `options` -> `DecodingParams` (out-of-range values raise ConfigError: a 400).

    seed, temperature, top_p, top_k, min_p, num_predict, repeat_penalty, stop and num_ctx take
    effect; a negative seed means a random one and num_predict <= 0 means "until the context is
    full", as in Ollama. Other options are ignored, as Ollama ignores them.
    """
    typed = {k: _option(k, v) for k, v in options.items() if k in OLLAMA_OPTION_TYPES and v is not None}
    if typed.get("seed", 0) < 0:
        del typed["seed"]
    if typed.get("num_predict", 1) <= 0:
        del typed["num_predict"]
    elif "num_predict" in typed:  # a huge limit means the same as none: the context bounds it anyway
        typed["num_predict"] = min(typed["num_predict"], int(SPECS["max_tokens"].high))
    return DecodingParams.from_ollama_options(typed, base=base)


def openai_params(body: Mapping[str, Any], base: DecodingParams) -> DecodingParams:
    """An OpenAI request body -> `DecodingParams`: temperature, top_p, max_tokens (or
    max_completion_tokens), seed, stop, and the llama.cpp extras top_k, min_p, repeat_penalty."""
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or STRS[1](stop)):
        raise HTTPError(400, "stop must be a string or a list of strings")
    return DecodingParams.from_openai(body, base=base)


def grammar_for(fmt: Any) -> Any:
    """A llama.cpp grammar for Ollama's `format`: "json" or a JSON schema (None: no format)."""
    if fmt in (None, ""):
        return None
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import JSON_GBNF

    if fmt == "json":
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    if isinstance(fmt, dict):
        try:
            return LlamaGrammar.from_json_schema(json.dumps(fmt), verbose=False)
        except Exception as exc:  # the schema converter raises several types for a bad schema
            raise HTTPError(400, f"invalid JSON schema in format: {exc}") from None
    raise HTTPError(400, 'invalid format: expected "json" or a valid JSON schema')
