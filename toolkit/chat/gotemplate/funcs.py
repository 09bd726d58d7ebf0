"""The functions a Go template may call: Go's builtins (comparison, len, index, slice, print,
printf, println, not) and Ollama's `json`, `currentDate` and `yesterdayDate`."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from typing import Any

from toolkit.chat.gotemplate.errors import TemplateError, TemplateUnsupported
from toolkit.chat.gotemplate.values import GoStruct, go_float, go_json, go_print, truth, type_name


def _kind(value: Any) -> str:
    if value is None:
        return "invalid"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "other"


def _eq(arg1: Any, *rest: Any) -> bool:
    if not rest:
        raise TemplateError("missing argument for comparison")
    k1 = _kind(arg1)
    for arg in rest:
        k2 = _kind(arg)
        if k1 != k2:
            if k1 != "invalid" and k2 != "invalid":
                raise TemplateError("incompatible types for comparison")
            continue
        if k1 == "other" and not isinstance(arg1, GoStruct):
            raise TemplateError(f"non-comparable type {type_name(arg1)}")
        if arg1 == arg:
            return True
    return False


def _lt(a: Any, b: Any) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka != kb:
        raise TemplateError("incompatible types for comparison")
    if ka not in ("int", "float", "string"):
        raise TemplateError("invalid type for comparison")
    return a < b


def _len(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8"))  # Go counts bytes
    if isinstance(value, (list, tuple, dict)) and not isinstance(value, GoStruct):
        return len(value)
    raise TemplateError(f"len of type {type_name(value)}")


def _index(item: Any, *indexes: Any) -> Any:
    for idx in indexes:
        if item is None:
            raise TemplateError("index of untyped nil")
        if isinstance(item, dict) and not isinstance(item, GoStruct):
            item = item.get(idx)
        elif isinstance(item, (list, tuple, str)):
            seq = item.encode("utf-8") if isinstance(item, str) else item
            if _kind(idx) != "int" or not 0 <= idx < len(seq):
                raise TemplateError(f"index out of range: {idx}")
            item = seq[idx]
        else:
            raise TemplateError(f"can't index item of type {type_name(item)}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    if not isinstance(item, (list, tuple, str)):
        raise TemplateError(f"can't slice item of type {type_name(item)}")
    if len(indexes) > 3 or (len(indexes) == 3 and isinstance(item, str)):
        raise TemplateError("too many slice indexes")
    seq = item.encode("utf-8") if isinstance(item, str) else item
    bounds = list(indexes) + [None] * (2 - len(indexes))
    lo = bounds[0] if bounds[0] is not None else 0
    hi = bounds[1] if bounds[1] is not None else len(seq)
    if not all(_kind(i) == "int" for i in (lo, hi)) or not 0 <= lo <= hi <= len(seq):
        raise TemplateError(f"index out of range: {lo}:{hi}")
    part = seq[lo:hi]
    return part.decode("utf-8", errors="replace") if isinstance(item, str) else list(part)


def _go_sprint(*args: Any) -> str:
    """fmt.Sprint: spaces between operands when neither side is a string."""
    out = []
    for i, arg in enumerate(args):
        if i and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(go_print(arg))
    return "".join(out)


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


def _printf(fmt: str, *args: Any) -> str:
    """fmt.Sprintf for the common verbs (%s %v %d %q %t %f %g %e %x %c %%)."""
    out, pos, argi = [], 0, 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos: m.start()])
        pos = m.end()
        flags, width, prec, verb = m.groups()
        if _too_large(width) or _too_large(prec):  # Go's parsenum gives up: the rest is not formatted
            out.append("%!(NOVERB)")
            pos = len(fmt)
            break
        if verb == "%":
            out.append("%")
            continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        out.append(_format_verb(flags, width, prec, verb, args[argi]))
        argi += 1
    out.append(fmt[pos:])
    if argi < len(args):
        extra = ", ".join(f"{type_name(a)}={go_print(a)}" for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _too_large(digits: str | None) -> bool:
    """Whether Go's fmt stops reading this width or precision: its parsenum checks the number so
    far against 1e6 before each further digit (so 8 digits pass, 9 never do)."""
    num = 0
    for ch in digits or "":
        if num > 1_000_000:
            return True
        num = num * 10 + int(ch)
    return False


def _format_verb(flags: str, width: str | None, prec: str | None, verb: str, arg: Any) -> str:
    if verb in "sv":
        text = go_print(arg)
        if prec is not None and verb == "s":
            text = text[: int(prec)]
    elif verb == "q":
        text = json.dumps(arg if isinstance(arg, str) else go_print(arg), ensure_ascii=False)
    elif verb == "t" and isinstance(arg, bool):
        text = "true" if arg else "false"
    elif verb == "d" and _kind(arg) == "int":
        text = ("+" if "+" in flags and arg >= 0 else "") + str(arg)
    elif verb in "gG" and prec is None and _kind(arg) in ("int", "float"):
        text = go_float(float(arg))  # Go's %g is the shortest representation
    elif verb in "feEgG" and _kind(arg) in ("int", "float"):
        spec = "%" + flags.replace("0", "").replace("-", "") + ("." + prec if prec else "") + verb
        text = spec % float(arg)
    elif verb in "xX" and _kind(arg) == "int":
        text = format(arg, verb.lower() if verb == "x" else "X")
    elif verb in "xX" and isinstance(arg, str):
        text = arg.encode("utf-8").hex()
        text = text.upper() if verb == "X" else text
    elif verb == "c" and _kind(arg) == "int":
        text = chr(arg)
    else:
        return f"%!{verb}({type_name(arg)}={go_print(arg)})"
    if width:
        pad = "0" if "0" in flags and "-" not in flags and verb not in "sqv" else " "
        text = text.ljust(int(width)) if "-" in flags else text.rjust(int(width), pad)
    return text


def _unsupported(name: str) -> Callable[..., Any]:
    def fn(*_: Any) -> Any:
        raise TemplateUnsupported(f"function {name} is not supported by this renderer")
    return fn


FUNCS: dict[str, Callable[..., Any]] = {
    "not": lambda x: not truth(x),
    "len": _len,
    "index": _index,
    "slice": _slice,
    "print": _go_sprint,
    "println": lambda *a: " ".join(go_print(x) for x in a) + "\n",
    "printf": _printf,
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "lt": _lt,
    "le": lambda a, b: _lt(a, b) or _eq(a, b),
    "gt": lambda a, b: not (_lt(a, b) or _eq(a, b)),
    "ge": lambda a, b: not _lt(a, b),
    "json": lambda v: go_json(v),
    "currentDate": lambda *_: datetime.date.today().isoformat(),
    "yesterdayDate": lambda *_: (datetime.date.today() - datetime.timedelta(days=1)).isoformat(),
    "html": _unsupported("html"),
    "js": _unsupported("js"),
    "urlquery": _unsupported("urlquery"),
    "call": _unsupported("call"),
    "toTypeScriptType": _unsupported("toTypeScriptType"),
}
