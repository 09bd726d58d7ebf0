"""Prompts for `toolkit serve`, built outside the generation lock and within bounds.

A request's prompt is rendered (the GGUF's Jinja chat template, or the request's own Go
`template`) and tokenized on the request's thread with the model's vocabulary-only handle, while
other requests generate. Each step is bounded, so no request can make the server work long for it:
a Go template by its size and by a budget of execution steps, output characters and seconds (a
`{{range}}` of millions, or printf widths, fail fast), the messages by their number and bytes
before anything is rendered or tokenized. A text of more than `num_ctx x the vocabulary's longest
token` bytes cannot fit the context whatever it says, so it is refused before tokenizing, with the
400 a too-long prompt gets anyway. Every refusal names its bound.
"""

from __future__ import annotations

from typing import Any

from toolkit.chat.gotemplate.errors import TemplateError
from toolkit.chat.gotemplate.execute import Budget, bounded
from toolkit.chat.jinja import TemplateRefused
from toolkit.chat.render import render_chat
from toolkit.runtime.backends import LlamaCppBackend
from toolkit.serve.request import HTTPError

MAX_TEMPLATE_BYTES = 64 << 10  # Ollama's own templates are under 8 KB
# Execution steps: the shipped templates take 7-13 per message (a 100-message chat: 700-1,300),
# so this is ten times that and more; 5,000 steps are about a millisecond of this interpreter.
TEMPLATE_STEPS = 5_000
TEMPLATE_STEPS_PER_MESSAGE = 1_000
TEMPLATE_SECONDS = 2.0


def text_limit(vocab: LlamaCppBackend, num_ctx: int) -> int:
    """The most bytes of text that can fit `num_ctx` tokens of this vocabulary."""
    return num_ctx * vocab.max_piece_bytes


def check_messages(messages: list[dict[str, Any]], vocab: LlamaCppBackend, num_ctx: int) -> None:
    """400 before rendering when the messages cannot fit the context: more of them than tokens,
    or more bytes of content than `num_ctx` tokens can hold."""
    if len(messages) > num_ctx:
        raise HTTPError(400, f"{len(messages)} messages cannot fit a context of {num_ctx} tokens "
                             f"(the limit is one message per token of num_ctx)")
    limit = text_limit(vocab, num_ctx)
    size = sum(utf8_size(str(m.get("content") or ""), limit) for m in messages)
    if size > limit:
        raise HTTPError(400, _too_long("the messages are", size, limit, vocab, num_ctx))


def utf8_size(text: str, limit: int) -> int:
    """`text`'s size in UTF-8, or its length in characters when that alone is over `limit` (a
    character is at least one byte): a 20 MB message is not encoded just to be refused."""
    return len(text) if len(text) > limit else len(text.encode("utf-8", "replace"))


def tokens_for(vocab: LlamaCppBackend, text: str, num_ctx: int) -> list[int]:
    """`text`'s tokens, or a 400 without tokenizing when it is too long to fit `num_ctx`."""
    limit = text_limit(vocab, num_ctx)
    size = utf8_size(text, limit)
    if size > limit:
        raise HTTPError(400, _too_long("the prompt is", size, limit, vocab, num_ctx))
    return vocab.prompt_tokens(text)


def _too_long(what: str, size: int, limit: int, vocab: LlamaCppBackend, num_ctx: int) -> str:
    return (f"{what} {size} bytes, over the {limit}-byte limit of a {num_ctx}-token context "
            f"(this model's tokens are at most {vocab.max_piece_bytes} bytes): the input length exceeds the context length")


def render_go(template: str, messages: list[dict[str, str]], max_chars: int) -> str:
    """A request's own Go TEMPLATE rendered as Ollama renders it, within the template bounds:
    its size, TEMPLATE_STEPS (+ TEMPLATE_STEPS_PER_MESSAGE), TEMPLATE_SECONDS, and `max_chars`
    (more text than the context can hold is refused later anyway)."""
    size = len(template.encode("utf-8", "replace"))
    if size > MAX_TEMPLATE_BYTES:
        raise HTTPError(400, f"template is {size} bytes, over the {MAX_TEMPLATE_BYTES}-byte limit")

    steps = TEMPLATE_STEPS + TEMPLATE_STEPS_PER_MESSAGE * len(messages)
    try:
        with bounded(Budget(steps, max_chars, TEMPLATE_SECONDS)):
            return render_chat(template, messages)
    except TemplateError as exc:
        raise HTTPError(400, f"template: {exc}") from None


def render_gguf(vocab: LlamaCppBackend, messages: list[dict[str, str]]) -> str:
    """The prompt from the GGUF's own Jinja chat template; a 400 when the template refuses them."""
    try:
        return vocab.render(messages)
    except TemplateRefused as exc:
        raise HTTPError(400, f"the chat template refused the messages: {exc}") from None


def detokenize(vocab: LlamaCppBackend, tokens: list[int]) -> str:
    """The text of a request's `context` tokens."""
    try:
        return vocab.detokenize(tokens)
    except ValueError:  # an id outside the vocabulary, refused before it reaches llama.cpp
        raise HTTPError(400, "context contains a token id outside the vocabulary") from None
