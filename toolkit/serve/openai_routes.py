"""OpenAI's routes of `toolkit serve`: /v1/chat/completions, /v1/completions, /v1/models,
/v1/models/{name} and /v1/embeddings, on the same models and generation path as Ollama's routes
(/v1/responses is in `toolkit.serve.responses`).

Replies are OpenAI's objects (`chat.completion`, `text_completion`, their chunks as server-sent
events ending with `[DONE]`, `usage` on request); errors are wrapped OpenAI's way by the HTTP layer.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import struct
import time
from collections.abc import Iterator
from typing import Any

from toolkit.runtime.generation import Generation
from toolkit.serve import logprobs
from toolkit.serve.prompt import check_messages, render_gguf
from toolkit.serve.registry import Done, Registry, ServedModel, drain, normalize
from toolkit.serve.request import HTTPError, Request, Stream, embed_inputs, grammar_for, is_int, openai_params, parse_json


def read_request(registry: Registry, req: Request, route: str) -> tuple[dict, str, ServedModel]:
    """The body, the model name as sent and the model; a 400 for what toolkit serve does not do."""
    body = parse_json(req.body)
    if not isinstance(body, dict):
        raise HTTPError(400, f"request body must be a JSON object for {route}")
    name = body.get("model")
    if name is None and route == "/v1/completions" and len(registry.models) == 1:
        name = next(iter(registry.models.values())).name  # as llama-server: lm-eval's `gguf` model sends none
    if not isinstance(name, str) or not name:
        raise HTTPError(400, "model is required")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise HTTPError(400, "stream must be a boolean")
    if body.get("n") not in (None, 1):
        raise HTTPError(400, "n must be 1: toolkit serve returns one choice")
    scored = ("/v1/completions", "/v1/chat/completions")  # token log-probabilities: toolkit.serve.logprobs
    if (body.get("tools") or body.get("suffix") or (route != "/v1/completions" and body.get("echo"))
            or (route not in scored and (body.get("logprobs") or body.get("top_logprobs")))):
        raise HTTPError(400, "tools, suffix, echo (but on /v1/completions) and logprobs (but on completions) are not supported by toolkit serve")
    return body, name, registry.get(name)


def list_models(registry: Registry, req: Request) -> dict:
    return {"object": "list", "data": [_model_object(m) for m in registry.models.values()]}


def show_model(registry: Registry, name: str) -> dict:
    return _model_object(registry.get(name))


def chat(registry: Registry, req: Request) -> dict | Stream:
    body, name, model = read_request(registry, req, "/v1/chat/completions")
    top = logprobs.check_request(body)
    messages = _messages(body.get("messages"))
    params = openai_params(body, registry.base(openai=True))
    check_messages(messages, model.vocab, params.num_ctx)
    events = registry.generate(model, lambda vocab: render_gguf(vocab, messages), params,
                               grammar=response_format_grammar(body.get("response_format")), cancel=req.cancel)
    if top is not None and body.get("stream"):  # each chunk: its tokens' entries in choices[0].logprobs.content
        events = logprobs.streamed(registry, model, render_gguf(model.vocab, messages), events, top, req.cancel)
    reply = _reply(events, body, name, chat=True)
    if top is not None and not body.get("stream"):  # OpenAI's shape: choices[0].logprobs.content, from the scorer
        text = reply["choices"][0]["message"]["content"] or ""
        content = logprobs.for_reply(registry, model, render_gguf(model.vocab, messages), text, top, req.cancel)
        reply["choices"][0]["logprobs"] = {"content": content, "refusal": None}
    return reply


def completions(registry: Registry, req: Request) -> dict | Stream:
    body, name, model = read_request(registry, req, "/v1/completions")
    if logprobs.wants_logprobs(body):  # echo / logprobs: the scorer's numbers (lm-evaluation-harness)
        return logprobs.completion(registry, req, body, name, model)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise HTTPError(400, "prompt must be a non-empty string (or a list of one)")
    params = openai_params(body, registry.base(openai=True))
    check_messages([{"content": prompt}], model.vocab, params.num_ctx)
    events = registry.generate(model, lambda vocab: prompt, params, cancel=req.cancel)
    return _reply(events, body, name, chat=False)


def embeddings(registry: Registry, req: Request) -> dict:
    """Unit vectors as /api/embed gives them, as floats or (`encoding_format: "base64"`, the
    OpenAI SDKs' default) as base64 of little-endian float32, as OpenAI returns them."""
    body, name, model = read_request(registry, req, "/v1/embeddings")
    fmt = body.get("encoding_format")
    if fmt not in (None, "float", "base64"):
        raise HTTPError(400, 'encoding_format must be "float" or "base64"')
    texts = _embedding_texts(body.get("input"), model)
    dims = body.get("dimensions")
    if dims is not None and (not is_int(dims) or dims < 1):
        raise HTTPError(400, "dimensions must be a positive integer")
    vectors, count, _ = registry.embed(model, texts, cancel=req.cancel) if texts else ([], 0, 0)
    data = [{"object": "embedding", "embedding": _encoded(normalize(v[:dims] if dims else v), fmt), "index": i}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": count, "total_tokens": count}}


def _embedding_texts(value: Any, model: ServedModel) -> list[str]:
    """OpenAI's embedding inputs: a string, strings, token ids, or lists of token ids. Token ids are
    the served model's own (as llama.cpp's server takes them), turned back into text to embed."""
    if isinstance(value, list) and value and all(is_int(t) for t in value):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(t, list) for t in value):
        if not all(t and all(is_int(i) for i in t) for t in value):
            raise HTTPError(400, "input token arrays must be non-empty lists of integers")
        try:
            return [model.vocab.detokenize(t) for t in value]
        except ValueError:  # an id outside the vocabulary, refused before it reaches llama.cpp
            raise HTTPError(400, "input contains a token id outside the model's vocabulary") from None
    return embed_inputs(value)


def _encoded(vector: list[float], fmt: str | None) -> list[float] | str:
    if fmt != "base64":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _model_object(model: ServedModel) -> dict:
    """A model as /v1/models lists it."""
    return {"id": model.name, "object": "model", "created": int(model.gguf.stat().st_mtime), "owned_by": "library"}


def _messages(raw: Any) -> list[dict[str, str]]:
    """OpenAI messages for the chat template: text parts joined, `developer` treated as `system`."""
    if not isinstance(raw, list) or not raw or not all(isinstance(m, dict) for m in raw):
        raise HTTPError(400, "messages must be a non-empty list of message objects")
    out = []
    for m in raw:
        content = m.get("content") or ""
        if isinstance(content, list):
            if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
                raise HTTPError(400, "only text content parts are supported")
            content = "\n".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str) or not isinstance(m.get("role", ""), str):
            raise HTTPError(400, "message role and content must be strings")
        role = m.get("role", "user")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def response_format_grammar(fmt: Any) -> Any:
    """A llama.cpp grammar for OpenAI's `response_format` (None: plain text)."""
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return grammar_for("json")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return grammar_for(schema if isinstance(schema, dict) else "json")
    raise HTTPError(400, 'response_format type must be "text", "json_object" or "json_schema"')


