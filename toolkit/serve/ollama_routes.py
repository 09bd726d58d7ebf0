"""Ollama's routes of `toolkit serve`: /, /api/version, /api/tags, /api/ps, /api/show,
/api/generate, /api/chat, /api/embed and /api/embeddings.

Replies follow Ollama's API as documented in the conformance material
(shared/conformance/ollama/api-spec.md): NDJSON streams with one object per line, Ollama's
statuses and messages, durations in ns, Go's omitempty for zero metrics. Each route takes the
registry and the request and returns a dict (one JSON object), a `Reply` or a `Stream`.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from toolkit.chat.detect import ollama_template_for
from toolkit.chat.families import default_system_prompt
from toolkit.errors import ConfigError
from toolkit.export.modelfile.writer import build_modelfile
from toolkit.params import DEFAULTS
from toolkit.runtime.backends import LlamaCppBackend
from toolkit.runtime.generation import as_messages
from toolkit.serve import logprobs
from toolkit.serve.presentation import details, listing, stamp
from toolkit.serve.prompt import check_messages, detokenize, render_gguf, render_go, text_limit
from toolkit.serve.registry import Done, Registry, ServedModel, drain, normalize, ns
from toolkit.serve.request import (
    CHAT,
    EMBED,
    EMBEDDINGS,
    GENERATE,
    MESSAGE,
    SHOW,
    HTTPError,
    Reply,
    Request,
    Stream,
    check_fields,
    embed_inputs,
    grammar_for,
    keep_alive_seconds,
    ollama_params,
    parse_body,
)

OLLAMA_VERSION = "0.12.0"  # the Ollama API we follow; clients gate features on /api/version


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _piece(name: str, text: str, *, chat: bool) -> dict:
    reply = {"model": name, "created_at": _now()}
    reply |= {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
    return reply | {"done": False}


def _final(name: str, done: Done, started: float, *, chat: bool, text: str) -> dict:
    reply = _piece(name, text, chat=chat) | {"done": True, "done_reason": done.gen.finish_reason}
    if done.context is not None:
        reply["context"] = done.context
    metrics = {"total_duration": ns(time.perf_counter() - started), "load_duration": done.load_ns,
               "prompt_eval_count": done.gen.prompt_tokens, "prompt_eval_duration": done.prompt_ns,
               "eval_count": done.gen.completion_tokens, "eval_duration": done.eval_ns}
    return reply | {k: v for k, v in metrics.items() if v}  # Go's omitempty: zero metrics are left out


def _ollama_stream(events: Iterator[str | tuple[str, list] | Done], name: str, started: float, *, chat: bool) -> Iterator[dict]:
    """NDJSON chunks of text pieces, or of (piece, its tokens' logprobs) from `logprobs.streamed`."""
    with contextlib.closing(events):  # closing the stream stops the generation and frees the lock
        for event in events:
            if isinstance(event, Done):
                yield _final(name, event, started, chat=chat, text="")
            elif isinstance(event, tuple):
                yield _piece(name, event[0], chat=chat) | {"logprobs": event[1]}
            else:
                yield _piece(name, event, chat=chat)


def _answer(registry: Registry, req: Request, body: dict, model: ServedModel, events: Iterator[str | Done],
            prompt: Callable[[], str], *, chat: bool) -> dict | Stream:
    """The reply, streamed unless `stream: false`; with `logprobs`, its tokens' log-probabilities
    from the scorer (toolkit.serve.logprobs) after `prompt()`, the text the model was given."""
    sent, top = body.get("model", ""), body.get("top_logprobs") or 0
    if body.get("stream", True):
        if body.get("logprobs"):
            events = logprobs.streamed(registry, model, prompt(), events, top, req.cancel)
        return Stream(_ollama_stream(events, sent, req.started, chat=chat))
    done = drain(events)
    reply = _final(sent, done, req.started, chat=chat, text=done.gen.text)
    if body.get("logprobs"):
        reply["logprobs"] = logprobs.for_reply(registry, model, prompt(), done.gen.text, top, req.cancel)
    return reply


def _typed(value: str) -> Any:
    """llama.cpp reports GGUF metadata as strings; /api/show's model_info has typed values."""
    if value in ("true", "false"):
        return value == "true"
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    if re.fullmatch(r"-?(\d+\.\d*|\.\d+)([eE][-+]?\d+)?|-?\d+[eE][-+]?\d+", value):
        return float(value)
    return value


def _refuse(body: dict, model: ServedModel, sent: str) -> None:
    """400 for what this model or server cannot do, with Ollama's messages where it has one."""
    if body.get("think") not in (None, False, ""):
        raise HTTPError(400, f'"{sent}" does not support thinking')
    top = body.get("top_logprobs")
    if top is not None and not 0 <= top <= 20:
        raise HTTPError(400, "top_logprobs must be between 0 and 20")
    logprobs.check_request(body)
    for key, capability in (("tools", "tools"), ("suffix", "insert"), ("images", "vision")):
        if body.get(key):
            raise HTTPError(400, f"{model.name} does not support {capability}")


def _messages(raw: list[dict], model: ServedModel) -> list[dict[str, str]]:
    """Chat messages for the template: roles lowercased, content defaulting to "" as in Ollama."""
    out = []
    for message in raw:
        message = check_fields(message, "Message.messages", MESSAGE)
        if message.get("images"):
            raise HTTPError(400, f"{model.name} does not support vision")
        out.append({"role": message.get("role", "").lower(), "content": message.get("content", "")})
    return out


def _generate_prompt(body: dict, vocab: LlamaCppBackend, num_ctx: int) -> str:
    """What llama.cpp sees for /api/generate: `context` tokens, then the prompt through the
    template (the GGUF's, or the request's Go `template`, run within bounds), or the prompt
    as-is when raw."""
    if body.get("raw"):
        return body["prompt"]
    messages = as_messages(body["prompt"], body.get("system") or None)
    if body.get("template"):
        text = render_go(body["template"], messages, text_limit(vocab, num_ctx))
    else:
        text = render_gguf(vocab, messages)
    return detokenize(vocab, body["context"]) + text if body.get("context") else text


def _parameters(n_ctx: int, stops: list[str]) -> dict[str, Any]:
    return {"stop": stops, "num_ctx": n_ctx, "temperature": DEFAULTS.temperature, "top_k": DEFAULTS.top_k,
            "top_p": DEFAULTS.top_p, "repeat_penalty": DEFAULTS.repeat_penalty}


def _parameters_text(params: Mapping[str, Any]) -> str:
    """Ollama's `parameters`: one `fmt.Sprintf("%-30s %#v", key, value)` line per value."""
    lines = []
    for key, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            shown = json.dumps(item, ensure_ascii=False) if isinstance(item, str) else repr(item)
            lines.append(f"{key:<30} {shown}")
    return "\n".join(lines)


def _modelfile(model: ServedModel, params: dict[str, Any], found: tuple[str, tuple[str, ...]] | None) -> str:
    """A Modelfile that rebuilds this model in Ollama (`ollama create -f`), when the chat template
    belongs to a family Ollama ships a Go template for (`found`: its Go template and stops);
    otherwise just its FROM line. A model served with a LoRA gets its ADAPTER line too."""
    head = f'# Modelfile generated by "toolkit serve"\n# FROM {model.name} builds on this model\n\n'
    # file names only: where the server keeps its files is not the client's business
    adapter = model.lora.name if model.lora is not None else None
    jinja = model.meta.get("tokenizer.chat_template", "")
    if found is not None:
        extra = {k: v for k, v in params.items() if k != "stop"}
        with contextlib.suppress(ConfigError):
            return head + build_modelfile(from_=model.gguf.name, template=found[0], stops=found[1],
                                          system=default_system_prompt(jinja), parameters=extra,
                                          license=model.meta.get("general.license"), adapter=adapter)
    return head + f"FROM {model.gguf.name}\n" + (f"ADAPTER {adapter}\n" if adapter else "")


# -- models ------------------------------------------------------------------------------------


def root(registry: Registry, req: Request) -> Reply:
    return Reply(200, b"Ollama is running", "text/plain; charset=utf-8")


def version(registry: Registry, req: Request) -> dict:
    return {"version": OLLAMA_VERSION}


def tags(registry: Registry, req: Request) -> dict:
    return {"models": [listing(m) for m in registry.models.values()]}


def ps(registry: Registry, req: Request) -> dict:
    forever = (datetime.now(timezone.utc) + timedelta(days=36500)).isoformat().replace("+00:00", "Z")
    running = []
    for model in registry.models.values():
        backend = model.backend  # one read: an unload may run concurrently
        if backend is not None:  # models stay until keep_alive 0 or exit, so never expire
            running.append(listing(model) | {"expires_at": forever, "size_vram": 0, "context_length": backend.n_ctx})
    return {"models": [{k: v for k, v in m.items() if k != "modified_at"} for m in running]}


def show(registry: Registry, req: Request) -> dict:
    body = parse_body(req.body, "ShowRequest", SHOW)
    name = body.get("model") or body.get("name") or ""
    if not name:
        raise HTTPError(400, "model is required")
    model = registry.get(name)

    jinja = model.meta.get("tokenizer.chat_template", "")
    found = ollama_template_for(jinja) if jinja else None
    params = _parameters(registry.n_ctx, list(found[1]) if found else [])
    info = {k: _typed(v) for k, v in sorted(model.meta.items()) if k not in ("general.name", "tokenizer.chat_template")}
    return {"license": model.meta.get("general.license", ""), "modelfile": _modelfile(model, params, found),
            "parameters": _parameters_text(params), "template": jinja,
            "details": details(model), "model_info": info, "capabilities": ["completion"],
            "modified_at": stamp(model.gguf)}


# -- generation --------------------------------------------------------------------------------


def _load_or_unload(registry: Registry, model: ServedModel, body: dict, reply: dict, req: Request) -> dict:
    """An empty prompt (or no messages) loads the model, with the request's num_ctx; with
    keep_alive 0 it unloads it."""
    keep = keep_alive_seconds(body.get("keep_alive"))
    if keep == 0:
        registry.unload(model, req.cancel)
    else:
        registry.load(model, ollama_params(body.get("options", {}), registry.base()).num_ctx, req.cancel)
    return reply | {"done": True, "done_reason": "unload" if keep == 0 else "load"}


def generate(registry: Registry, req: Request) -> dict | Stream:
    body = parse_body(req.body, "GenerateRequest", GENERATE)
    sent = body.get("model", "")
    model = registry.get(sent)
    _refuse(body, model, sent)
    raw = body.get("raw", False)
    if raw and (body.get("template") or body.get("system") or body.get("context")):
        raise HTTPError(400, "raw mode does not support template, system, or context")
    if not body.get("prompt"):
        return _load_or_unload(registry, model, body, {"model": sent, "created_at": _now(), "response": ""}, req)
    params = ollama_params(body.get("options", {}), registry.base())
    check_messages([{"content": body.get(k)} for k in ("system", "prompt")], model.vocab, params.num_ctx)
    if len(body.get("context") or ()) >= params.num_ctx:
        raise HTTPError(400, f"context has {len(body['context'])} tokens, more than num_ctx ({params.num_ctx}) can hold")
    events = registry.generate(model, lambda vocab: _generate_prompt(body, vocab, params.num_ctx), params,
                               grammar=grammar_for(body.get("format")), want_context=not raw,
                               unload=keep_alive_seconds(body.get("keep_alive")) == 0, cancel=req.cancel)
    return _answer(registry, req, body, model, events, lambda: _generate_prompt(body, model.vocab, params.num_ctx), chat=False)


def chat(registry: Registry, req: Request) -> dict | Stream:
    body = parse_body(req.body, "ChatRequest", CHAT)
    sent = body.get("model", "")
    if not sent:
        raise HTTPError(400, "model is required")
    model = registry.get(sent)
    _refuse(body, model, sent)
    messages = _messages(body.get("messages", []), model)
    if not messages:
        reply = {"model": sent, "created_at": _now(), "message": {"role": "assistant", "content": ""}}
        return _load_or_unload(registry, model, body, reply, req)
    params = ollama_params(body.get("options", {}), registry.base())
    check_messages(messages, model.vocab, params.num_ctx)
    events = registry.generate(model, lambda vocab: render_gguf(vocab, messages), params,
                               grammar=grammar_for(body.get("format")),
                               unload=keep_alive_seconds(body.get("keep_alive")) == 0, cancel=req.cancel)
    return _answer(registry, req, body, model, events, lambda: render_gguf(model.vocab, messages), chat=True)


# -- embeddings --------------------------------------------------------------------------------


def embed(registry: Registry, req: Request) -> dict:
    body = parse_body(req.body, "EmbedRequest", EMBED)
    sent = body.get("model", "")
    model = registry.get(sent)
    texts = embed_inputs(body.get("input"))
    dims = body.get("dimensions")
    if dims is not None and dims < 1:
        raise HTTPError(400, "dimensions must be a positive number")
    if not texts:
        return {"model": sent, "embeddings": []}
    vectors, count, load_ns = registry.embed(model, texts, truncate=body.get("truncate", True), cancel=req.cancel)
    vectors = [normalize(v[:dims] if dims else v) for v in vectors]  # Ollama: L2-normalised, then cut
    metrics = {"total_duration": ns(time.perf_counter() - req.started), "load_duration": load_ns, "prompt_eval_count": count}
    return {"model": sent, "embeddings": vectors} | {k: v for k, v in metrics.items() if v}


def embeddings(registry: Registry, req: Request) -> dict:
    """The legacy endpoint: one prompt, one vector, not normalised (as Ollama's)."""
    body = parse_body(req.body, "EmbeddingRequest", EMBEDDINGS)
    model = registry.get(body.get("model", ""))
    if not body.get("prompt"):
        return {"embedding": []}
    vectors, _, _ = registry.embed(model, [body["prompt"]], cancel=req.cancel)
    return {"embedding": vectors[0]}

