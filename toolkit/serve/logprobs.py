"""Token log-probabilities from `toolkit serve`: /v1/completions with `echo` and `logprobs` in the
legacy OpenAI shape lm-evaluation-harness reads, and the `/tokenize`, `/detokenize` and
`/tokenizer_info` endpoints its `local-completions` model tokenizes with.

The numbers come from the same scorer as `toolkit eval` in process (`toolkit.runtime.scoring`), one
per served model, made on first use and run on the server's compute thread. A prompt given as
text follows the BOS rule; a prompt given as token ids (what `local-completions` sends) is taken
exactly as given, no BOS added. With logprobs, the completion is greedy (temperature 0, as the
harness asks): `max_tokens` 0 scores the prompt alone, 1 (the harness's) adds the next token, an
end-of-generation token included (the harness drops the last token, so it must be there).

Chat replies (/api/chat, /api/generate, /v1/chat/completions) get `logprobs` the same way: the reply
as generated, tokenized as the model reads it back and scored after its prompt, streamed or not.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

from toolkit.runtime.scoring import Scorer, Step
from toolkit.serve.registry import Done, Registry, ServedModel
from toolkit.serve.request import HTTPError, Request, is_int, parse_json

MAX_TOP = 20  # top_logprobs per position, as OpenAI's legacy completions allow at most 5 (llama-server 10+)
_made = threading.Lock()


def wants_logprobs(body: dict) -> bool:
    """A /v1/completions body this module answers: echo, or logprobs asked for."""
    return bool(body.get("echo")) or body.get("logprobs") not in (None, False)


def scorer(registry: Registry, model: ServedModel):
    """The model's scorer, made once (on the compute thread, as every llama.cpp computation is)."""
    with _made:
        made = getattr(model, "scorer", None)
        if made is None:
            n_ctx = max(registry.n_ctx, min(model.trained_ctx() or registry.n_ctx, 8192))
            made = registry.compute.call(Scorer, model.gguf, lora=model.lora, n_ctx=n_ctx, n_threads=registry.n_threads)
            model.scorer = made
        return made