def _usage(gen: Generation) -> dict:
    """OpenAI's `usage` object."""
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
            "total_tokens": gen.prompt_tokens + gen.completion_tokens}


def _reply(events: Iterator[str | Done], body: dict, name: str, *, chat: bool) -> dict | Stream:
    """A completion object, or its chunks as a stream when the request asked for one."""
    head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}", "created": int(time.time()),
            "model": name, "system_fingerprint": "fp_toolkit"}
    if body.get("stream"):
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return Stream(_chunks(events, head, chat=chat, usage=usage), sse=True)
    gen = drain(events).gen
    choice = {"index": 0, "finish_reason": gen.finish_reason, "logprobs": None}
    choice |= {"message": {"role": "assistant", "content": gen.text}} if chat else {"text": gen.text}
    kind = "chat.completion" if chat else "text_completion"
    return {"object": kind} | head | {"choices": [choice], "usage": _usage(gen)}


def _chunks(events: Iterator[str | tuple[str, list] | Done], head: dict, *, chat: bool, usage: bool) -> Iterator[dict | str]:
    """OpenAI streaming: a chunk per piece (with its tokens' logprobs when the events are
    `logprobs.streamed`'s pairs), one with finish_reason, optionally one with usage, [DONE]."""
    head = {"object": "chat.completion.chunk" if chat else "text_completion"} | head

    def chunk(text: str, finish: str | None, found: list | None = None) -> dict:
        choice = {"delta": {"role": "assistant", "content": text} if text or not finish else {}} if chat else {"text": text}
        scored = None if found is None else {"content": found, "refusal": None}
        return head | {"choices": [{"index": 0, **choice, "finish_reason": finish, "logprobs": scored}]}

    with contextlib.closing(events):
        for event in events:
            if isinstance(event, Done):
                yield chunk("", event.gen.finish_reason)
                if usage:
                    yield head | {"choices": [], "usage": _usage(event.gen)}
            elif isinstance(event, tuple):
                yield chunk(event[0], None, event[1])
            else:
                yield chunk(event, None)
    yield "[DONE]"
