"""The one rule for turning a text prompt into the token ids llama.cpp decodes.

A text prompt (a chat template's render, a raw prompt, a request's own Go template) is tokenized
with special-token text read as those tokens, and gets a leading BOS exactly when the GGUF says
so (`tokenizer.ggml.add_bos_token`), as Ollama and llama.cpp's own server do, unless the text
already starts with BOS (a Jinja template that writes `bos_token`, a `context` sent back): a model
never sees two. A prompt given as token ids is taken exactly as given (callers do not come here).
Every path that hands a text prompt to llama.cpp (LlamaCppBackend, the batched engine, `toolkit
serve`) goes through `prompt_tokens`, so generate, sweep, compare, judge, gap drafts and data prefs
follow the same rule as the server.
"""

from __future__ import annotations

from collections.abc import Sequence

from toolkit.errors import ConfigError
from toolkit.runtime.llamacpp import read_metadata


def bos_to_add(vocab) -> int | None:
    """The BOS id llama.cpp puts before a text prompt of this vocabulary (a `llama_vocab` pointer),
    or None when the GGUF's `tokenizer.ggml.add_bos_token` is false or it has no BOS token."""
    import llama_cpp

    if not llama_cpp.llama_vocab_get_add_bos(vocab):
        return None
    bos = int(llama_cpp.llama_vocab_bos(vocab))
    return bos if bos >= 0 else None


def with_bos(tokens: Sequence[int], bos: int | None) -> list[int]:
    """`tokens` of a text prompt with the leading BOS `bos_to_add` asks for, never a second one."""
    tokens = [int(t) for t in tokens]
    if bos is None or tokens[:1] == [bos]:
        return tokens
    return [bos, *tokens]


def raw_prompt(messages: Sequence[dict]) -> str:
    """The prompt of raw completion mode (Ollama's `raw`, for base models without a chat template):
    the messages' texts as given, no template, one after another on their own lines (a single
    prompt is exactly that prompt)."""
    return "\n".join(str(m.get("content") or "") for m in messages)


def no_template(gguf) -> Exception:
    """The error for a conversation that cannot be prompted: the GGUF has no chat template. It
    names both ways a user holding only the GGUF has."""
    return ConfigError(f"{gguf} has no chat template (a base model?), so a conversation cannot be prompted",
                       fix="pass --raw to complete the prompt as given (Ollama's raw mode), or pass a Modelfile "
                           f"with `FROM {getattr(gguf, 'name', gguf)}` and a TEMPLATE as the model")


def check_prompting(gguf, raw: bool, go_template: str | None) -> None:
    """`no_template` unless raw mode, a Modelfile TEMPLATE or the GGUF's own chat template can
    prompt it (its metadata read alone, no weights)."""
    if raw or go_template:
        return

    if "tokenizer.chat_template" not in read_metadata(gguf):
        raise no_template(gguf)