def _prompts(prompt: Any) -> list[str | list[int]]:
    """OpenAI's prompt forms: a text, token ids, or a list of either."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(is_int(t) for t in prompt)):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise HTTPError(400, "prompt must be a non-empty string, a list of token ids, or a list of those")
    for p in prompt:
        if isinstance(p, str) and p:
            continue
        if isinstance(p, list) and p and all(is_int(t) and t >= 0 for t in p):
            continue
        raise HTTPError(400, "each prompt must be a non-empty string or a non-empty list of token ids")
    return prompt


def completion(registry: Registry, req: Request, body: dict, name: str, model: ServedModel) -> dict:
    """A `text_completion` whose choices carry `logprobs` {tokens, token_logprobs, top_logprobs, text_offset}."""
    if body.get("stream"):
        raise HTTPError(400, "stream is not supported with echo or logprobs")
    max_tokens = body.get("max_tokens", 16)
    if not is_int(max_tokens) or max_tokens < 0:
        raise HTTPError(400, "max_tokens must be a non-negative integer")
    temperature = body.get("temperature", 1)
    if max_tokens > 0 and temperature not in (0, 0.0):
        raise HTTPError(400, "with logprobs, toolkit serve completes greedily: send temperature 0 (or max_tokens 0)")
    top = body.get("logprobs") or 0
    if body.get("logprobs") is True:
        top = 1
    if not is_int(top) or not 0 <= top <= MAX_TOP:
        raise HTTPError(400, f"logprobs must be an integer 0..{MAX_TOP}")
    echo = bool(body.get("echo"))
    engine = scorer(registry, model)
    choices, prompt_total, completion_total = [], 0, 0
    for index, prompt in enumerate(_prompts(body.get("prompt"))):
        tokens = engine.tokenize(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if any(t >= engine.n_vocab for t in tokens):
            raise HTTPError(400, f"token ids must be below the vocabulary size ({engine.n_vocab})")
        # a BOS the rule added is not in the text: it is echoed as an empty string, so offsets match the text
        added_bos = isinstance(prompt, str) and tokens[:1] != engine.tokenize(prompt, add_bos=False)[:1]
        if len(tokens) + max_tokens > engine.n_ctx:
            raise HTTPError(400, f"the prompt ({len(tokens)} tokens) + max_tokens exceed the context length ({engine.n_ctx})")
        with registry._queued(), registry._locked(req.cancel):
            steps, generated = registry.compute.call(engine.trace, tokens, max_tokens, top=top)
        stopped = bool(generated) and engine.is_eog(generated[-1].token)
        choices.append(_choice(engine, index, tokens, steps, generated, echo=echo, hidden_bos=added_bos,
                               stopped=stopped or not generated))
        prompt_total += len(tokens)
        completion_total += len(generated)
    return {"id": "cmpl-" + secrets.token_hex(12), "object": "text_completion", "created": int(time.time()), "model": name,
            "choices": choices, "usage": {"prompt_tokens": prompt_total, "completion_tokens": completion_total,
                                          "total_tokens": prompt_total + completion_total}}


def _choice(engine, index: int, tokens: list[int], steps: list, generated: list, *, echo: bool, hidden_bos: bool,
            stopped: bool) -> dict:
    """One choice: the echoed prompt (its first token has no log-probability) and the new tokens."""
    shown = list(zip(tokens, [None, *steps])) if echo else []
    shown += [(s.token, s) for s in generated]
    pieces = [b"" if (hidden_bos and echo and i == 0) else engine.piece(t) for i, (t, _) in enumerate(shown)]
    offsets, seen = [], b""
    for piece in pieces:  # character offsets of whole characters, as the text shows them
        offsets.append(len(seen.decode("utf-8", "ignore")))
        seen += piece
    if stopped and generated:  # an end-of-generation token is reported but is not text, as OpenAI's stop
        seen = seen[:len(seen) - len(pieces[-1])]
    strings = [p.decode("utf-8", "replace") for p in pieces]
    top_logprobs = []
    for _, step in shown:
        if step is None:
            top_logprobs.append(None)
            continue
        best: dict[str, float] = {}
        for token, lp in step.top:
            text = engine.piece(token).decode("utf-8", "replace")
            best[text] = max(lp, best.get(text, float("-inf")))
        top_logprobs.append(best)
    return {"index": index, "text": seen.decode("utf-8", "replace"), "finish_reason": "stop" if stopped else "length",
            "logprobs": {"tokens": strings, "token_logprobs": [None if s is None else s.logprob for _, s in shown],
                         "top_logprobs": top_logprobs, "text_offset": offsets}}


def _model_of(registry: Registry, body: dict) -> ServedModel:
    name = body.get("model")
    if name is None:
        return next(iter(registry.models.values()))
    if not isinstance(name, str):
        raise HTTPError(400, "model must be a string")
    return registry.get(name)


def _body(req: Request) -> dict:
    body = parse_json(req.body) if req.body else {}
    if not isinstance(body, dict):
        raise HTTPError(400, "request body must be a JSON object")
    return body


def tokenize(registry: Registry, req: Request) -> dict:
    """POST /tokenize {prompt | content, add_special_tokens?, model?}: the served model's token ids
    (special-token text read as those tokens; BOS only when add_special_tokens is true and the GGUF adds it)."""
    body = _body(req)
    text = body.get("prompt", body.get("content"))
    if not isinstance(text, str):
        raise HTTPError(400, "prompt (or content) must be a string")
    model = _model_of(registry, body)
    tokens = scorer(registry, model).tokenize(text, add_bos=None if body.get("add_special_tokens", True) else False) if text else []
    return {"tokens": tokens, "count": len(tokens), "max_model_len": model.trained_ctx() or registry.n_ctx}


def detokenize(registry: Registry, req: Request) -> dict:
    """POST /detokenize {tokens, model?}: the text of token ids."""
    body = _body(req)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(is_int(t) and t >= 0 for t in tokens):
        raise HTTPError(400, "tokens must be a list of token ids")
    engine = scorer(registry, _model_of(registry, body))
    return {"prompt": b"".join(engine.piece(t) for t in tokens).decode("utf-8", "replace")}


def tokenizer_info(registry: Registry, req: Request) -> dict:
    """GET /tokenizer_info: the special tokens' texts and the context length (vLLM's endpoint)."""
    model = _model_of(registry, _body(req) if req.method == "POST" else {})
    engine = scorer(registry, model)
    text = lambda token: None if token is None else engine.piece(token).decode("utf-8", "replace")  # noqa: E731
    return {"tokenizer_class": "llama.cpp", "bos_token": text(engine.bos), "eos_token": text(engine.eos), "pad_token": None,
            "add_bos_token": engine.adds_bos, "model_max_length": model.trained_ctx() or registry.n_ctx,
            "chat_template": model.meta.get("tokenizer.chat_template")}


# -- log-probabilities of a chat reply (/api/chat, /api/generate, /v1/chat/completions) ----------


def reply_steps(registry: Registry, model: ServedModel, prompt: str, text: str, top: int, cancel=None) -> list:
    """The reply's tokens scored after the prompt (its text tokenized as the model reads it back),
    each with its log-probability and the `top` best: what `logprobs: true` reports."""
    engine = scorer(registry, model)
    reply = engine.tokenize(text, add_bos=False) if text else []
    if not reply:
        return []
    tokens = engine.tokenize(prompt)
    with registry._queued(), registry._locked(cancel):
        scored = registry.compute.call(engine.score, tokens, [reply], top=top)[0]
    return [Step(t, lp, best or []) for t, lp, best in zip(reply, scored.logprobs, scored.top or [None] * len(reply))]


def _entry(engine, token: int, logprob: float) -> dict:
    piece = engine.piece(token)
    return {"token": piece.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(piece)}


def entries(registry: Registry, model: ServedModel, steps: list, top: int) -> list[dict]:
    """Ollama's `logprobs` list and OpenAI's `logprobs.content`: token, logprob, bytes, top_logprobs."""
    engine = scorer(registry, model)
    return [_entry(engine, s.token, s.logprob) | {"top_logprobs": [_entry(engine, t, lp) for t, lp in s.top[:top]]} for s in steps]


def check_request(body: dict, *, top_key: str = "top_logprobs") -> int | None:
    """The number of top log-probabilities a chat request asks for, None when it asks for none;
    a 400 for a bad count, or a count without logprobs."""
    if not body.get("logprobs"):
        if body.get(top_key):
            raise HTTPError(400, f"{top_key} needs logprobs: true")
        return None
    top = body.get(top_key) or 0
    if not is_int(top) or not 0 <= top <= MAX_TOP:
        raise HTTPError(400, f"{top_key} must be between 0 and {MAX_TOP}")
    return int(top)


def for_reply(registry: Registry, model: ServedModel, prompt: str, text: str, top: int, cancel=None) -> list[dict]:
    """The entries of a reply's tokens (`reply_steps` then `entries`)."""
    return entries(registry, model, reply_steps(registry, model, prompt, text, top, cancel), top)


