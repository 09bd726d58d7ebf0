"""Writing Ollama Modelfiles: `render` is Ollama's `Modelfile.String()`; `build_modelfile` is what
our export step writes: it quotes defensively and proves its output by parsing it back."""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path

from toolkit.chat.gotemplate.errors import TemplateError, TemplateUnsupported
from toolkit.chat.gotemplate.parser import parse as parse_template
from toolkit.errors import ConfigError
from toolkit.io import write_text
from toolkit.modelfile.parser import DEPRECATED_PARAMETERS, NON_PARAMETER_COMMANDS, Modelfile, ModelfileError, is_print, one_line, parse
from toolkit.modelfile.values import TYPE_WORDS, parse_value
from toolkit.params import OLLAMA_OPTION_TYPES


def quote(value: str) -> str:
    """Ollama's `quote`: raw unless the value has a newline or a leading/trailing space."""
    if "\n" in value or value.startswith(" ") or value.endswith(" "):
        return f'"""{value}"""' if '"' in value else f'"{value}"'
    return value


def command_line(name: str, value: str) -> str:
    """One command as Ollama's `Command.String()` writes it."""
    if name == "model":
        return f"FROM {value}"
    if name in NON_PARAMETER_COMMANDS - {"message"}:
        return f"{name.upper()} {quote(value)}"
    if name == "message":
        role, _, content = value.partition(": ")
        return f"MESSAGE {role} {quote(content)}"
    return f"PARAMETER {name} {quote(value)}"


def render(mf: Modelfile) -> str:
    """Serialise like Ollama's `Modelfile.String()` (what `ollama show --modelfile` prints).

    Note Ollama's form does not always round-trip (FROM is never quoted; a value that starts with
    a quote is written raw); `build_modelfile` quotes defensively instead.
    """
    return "".join(command_line(name, value) + "\n" for name, value in mf.commands)


def write(path: str | os.PathLike, content: Modelfile | str) -> Path:
    """Write a Modelfile atomically; text is parsed first so an invalid file is never written."""
    text = render(content) if isinstance(content, Modelfile) else content
    parse(text, path=path)
    return write_text(path, text)


def safe_value(keyword: str, name: str, value: str, *, prefer_triple: bool = False) -> str:
    """`keyword value` in the first quoting that Ollama's parser reads back as `(name, value)`.

    Tries the raw value, then triple quotes, then double quotes (triple first if `prefer_triple`).
    """
    bad = [ch for ch in value if not (is_print(ch) or ch in "\t\r\n")]
    if bad:
        raise ConfigError(f"{keyword} value contains {bad[0]!r}, which Ollama silently drops",
                          fix="remove control and invisible characters")
    forms = ['"""' + value + '"""', '"' + value + '"']
    if not prefer_triple:
        forms.insert(0, value)
    for form in forms:
        line = f"{keyword} {form}"
        try:
            probe = parse("FROM x\n" + line + "\n")
        except ModelfileError:
            continue
        if probe.commands == [("model", "x"), (name, value)]:
            return line
    raise ConfigError(f"{keyword} value cannot be written in a Modelfile: {one_line(value)[:60]!r}",
                      fix='avoid a line that ends with """ or " inside the value')


def format_parameter(name: str, value: object) -> str:
    """A typed parameter value as Modelfile text, checked against Ollama's parser."""
    if name in DEPRECATED_PARAMETERS:
        raise ConfigError(f"parameter {name} is deprecated and Ollama ignores it", fix="drop it")
    if name not in OLLAMA_OPTION_TYPES:
        close = difflib.get_close_matches(name, OLLAMA_OPTION_TYPES, n=1)
        hint = f'did you mean "{close[0]}"? ' if close else ""
        raise ConfigError(f'unknown Ollama parameter "{name}"',
                          fix=f"{hint}valid: {', '.join(OLLAMA_OPTION_TYPES)}")
    kind = OLLAMA_OPTION_TYPES[name]
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"parameter {name} must be finite, got {value}")
        text = repr(value)
    else:
        text = str(value)
    try:
        parse_value(name, text)
        if kind is bool and not isinstance(value, (bool, str)):
            raise ValueError(f"invalid bool value [{text}]")
    except ValueError as e:
        raise ConfigError(f"parameter {name}={value!r} must be {TYPE_WORDS[kind]}",
                          fix=f"Ollama would say: {e}") from None
    return text


def build_modelfile(*, from_: str, template: str, stops: list[str], system: str | None = None,
                    parameters: dict[str, object] | None = None,
                    license: str | None = None, adapter: str | None = None) -> str:
    """Modelfile text for an exported model, proven by parsing it back.

    Writes FROM, ADAPTER (a LoRA GGUF applied on top of FROM, when given), TEMPLATE (triple-quoted), one `PARAMETER stop` per stop token, SYSTEM, the other
    PARAMETERs in the given order, then LICENSE. A "stop" entry in `parameters` is appended to
    `stops`. Raises ConfigError for anything Ollama would reject or that would not round-trip.
    """
    params = dict(parameters or {})
    extra = params.pop("stop", None) or []
    stops = list(stops) + [s for s in ([extra] if isinstance(extra, str) else extra) if s not in stops]
    if not from_ or from_ != from_.strip():
        raise ConfigError(f"FROM {from_!r} is empty or has surrounding spaces",
                          fix="pass a model name or a path without leading/trailing spaces")
    if not template.strip():
        raise ConfigError("TEMPLATE is empty", fix="pass the model's chat template (see toolkit.chat.families.CHATML)")
    _require_template(template)
    for stop in stops:
        if not isinstance(stop, str) or not stop:
            raise ConfigError(f"stop token {stop!r} must be a non-empty string")
    expected: list[tuple[str, str]] = [("model", from_)]
    lines = [safe_value("FROM", "model", from_)]
    if adapter is not None:
        lines.append(safe_value("ADAPTER", "adapter", adapter))
        expected.append(("adapter", adapter))
    lines.append(safe_value("TEMPLATE", "template", template, prefer_triple=True))
    expected.append(("template", template))
    for stop in stops:
        lines.append(safe_value("PARAMETER stop", "stop", stop))
        expected.append(("stop", stop))
    if system is not None:
        lines.append(safe_value("SYSTEM", "system", system))
        expected.append(("system", system))
    for name, value in params.items():
        text = format_parameter(name, value)
        lines.append(safe_value(f"PARAMETER {name}", name, text))
        expected.append((name, text))
    if license is not None:
        lines.append(safe_value("LICENSE", "license", license, prefer_triple="\n" in license))
        expected.append(("license", license))
    text = "\n".join(lines) + "\n"
    parsed = parse(text, path="generated Modelfile")
    if parsed.commands != expected:  # pragma: no cover - safe_value makes this unreachable
        raise ConfigError("generated Modelfile does not parse back to its inputs",
                          fix="report this as a toolkit bug")
    return text


def _template_problem(e) -> str:
    """A template error located inside the template text."""
    return f"{e.detail} (template line {e.line})" if e.line else e.detail


def _require_template(template: str) -> None:
    """Builder-side template check: a ConfigError naming the problem."""
    try:
        parse_template(template)
    except TemplateUnsupported:
        pass
    except TemplateError as e:
        raise ConfigError(f"TEMPLATE is not a valid Go template: {_template_problem(e)}",
                          fix=e.fix or "see https://pkg.go.dev/text/template") from None
