"""Which family's Go TEMPLATE renders a Hugging Face chat template exactly: candidates by markers
(toolkit/chat/families.py), then the parity suite (toolkit/chat/parity.py) decides, in table order.

No edit distance: a family is taken only when its Go template, with the model's bos/eos and the
default system message the HF template inserts (read from a render), passes the whole suite.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import datetime

from toolkit.chat.families import Family, candidates
from toolkit.chat.parity import Case, hf_render, passed, run_suite
from toolkit.chat.render import render_chat

_PROBE = [{"role": "user", "content": "Hi"}]
_MARK = "\u27e6system\u27e7"  # a system text no template contains


@dataclass
class Match:
    """A family fitted to one model: its Go TEMPLATE, stops, default SYSTEM and suite results."""

    family: Family
    template: str
    stops: list[str]
    system: str | None
    cases: list[Case] = field(default_factory=list)


@dataclass
class Attempt:
    """A candidate family that failed the suite, kept to explain what is missing."""

    family: Family
    cases: list[Case]

    def first_problem(self) -> str:
        bad = next((c for c in self.cases if not c.ok), None)
        return f"{self.family.name}: " + (bad.describe() if bad else "every conversation was refused")


def _fills(family: Family, jinja: str, bos: str, eos: str, now: datetime | None) -> dict[str, str] | None:
    if not family.fills:
        return {}
    try:
        text, _ = hf_render(jinja, _PROBE, bos=bos, eos=eos, now=now)
    except Exception:
        return None
    values = {}
    for key, regex in family.fills:
        m = re.search(regex, text)
        if m is None:
            return None
        values[key] = m.group(1)
    return values


def discover_system(jinja: str, go_template: str, *, bos: str, eos: str, now: datetime | None) -> str | None:
    """The default system message the HF template inserts when a conversation has none, read by
    rendering: the HF text of a user-only conversation is the Go text with a system message."""
    try:
        hf, _ = hf_render(jinja, _PROBE, bos=bos, eos=eos, now=now)
        plain = render_chat(go_template, _PROBE)
        marked = render_chat(go_template, [{"role": "system", "content": _MARK}, *_PROBE])
    except Exception:
        return None
    if hf == plain or _MARK not in marked:
        return None
    pre, post = marked.split(_MARK, 1)
    if not (hf.startswith(pre) and hf.endswith(post) and len(hf) >= len(pre) + len(post)):
        return None
    system = hf[len(pre):len(hf) - len(post)]
    return system if system and render_chat(go_template, _PROBE, system=system) == hf else None


def fit(family: Family, jinja: str, *, bos: str = "", eos: str = "", now: datetime | None = None) -> Match | Attempt:
    """`family` fitted to this template and model, and its parity suite results."""
    if family.needs_eos and not eos:
        return Attempt(family, [Case("eos", None, None, error="the model has no eos token for this family")])
    fills = _fills(family, jinja, bos, eos, now)
    if fills is None:
        return Attempt(family, [Case("probe", None, None, error=f"the HF render lacks {[k for k, _ in family.fills]}")])
    template = family.go_template(bos, eos, fills)
    system = discover_system(jinja, template, bos=bos, eos=eos, now=now)
    cases = run_suite(jinja, template, bos=bos, eos=eos, system=system, now=now)
    if not passed(cases):
        return Attempt(family, cases)
    return Match(family, template, family.stop_list(eos), system, cases)


def match(jinja: str, *, bos: str = "", eos: str = "", now: datetime | None = None) -> tuple[Match | None, list[Attempt]]:
    """The first candidate family that passes the parity suite, and the candidates that failed."""
    attempts = []
    for family in candidates(jinja or ""):
        result = fit(family, jinja, bos=bos, eos=eos, now=now)
        if isinstance(result, Match):
            return result, attempts
        attempts.append(result)
    return None, attempts


@functools.lru_cache(maxsize=64)
def ollama_template_for(hf_chat_template: str, bos: str = "", eos: str = "") -> tuple[str, tuple[str, ...]] | None:
    """(Go template, stop tokens) that render this Jinja chat template exactly, or None if unsure.

    Pass the model's bos/eos token texts: families that end turns with the eos token (Zephyr,
    Llama 2, Mistral, DeepSeek) are only found when it is known. Remembered per template: the
    parity suite behind it takes 60 ms, and `toolkit serve` asks on every /api/show.
    """
    found, _ = match(hf_chat_template, bos=bos, eos=eos)
    return None if found is None else (found.template, tuple(found.stops))