def streamed(registry: Registry, model: ServedModel, prompt: str, events: Iterator[str | Done], top: int,
             cancel=None) -> Iterator[tuple[str, list[dict]] | Done]:
    """A streamed reply with `logprobs`: each piece of the generation with the entries of the reply
    tokens it completes, then the generation's `Done`. The reply is scored whole, once it has ended,
    by `for_reply` as a non-streamed one is (one at a time, the generation holds the lock and the
    compute thread while it runs, so its tokens cannot be scored as they come): the chunks follow the
    generation's end, and their entries joined are the non-streamed reply's, token for token."""
    pieces: list[str] = []
    done = None
    with contextlib.closing(events):  # a client that leaves stops the generation
        for event in events:
            if isinstance(event, Done):
                done = event
            else:
                pieces.append(event)
    found = for_reply(registry, model, prompt, "".join(pieces), top, cancel)
    yield from zip(pieces, _shares(pieces, found))
    if done is not None:
        yield done


def _shares(pieces: list[str], found: list[dict]) -> list[list[dict]]:
    """Each piece's entries: a token goes with the piece its last byte arrives in; one past the
    pieces' text (a byte the tokenizer adds, such as a leading space) goes with the last piece."""
    ends, total = [], 0
    for piece in pieces:
        total += len(piece.encode("utf-8"))
        ends.append(total)
    shares: list[list[dict]] = [[] for _ in pieces]
    at = index = 0
    for entry in found:
        at += len(entry["bytes"])
        while index < len(ends) - 1 and ends[index] < at:
            index += 1
        shares[index].append(entry)
    return shares
