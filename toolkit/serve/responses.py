"""/v1/responses of `toolkit serve`: the stateless subset of OpenAI's Responses API that Ollama's
OpenAI compatibility serves, on the same models and generation path as /v1/chat/completions.

Taken: `input` as text or as messages (roles user, assistant, system, developer; text content or
`input_text`/`output_text` parts), `instructions` (a system message first), `max_output_tokens`,
`temperature`, `top_p`, `text.format` (text, json_object, json_schema, as structured output),
`stream` (the Responses event sequence, each event named by an `event:` line). `store` is
accepted and nothing is stored (replies say `"store": false`). Refused with a 400 that says so:
what needs state on the server (`previous_response_id`, `conversation`, `background`, stored
`prompt`s) and what toolkit serve does not do (tools, images, files).
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import time
from collections.abc import Iterator
from typing import Any

from toolkit.runtime.generation import Generation
from toolkit.serve.openai_routes import read_request, response_format_grammar
from toolkit.serve.prompt import check_messages, render_gguf
from toolkit.serve.registry import Done, Registry, drain
from toolkit.serve.request import HTTPError, Request, Stream, is_int, openai_params

STATEFUL = ("previous_response_id", "conversation", "prompt")
ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text", "text")


def responses(registry: Registry, req: Request) -> dict | Stream:
    body, name, model = read_request(registry, req, "/v1/responses")
    _refuse_unsupported(body)
    messages = _messages(body.get("input"), body.get("instructions"))
    params = openai_params(_chat_fields(body), registry.base(openai=True))
    check_messages(messages, model.vocab, params.num_ctx)
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    grammar = response_format_grammar(_response_format(fmt)) if fmt is not None else None
    events = registry.generate(model, lambda vocab: render_gguf(vocab, messages), params, grammar=grammar, cancel=req.cancel)
    head = _head(body, name)
    if body.get("stream"):
        return Stream(_events(events, head), sse=True, named=True)
    return _finished(head, drain(events).gen)


def _refuse_unsupported(body: dict) -> None:
    for key in STATEFUL:
        if body.get(key):
            raise HTTPError(400, f"{key} is not supported: toolkit serve stores no responses or conversations "
                                 "(send the whole conversation as input)")
    if body.get("background"):
        raise HTTPError(400, "background is not supported: toolkit serve stores no responses to poll")
    if body.get("tools"):
        raise HTTPError(400, "tools are not supported by toolkit serve")
    max_tokens = body.get("max_output_tokens")
    if max_tokens is not None and (not is_int(max_tokens) or max_tokens < 1):
        raise HTTPError(400, "max_output_tokens must be a positive integer")
    if body.get("instructions") is not None and not isinstance(body["instructions"], str):
        raise HTTPError(400, "instructions must be a string")


def _chat_fields(body: dict) -> dict:
    """The body's decoding fields under their chat-completions names (what `openai_params` reads)."""
    fields = {k: body.get(k) for k in ("temperature", "top_p", "seed", "top_k", "min_p", "repeat_penalty")}
    fields["max_tokens"] = body.get("max_output_tokens")
    return fields


def _response_format(fmt: Any) -> Any:
    """`text.format` as chat's `response_format` (a json_schema's schema sits one level up here)."""
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {"schema": fmt.get("schema")}}
    return fmt


def _messages(raw: Any, instructions: str | None) -> list[dict[str, str]]:
    """`input` (text, or message items) as chat messages, `instructions` first as a system message."""
    out = [{"role": "system", "content": instructions}] if instructions else []
    if isinstance(raw, str) and raw:
        return out + [{"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw or not all(isinstance(m, dict) for m in raw):
        raise HTTPError(400, "input must be a non-empty string or a non-empty list of message items")
    for item in raw:
        kind = item.get("type", "message")
        if kind != "message":
            raise HTTPError(400, f"input items of type {kind!r} are not supported: toolkit serve takes messages only")
        role = item.get("role")
        if role not in ROLES:
            raise HTTPError(400, f"input message role must be one of {', '.join(ROLES)}")
        out.append({"role": "system" if role == "developer" else role, "content": _text(item.get("content"))})
    return out


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or any(not isinstance(p, dict) for p in content):
        raise HTTPError(400, "message content must be a string or a list of content parts")
    if any(p.get("type") not in TEXT_PARTS for p in content):
        raise HTTPError(400, "only text content parts (input_text, output_text) are supported")
    return "\n".join(str(p.get("text", "")) for p in content)


def _head(body: dict, name: str) -> dict:
    """The fields every Response object of this request carries, whatever its status."""
    return {"id": f"resp_{secrets.token_hex(16)}", "object": "response", "created_at": int(time.time()), "model": name,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "temperature": body.get("temperature"), "top_p": body.get("top_p"), "previous_response_id": None,
            "parallel_tool_calls": False, "tool_choice": "none", "tools": [], "store": False, "truncation": "disabled",
            "text": {"format": (body.get("text") or {}).get("format") or {"type": "text"}}, "metadata": body.get("metadata") or {},
            "error": None, "incomplete_details": None, "_message_id": f"msg_{secrets.token_hex(16)}"}


def _message(head: dict, text: str, status: str) -> dict:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status != "in_progress" else []
    return {"type": "message", "id": head["_message_id"], "status": status, "role": "assistant", "content": content}


def _response(head: dict, status: str, output: list[dict], usage: dict | None = None) -> dict:
    return {k: v for k, v in head.items() if not k.startswith("_")} | {"status": status, "output": output, "usage": usage}


def _finished(head: dict, gen: Generation) -> dict:
    """The Response of a finished generation: "incomplete" when it stopped at max_output_tokens."""
    status = "incomplete" if gen.finish_reason == "length" else "completed"
    usage = {"input_tokens": gen.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": gen.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": gen.prompt_tokens + gen.completion_tokens}
    reply = _response(head, status, [_message(head, gen.text, "completed" if status == "completed" else "incomplete")], usage)
    if status == "incomplete":
        reply["incomplete_details"] = {"reason": "max_output_tokens"}
    return reply


def _events(events: Iterator[str | Done], head: dict) -> Iterator[dict]:
    """The Responses stream: created, in_progress, the message item and its text part opened, a
    delta per piece, everything closed again, then completed (or incomplete)."""
    seq = itertools.count()
    ids = {"item_id": head["_message_id"], "output_index": 0}

    def event(kind: str, **fields: Any) -> dict:
        return {"type": f"response.{kind}", "sequence_number": next(seq), **fields}

    yield event("created", response=_response(head, "in_progress", []))
    yield event("in_progress", response=_response(head, "in_progress", []))
    yield event("output_item.added", output_index=0, item=_message(head, "", "in_progress"))
    yield event("content_part.added", **ids, content_index=0, part={"type": "output_text", "text": "", "annotations": []})
    with contextlib.closing(events):  # closing the stream stops the generation and frees the lock
        for piece in events:
            if isinstance(piece, Done):
                final = _finished(head, piece.gen)
                text = piece.gen.text
                yield event("output_text.done", **ids, content_index=0, text=text, logprobs=[])
                yield event("content_part.done", **ids, content_index=0, part=final["output"][0]["content"][0])
                yield event("output_item.done", output_index=0, item=final["output"][0])
                yield event("completed" if final["status"] == "completed" else "incomplete", response=final)
            else:
                yield event("output_text.delta", **ids, content_index=0, delta=piece, logprobs=[])
