"""The parity suite: conversations that a Go TEMPLATE must render exactly as the model's Hugging
Face Jinja template does, in export (to pick a family) and in verify (to check a Modelfile).

BOS rule (one for every family): a Go TEMPLATE never writes the leading BOS. When the HF render
starts with `bos_token`, that token is removed before comparing and must come from the tokenizer:
llama.cpp's tokenize adds it when the GGUF's `tokenizer.ggml.add_bos_token` is true (Ollama and
`toolkit serve` tokenize prompts that way). When the HF render does not start with BOS, the GGUF
must not add one. verify checks this on token ids (HF tokenizer on the HF render vs llama.cpp on
the Go render); BOS tokens inside a render (Llama 2 opens every [INST] with one) stay as text.

A conversation that ends with a user message is compared with the generation prompt, one that
ends with an assistant message without it (the text training sees). When the HF template refuses
a conversation (Gemma 1/2 and the first Mistral template raise on system messages), that
conversation is reported as refused and not compared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from toolkit.chat.gotemplate.errors import TemplateError
from toolkit.chat.jinja import TemplateRefused, render_jinja
from toolkit.chat.render import render_chat

S, U, A = "system", "user", "assistant"


def _m(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


_QA = [_m(U, "What is a learning-rate warmup?"), _m(A, "A short phase where the learning rate rises."),
       _m(U, "Why does it help?")]

# name -> messages; the last message's role decides whether the generation prompt is expected.
SUITE: dict[str, list[dict[str, str]]] = {
    "system+user": [_m(S, "You are a terse reviewer."), _m(U, "Review my ablation.")],
    "user only": [_m(U, "What is a learning-rate warmup?")],
    "multi-turn": _QA,
    "system+multi-turn": [_m(S, "Answer in one line."), *_QA],
    "closed turn (no generation prompt)": [_m(U, "Name a prime."), _m(A, "Seven.")],
    "system+closed multi-turn (no generation prompt)": [_m(S, "Answer in one line."), *_QA, _m(A, "It avoids early divergence.")],
    "empty system": [_m(S, ""), _m(U, "Hello?")],
    "template-like text": [_m(U, "Explain {{ .Content }} and {% raw %} and [INST] tags."),
                           _m(A, "They are {{ literal }} [/INST] <<SYS>> text."), _m(U, "And {{- . }}?")],
    "non-ASCII": [_m(U, "Grüße — 日本語は？ 🙂 Réponds en français."), _m(A, "Ça va ✓"), _m(U, "Ñandú?")],
}


def wants_generation_prompt(messages: list[dict]) -> bool:
    return not messages or messages[-1]["role"] != A


def first_difference(a: str, b: str) -> int | None:
    """Index of the first differing character, or None when equal."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@dataclass
class Case:
    """One conversation of the suite: the HF text (leading BOS removed), the Go text, the verdict."""

    name: str
    hf: str | None
    go: str | None
    leading_bos: bool = False
    refused: str = ""
    error: str = ""

    @property
    def at(self) -> int | None:
        return None if self.hf is None or self.go is None else first_difference(self.hf, self.go)

    @property
    def ok(self) -> bool:
        return bool(self.refused) or (not self.error and self.at is None)

    def describe(self) -> str:
        if self.refused:
            return f"conversation '{self.name}': the HF template refuses it ({self.refused})"
        if self.error:
            return f"conversation '{self.name}': {self.error}"
        at = self.at
        return (f"differs from the HF chat template at character {at} in conversation '{self.name}': "
                f"{self.hf[max(0, at - 15):at + 15]!r} vs {self.go[max(0, at - 15):at + 15]!r}")


_BOS_SENTINEL = "\u27e6bos\u27e7"


def hf_render(jinja: str, messages: list[dict], *, bos: str, eos: str, now: datetime | None = None) -> tuple[str, bool]:
    """(HF text without its leading BOS, whether it had one). Raises TemplateRefused."""
    # A sentinel tells a `bos_token` the template writes from the same text written literally
    # (SmolLM2's bos is <|im_start|>, which its template writes as part of every turn).
    text = render_jinja(jinja, messages, bos_token=_BOS_SENTINEL if bos else "", eos_token=eos,
                        add_generation_prompt=wants_generation_prompt(messages), now=now)
    leading = bool(bos) and text.startswith(_BOS_SENTINEL)
    if leading:
        text = text[len(_BOS_SENTINEL):]
    return text.replace(_BOS_SENTINEL, bos), leading


def run_suite(jinja: str, go_template: str, *, bos: str = "", eos: str = "", system: str | None = None,
              now: datetime | None = None, suite: dict[str, list[dict]] | None = None) -> list[Case]:
    """Render every conversation both ways and compare (see the module docstring)."""
    cases = []
    for name, messages in (suite or SUITE).items():
        try:
            hf, leading = hf_render(jinja, messages, bos=bos, eos=eos, now=now)
        except TemplateRefused as exc:
            cases.append(Case(name, None, None, refused=str(exc)))
            continue
        except Exception as exc:  # a Jinja template that breaks on this conversation
            cases.append(Case(name, None, None, error=f"the HF template fails: {exc.__class__.__name__}: {exc}"))
            continue
        try:
            go = render_chat(go_template, messages, system=system)
        except TemplateError as exc:
            cases.append(Case(name, hf, None, leading, error=f"the Go template fails: {exc}"))
            continue
        cases.append(Case(name, hf, go, leading))
    return cases


def passed(cases: list[Case]) -> bool:
    """Every case matches or is refused by HF, and at least one was compared."""
    return all(c.ok for c in cases) and any(not c.refused for c in cases)


def writes_leading_bos(cases: list[Case]) -> bool:
    return any(c.leading_bos for c in cases if not c.refused)


_STRFTIME = re.compile(r"""strftime_now\(\s*['"]([^'"]+)['"]\s*\)""")
_DIRECTIVES = {"%d": r"\d{2}", "%m": r"\d{2}", "%Y": r"\d{4}", "%b": r"[A-Z][a-z]{2}", "%B": r"[A-Z][a-z]+",
               "%y": r"\d{2}", "%e": r"[ \d]\d", "%A": r"[A-Z][a-z]+", "%a": r"[A-Z][a-z]{2}"}


def pinned_date(jinja: str, text: str) -> datetime | None:
    """The date a Modelfile froze at export, for a Jinja template that calls strftime_now.

    Looks in `text` (the Modelfile's TEMPLATE and SYSTEM) for a date written in one of the
    template's strftime formats, so that verify renders the HF template as of that day.
    """
    for fmt in _STRFTIME.findall(jinja):
        pattern = re.escape(fmt)
        for directive, regex in _DIRECTIVES.items():
            pattern = pattern.replace(re.escape(directive), regex).replace(directive, regex)
        for found in re.findall(pattern, text):
            try:
                return datetime.strptime(found, fmt)
            except ValueError:
                continue
    return None
