"""Rendering a Hugging Face Jinja chat template exactly as transformers does (the reference that
Ollama templates are checked against).

Like transformers' `apply_chat_template`: a sandboxed environment with trim_blocks/lstrip_blocks
and loop controls, `raise_exception` and `strftime_now` as globals, a `tojson` that keeps
non-ASCII text, and `tools`/`documents` defined as None. `strftime_now` reads `now`, so a render
can be pinned to a date (Llama 3.2 and granite 3.1+ write today's date into the prompt).
"""

from __future__ import annotations

import functools
import json
from datetime import datetime


class TemplateRefused(Exception):
    """The Jinja template called raise_exception (e.g. "System role not supported")."""


def _raise(message: str) -> None:
    raise TemplateRefused(message)


def _tojson(value, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def render_jinja(template: str, messages: list[dict[str, str]], *, bos_token: str = "", eos_token: str = "",
                 add_generation_prompt: bool = True, now: datetime | None = None) -> str:
    """Render a Hugging Face Jinja chat template the way transformers does.

    Raises TemplateRefused when the template itself rejects the conversation.
    """
    moment = now or datetime.now()
    # strftime_now goes in the render's context (macros see it there), not in the shared globals
    return _compiled(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                      bos_token=bos_token, eos_token=eos_token, tools=None, documents=None,
                                      strftime_now=moment.strftime)


@functools.lru_cache(maxsize=64)
def _compiled(template: str):
    """A template compiled once (5 ms for SmolLM2's, paid on every chat before): templates are
    immutable, and rendering one from several threads at once is safe."""
    return _environment().from_string(template)


@functools.lru_cache(maxsize=1)
def _environment():
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    return env
