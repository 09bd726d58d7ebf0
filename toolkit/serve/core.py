"""`toolkit serve`: Ollama's REST API (and OpenAI's /v1 routes) on the in-process llama.cpp backend.

Users without Ollama get an endpoint that the official `ollama` client and OpenAI-style clients
talk to unchanged: `/api/generate`, `/api/chat`, `/api/tags`, `/api/show`, `/api/ps`,
`/api/version`, `/api/embed`, `/api/embeddings`, `/v1/chat/completions`, `/v1/completions`,
`/v1/models`, `/v1/embeddings`. Replies follow Ollama's API as documented in the conformance
material (shared/conformance/ollama/api-spec.md): NDJSON streams with one object per line and no
blank lines, `{"error": ...}` bodies with Ollama's statuses and messages, durations in ns.

Request options become `DecodingParams` (`ollama_params`, `openai_params`), so the bounds and
names are the ones the rest of the toolkit uses. Only the standard library HTTP stack is used.
Requests are parsed on parallel threads. By default generation is serialised by one lock, as
Ollama's default OLLAMA_NUM_PARALLEL=1 does. With `parallel` > 1 (`--parallel`), plain generations
(no structured output) from several clients decode together in one llama.cpp batch (`_Engine`,
`toolkit.runtime.batched`): several times the total throughput on a CPU, same texts per seed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import queue
import random
import re
import secrets
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from toolkit.errors import ConfigError, DataError, ToolkitError
from toolkit.params import DEFAULTS, OLLAMA_OPTION_TYPES, SPECS, DecodingParams
from toolkit.runtime.backends import LlamaCppBackend
from toolkit.runtime.generation import MAX_PARALLEL, Generation, as_messages

log = logging.getLogger("toolkit.serve.core")

OLLAMA_VERSION = "0.12.0"  # the Ollama API we follow; clients gate features on /api/version
MAX_BODY = 64 << 20
EMBED_CTX = 512  # llama.cpp embeds one sequence per batch: longer inputs are truncated to this
NOT_STORED = ("/api/create", "/api/pull", "/api/push", "/api/copy", "/api/delete")
# general.file_type (llama_ftype) -> Ollama's quantization_level
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
              11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
              17: "Q5_K_M", 18: "Q6_K", 30: "IQ4_XS", 32: "BF16"}
_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?(:[\w][\w.\-]*)?$")


class HTTPError(Exception):
    """A reply with a non-2xx status and `{"error": message}` (the /v1 routes wrap it OpenAI's way)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def ollama_name(name: str) -> str:
    """`name` with Ollama's default tag: `smollm2` -> `smollm2:latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def _human(count: str) -> str:
    """A parameter count the way Ollama shows it: 134515008 -> "134.52M"."""
    if not count.isdigit():
        return ""
    n = int(count)
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.2f}K"


def _stamp(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat().replace("+00:00", "Z")


# ----------------------------------------------------------------------------------------------
# Models: loaded once, reused; one lock, one compute thread
# ----------------------------------------------------------------------------------------------


@dataclass
class Done:
    """The end of a generation: the backend's `Generation` and the timings Ollama reports (ns)."""

    gen: Generation
    load_ns: int
    prompt_ns: int
    eval_ns: int
    context: list[int] | None = None


@dataclass
class ServedModel:
    """One model as clients see it: an Ollama name over a GGUF file."""

    name: str  # with its tag, e.g. "smollm2:latest"
    gguf: Path
    meta: dict[str, str] = field(default_factory=dict)  # GGUF metadata, kept after an unload
    backend: LlamaCppBackend | None = None
    embedder: Any = None  # a second llama.cpp context with embeddings on, made on first use
    engine: _Engine | None = None  # the batched generator when serving with parallel > 1
    _digest: str | None = None

    def digest(self) -> str:
        if self._digest is None:  # hashing ~100 MB takes a moment: once, and only when asked
            from toolkit.models import file_digest

            self._digest = file_digest(self.gguf)
        return self._digest

    def trained_ctx(self) -> int | None:
        value = self.meta.get(f"{self.meta.get('general.architecture', '')}.context_length", "")
        return int(value) if value.isdigit() else None

    def details(self) -> dict[str, Any]:
        arch = self.meta.get("general.architecture", "")
        file_type = self.meta.get("general.file_type", "")
        level = FILE_TYPES.get(int(file_type), f"type {file_type}") if file_type.isdigit() else "unknown"
        return {"parent_model": "", "format": "gguf", "family": arch, "families": [arch] if arch else [],
                "parameter_size": self.meta.get("general.size_label") or _human(self.meta.get("general.parameter_count", "")),
                "quantization_level": level}

    def listing(self) -> dict[str, Any]:
        """The model as /api/tags lists it."""
        return {"name": self.name, "model": self.name, "modified_at": _stamp(self.gguf),
                "size": self.gguf.stat().st_size, "digest": self.digest(), "details": self.details()}


class _Compute:
    """The one thread that runs every llama.cpp computation of the server.

    llama.cpp computes with OpenMP, and libgomp keeps a team of threads for each thread that ever
    computed. Once two have, more threads are alive than there are cores, libgomp stops spinning
    at its barriers, and every decode runs at about half speed (measured on 2 cores: 53 -> 27
    tok/s, for good, even when only one computes at a time). So request threads never compute:
    they hand work here. Tasks run one after another, in order.
    """

    def __init__(self) -> None:
        self._tasks: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="llama-compute", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any):
        """Queue `fn(*args, **kwargs)`; a Future of its result."""
        from concurrent.futures import Future

        future: Future = Future()
        self._tasks.put((future, fn, args, kwargs))
        return future

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn` on the compute thread; its result, or its error raised here."""
        return self.submit(fn, *args, **kwargs).result()

    def iterate(self, make: Callable[[], Iterator[Any]]) -> Iterator[Any]:
        """The items of `make()`, computed on the compute thread and yielded here as they come. A
        caller that stops early stops the computation, and waits until it has stopped."""
        items: queue.Queue = queue.Queue()
        stop = threading.Event()
        end = object()

        def work() -> None:
            with contextlib.closing(make()) as source:
                for item in source:
                    items.put(item)
                    if stop.is_set():
                        return

        task = self.submit(work)
        task.add_done_callback(lambda _: items.put(end))
        try:
            while (item := items.get()) is not end:
                yield item
            task.result()  # raises the computation's error, if any
        finally:
            stop.set()
            if not task.cancel():
                task.exception()  # wait: the caller may free what the computation uses

    def busy(self) -> bool:
        """Whether other tasks are waiting (a batch then stops taking requests, see `_Engine`)."""
        return not self._tasks.empty()

    def _run(self) -> None:
        while (task := self._tasks.get()) is not None:
            future, fn, args, kwargs = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:
                    future.set_exception(exc)

    def close(self) -> None:
        self._tasks.put(None)
        self._thread.join(timeout=600)


class _Engine:
    """A model's batched generator (`toolkit.runtime.batched`): requests from several connections decode
    together in its `parallel` slots, as in Ollama with OLLAMA_NUM_PARALLEL. Each request gets its
    text pieces as they are final, then its Completion.

    Requests queue here; a batch runs as one task on the compute thread while requests keep
    joining it. It stops taking new ones when other tasks wait (a structured-output request, an
    embedding, another model's batch), so none waits for long, and is queued again after them.
    `enqueue` and `close` run under the registry's lock.
    """

    def __init__(self, gguf: Path, compute: _Compute, *, n_ctx: int, parallel: int, n_threads: int | None):
        from toolkit.runtime.batched import BatchedGenerator

        self.n_ctx = n_ctx
        self.gen = BatchedGenerator(gguf, n_ctx_per_seq=n_ctx, n_parallel=parallel, n_threads=n_threads)
        self._compute = compute
        self._pending: deque = deque()  # (Job, replies) not started yet
        self._waiting: dict[int, queue.Queue] = {}  # started: key -> replies
        self._gone: set = set()  # requests whose client went away: dropped from the batch
        self._keys = itertools.count()
        self._scheduled = False  # a batch task is queued or running
        self._guard = threading.Lock()  # for _pending and _scheduled, shared with the compute thread

    def enqueue(self, text: str, params: DecodingParams) -> tuple[int, queue.Queue]:
        from toolkit.runtime.batched import Job

        key, replies = next(self._keys), queue.Queue()
        job = Job(key, self.gen.tokenize(text), params, on_text=replies.put)
        with self._guard:
            self._pending.append((job, replies))
            if not self._scheduled:
                self._scheduled = True
                self._compute.submit(self._batch)
        return key, replies

    def replies(self, key: int, replies: queue.Queue) -> Iterator[Any]:
        """Text pieces, then the Completion; a consumer that stops early drops the request."""
        from toolkit.runtime.batched import Completion

        done = False
        try:
            while not done:
                item = replies.get()
                if isinstance(item, BaseException):
                    done = True
                    raise item
                done = isinstance(item, Completion)
                yield item
        finally:
            if not done:
                self._gone.add(key)

    def _next(self, drain: bool) -> Any:
        with self._guard:
            if not self._pending or (self._compute.busy() and not drain):
                return None
            job, replies = self._pending.popleft()
        self._waiting[job.key] = replies
        return job

    def _batch(self, drain: bool = False) -> None:
        """On the compute thread: decode the queued requests together until none is left (or, unless
        draining, other tasks wait); then queue another batch for requests still pending."""
        try:
            for key, done in self.gen.stream(lambda: self._next(drain), self._gone.__contains__):
                self._waiting.pop(key).put(done)
                self._gone.discard(key)
        except BaseException as exc:  # every request in the batch gets the error
            for replies in self._waiting.values():
                replies.put(exc)
            self._waiting.clear()
        for key in [k for k in self._waiting if k in self._gone]:  # dropped mid-generation
            del self._waiting[key]
            self._gone.discard(key)
        with self._guard:
            self._scheduled = bool(self._pending) and not drain
            if self._scheduled:
                self._compute.submit(self._batch)

    def close(self) -> None:
        """Finish every request already queued, then free the generator."""
        def finish() -> None:
            self._batch(drain=True)
            self.gen.close()

        self._compute.call(finish)


class _WithGrammar:
    """llama.cpp with a grammar added to every completion (structured outputs)."""

    def __init__(self, llm: Any, grammar: Any):
        self._llm, self._grammar = llm, grammar

    def create_completion(self, *args: Any, **kwargs: Any) -> Any:
        return self._llm.create_completion(*args, grammar=self._grammar, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)


class _Formatted:
    """A view of a `LlamaCppBackend` whose prompt is already text.

    `LlamaCppBackend.stream` renders chat messages with the GGUF template; raw prompts, `context`
    tokens, Go template overrides and /v1/completions arrive formatted. Running the backend's own
    `stream` on this view keeps one implementation of token counting, the context check and the
    finish reasons, whatever the prompt's origin.
    """

    def __init__(self, backend: LlamaCppBackend, text: str, grammar: Any = None):
        self._backend, self._text, self._grammar = backend, text, grammar

    def render(self, messages: list) -> str:
        return self._text

    @property
    def _llm(self) -> Any:
        llm = _llama(self._backend)
        return llm if self._grammar is None else _WithGrammar(llm, self._grammar)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


def _llama(backend: LlamaCppBackend) -> Any:
    """The backend's `llama_cpp.Llama`: the server needs its tokenizer and GGUF metadata too."""
    return backend._llm


def _tokens(backend: LlamaCppBackend, text: str) -> list[int]:
    # exactly as LlamaCppBackend.stream tokenizes, so the counts agree with its context check
    return _llama(backend).tokenize(text.encode(), add_bos=False, special=True)


def _fit(backend: LlamaCppBackend, text: str, params: DecodingParams) -> DecodingParams:
    """Clamp max_tokens to the room left in the context: a long answer then ends with
    done_reason "length", as in Ollama, instead of failing the backend's context check."""
    ctx = min(params.num_ctx, backend.n_ctx)
    used = len(_tokens(backend, text))
    if used == 0:
        raise HTTPError(400, "prompt is empty")
    if used >= ctx:
        raise HTTPError(400, f"the input length ({used} tokens) exceeds the context length ({ctx})")
    return params.replace(num_ctx=ctx, max_tokens=min(params.max_tokens, ctx - used))


class Registry:
    """The served models, loaded up front and reused. `lock` orders loads, unloads and one-at-a-time
    generations; `compute` is the one thread every llama.cpp computation runs on."""

    def __init__(self, models: Mapping[str, str | os.PathLike], *, n_ctx: int = 2048, n_threads: int | None = None,
                 parallel: int = 1):
        from toolkit.models import resolve

        DEFAULTS.replace(num_ctx=n_ctx)  # validates n_ctx before anything loads
        if not 1 <= parallel <= MAX_PARALLEL:
            raise ConfigError(f"--parallel {parallel} is outside 1..{MAX_PARALLEL}", fix="pick how many generations may run at once")
        self.n_ctx = n_ctx
        self.parallel = parallel
        self.compute = _Compute()  # every llama.cpp computation runs on this one thread
        self.n_threads = n_threads  # None: every core this process may use
        self.lock = threading.Lock()
        self.closed = False
        self.models: dict[str, ServedModel] = {}
        for name, spec in models.items():
            full = ollama_name(name)
            if not _NAME.match(full):
                raise ConfigError(f"{name!r} is not a valid model name", fix="use letters, digits, '_', '-', '.' and an optional :tag")
            if full.lower() in self.models:
                raise ConfigError(f"model name {full!r} is given twice", fix="give each model its own --name")
            self.models[full.lower()] = ServedModel(full, resolve(str(spec), hf=False).require_gguf())
        try:
            for model in self.models.values():
                model.backend = self._open(model, n_ctx)
                self._engine(model)  # with parallel > 1: loaded up front, so a failure shows at start
        except BaseException:
            self.close()
            raise

    def get(self, name: str) -> ServedModel:
        model = self.models.get(ollama_name(name).lower()) if name else None
        if model is None:
            raise HTTPError(404, f"model '{name}' not found")
        return model

    def base(self, *, openai: bool = False) -> DecodingParams:
        """Defaults for a request: the toolkit's decoding defaults, a fresh seed (Ollama samples
        differently each time unless asked), answers up to the end of the context (Ollama's
        num_predict -1) and the served context size. OpenAI's own defaults are 1.0 for
        temperature and top_p."""
        base = DEFAULTS.replace(seed=random.randrange(2**31), max_tokens=int(SPECS["max_tokens"].high), num_ctx=self.n_ctx)
        return base.replace(temperature=1.0, top_p=1.0) if openai else base

    def _open(self, model: ServedModel, n_ctx: int) -> LlamaCppBackend:
        import llama_cpp

        backend = LlamaCppBackend(model.gguf, n_ctx=n_ctx, n_threads=self.n_threads)
        llm = _llama(backend)
        if self.n_threads:  # llama-cpp-python evaluates prompts on cpu_count() threads unless told
            llama_cpp.llama_set_n_threads(llm.ctx, self.n_threads, self.n_threads)
        model.meta = dict(llm.metadata) | _parameter_count(llm)
        return backend

    def _ready(self, model: ServedModel, num_ctx: int) -> LlamaCppBackend:
        """The model's backend with room for `num_ctx` (lock held). A larger num_ctx reloads the
        model with that context, capped at the trained one, as Ollama does; it never shrinks."""
        if self.closed:
            raise HTTPError(503, "server is shutting down")
        trained = model.trained_ctx()
        want = min(num_ctx, trained) if trained else num_ctx
        if model.backend is not None and want <= model.backend.n_ctx:
            return model.backend
        n_ctx = max(want, self.n_ctx)
        if model.backend is not None:
            model.backend.close()
            model.backend = None
        model.backend = self._open(model, n_ctx)
        return model.backend

    def load(self, model: ServedModel, num_ctx: int) -> None:
        with self.lock:
            self._ready(model, num_ctx)

    def unload(self, model: ServedModel) -> None:
        with self.lock:
            self._unload(model)

    def _engine(self, model: ServedModel) -> _Engine | None:
        """The model's batched generator (made on first use after an unload), or None when serving
        one generation at a time."""
        if self.parallel > 1 and model.engine is None:
            model.engine = _Engine(model.gguf, self.compute, n_ctx=self.n_ctx, parallel=self.parallel, n_threads=self.n_threads)
        return model.engine

    def _unload(self, model: ServedModel) -> None:
        for part in ("backend", "embedder", "engine"):
            handle = getattr(model, part)
            setattr(model, part, None)
            if handle is not None:
                handle.close()

    def generate(self, model: ServedModel, build: Callable[[LlamaCppBackend], str], params: DecodingParams, *,
                 grammar: Any = None, want_context: bool = False, unload: bool = False,
                 fresh: bool = False) -> Iterator[str | Done]:
        """Text pieces, then a `Done`. One at a time, the lock is held while pieces flow and
        released before `Done`, so a consumer that stops after `Done` never keeps other requests
        waiting; in parallel, the lock is only held to queue the request for the batch.

        `fresh` evaluates the whole prompt instead of reusing llama.cpp's cached prefix. A cached
        prompt re-evaluates only its last token, and a batch of one gives logits that differ in the
        last bits from the full batch, enough to flip a sampled token: a request that asks for
        reproducibility (a seed, or temperature 0) must always take the same path.
        """
        asked = time.perf_counter()
        context = None
        with self.lock:
            backend = self._ready(model, params.num_ctx)
            ready = time.perf_counter()
            text = build(backend)
            fitted = _fit(backend, text, params)
            # together with other requests when serving in parallel, unless it needs what only the
            # one-at-a-time path has: a grammar, an unload after it, or more context than the slots
            engine = self._engine(model) if grammar is None and not unload and fitted.num_ctx <= self.n_ctx else None
            if engine is not None:
                ticket = engine.enqueue(text, fitted)
            else:
                alone = lambda: self._generate_alone(backend, text, fitted, grammar, fresh)  # noqa: E731
                for piece in self.compute.iterate(alone):
                    if isinstance(piece, tuple):
                        final, first, end = piece
                    else:
                        yield piece
                context = _tokens(backend, text + final.text) if want_context else None
                if unload:  # keep_alive 0: the client asked for the memory back after this request
                    self._unload(model)
        if engine is not None:
            first = None
            for item in engine.replies(*ticket):
                if isinstance(item, str):
                    first = first or time.perf_counter()
                    yield item
            end = time.perf_counter()
            first = first or end
            final = item.generation
            if want_context:
                with self.lock:
                    context = _tokens(self._ready(model, fitted.num_ctx), text + final.text)
        yield Done(final, _ns(ready - asked), _ns(first - ready), _ns(end - first), context)

    def _generate_alone(self, backend: LlamaCppBackend, text: str, fitted: DecodingParams, grammar: Any,
                        fresh: bool) -> Iterator[str | tuple[Generation, float, float]]:
        """One generation on the model's own llama.cpp context (compute thread, lock held): its
        pieces, then the final Generation with the times of its first piece and of its end."""
        if fresh:
            _llama(backend).reset()
        first = final = None
        for piece in LlamaCppBackend.stream(_Formatted(backend, text, grammar), [], fitted):  # type: ignore[arg-type]
            if isinstance(piece, Generation):
                final = piece
                continue
            first = first or time.perf_counter()
            yield piece
        if final is None:  # a backend bug, not a user error
            raise RuntimeError("the backend produced no final generation")
        end = time.perf_counter()
        yield final, first or end, end

    def embed(self, model: ServedModel, texts: list[str], *, truncate: bool = True) -> tuple[list[list[float]], int, int]:
        """Mean-pooled embeddings (not normalised), the token count and the load time in ns."""
        if any(not t for t in texts):  # llama.cpp corrupts its heap on an empty sequence
            raise HTTPError(400, "input must not contain empty strings")
        from toolkit.runtime import llamacpp

        asked = time.perf_counter()
        with self.lock:
            if self.closed:
                raise HTTPError(503, "server is shutting down")
            if model.embedder is None:
                model.embedder = llamacpp.load(model.gguf, n_ctx=EMBED_CTX, n_threads=self.n_threads,
                                               n_threads_batch=self.n_threads, embedding=True)
            ready = time.perf_counter()
            try:
                rows, count = self.compute.call(model.embedder.embed, texts, truncate=truncate, return_count=True)
            except ValueError:
                raise HTTPError(400, "the input length exceeds the context length") from None
        return [_mean(r) for r in rows], count, _ns(ready - asked)

    def close(self) -> None:
        """Free every model; waits for a running generation (never frees memory under it)."""
        if not self.lock.acquire(timeout=60):
            log.warning("a generation is still running: models are left to process exit")
            return
        try:
            self.closed = True
            for model in self.models.values():
                self._unload(model)
            self.compute.close()
        finally:
            self.lock.release()


def _parameter_count(llm: Any) -> dict[str, str]:
    """Ollama derives general.parameter_count from the tensors; llama.cpp counts them for us."""
    import llama_cpp

    try:
        return {"general.parameter_count": str(llama_cpp.llama_model_n_params(llm.model))}
    except (AttributeError, TypeError):  # an older or newer llama-cpp-python binding
        return {}


def _mean(rows: list) -> list[float]:
    """One vector per input: llama.cpp returns per-token rows unless the GGUF sets a pooling."""
    if not rows or not isinstance(rows[0], list):
        return list(rows)
    return [sum(col) / len(rows) for col in zip(*rows)]


def _normalize(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


def _grammar(fmt: Any) -> Any:
    """A llama.cpp grammar for Ollama's `format`: "json" or a JSON schema."""
    if fmt in (None, ""):
        return None
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import JSON_GBNF

    if fmt == "json":
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    if isinstance(fmt, dict):
        try:
            return LlamaGrammar.from_json_schema(json.dumps(fmt), verbose=False)
        except Exception as exc:  # the schema converter raises several types for a bad schema
            raise HTTPError(400, f"invalid JSON schema in format: {exc}") from None
    raise HTTPError(400, 'invalid format: expected "json" or a valid JSON schema')


# ----------------------------------------------------------------------------------------------
# Request bodies, with Go's messages so clients see what Ollama would say
# ----------------------------------------------------------------------------------------------

Check = tuple[str, Callable[[Any], bool]]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _list_of(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(test(x) for x in v)


STR: Check = ("string", lambda v: isinstance(v, str))
BOOL: Check = ("bool", lambda v: isinstance(v, bool))
INT: Check = ("int", _is_int)
MAP: Check = ("map[string]interface {}", lambda v: isinstance(v, dict))
LIST: Check = ("[]interface {}", lambda v: isinstance(v, list))
STRS: Check = ("[]string", _list_of(lambda x: isinstance(x, str)))
DURATION: Check = ("api.Duration", lambda v: isinstance(v, (int, float, str)) and not isinstance(v, bool))
THINK: Check = ("api.ThinkValue", lambda v: isinstance(v, (bool, str)))
COMMON = {"model": STR, "stream": BOOL, "keep_alive": DURATION, "options": MAP, "think": THINK, "truncate": BOOL,
          "shift": BOOL, "logprobs": BOOL, "top_logprobs": INT}
GENERATE = COMMON | {"prompt": STR, "suffix": STR, "system": STR, "template": STR, "raw": BOOL, "images": STRS,
                     "context": ("[]int", _list_of(_is_int))}
CHAT = COMMON | {"messages": ("[]api.Message", _list_of(lambda m: isinstance(m, dict))), "tools": LIST}
MESSAGE = {"role": STR, "content": STR, "thinking": STR, "images": STRS, "tool_calls": LIST, "tool_name": STR}
SHOW = {"model": STR, "name": STR, "verbose": BOOL, "system": STR, "template": STR, "options": MAP}
EMBED = {"model": STR, "truncate": BOOL, "dimensions": INT, "options": MAP, "keep_alive": DURATION}
EMBEDDINGS = {"model": STR, "prompt": STR, "options": MAP, "keep_alive": DURATION}


def _kind(v: Any) -> str:
    """A JSON value's kind as Go's decoder names it."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(v), "null")


def _json(raw: bytes) -> Any:
    if not raw.strip():
        raise HTTPError(400, "missing request body")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(exc.doc.rstrip()):
            raise HTTPError(400, "unexpected EOF") from None
        raise HTTPError(400, f"invalid character {exc.doc[exc.pos]!r} looking for beginning of value") from None
    except ValueError:  # not UTF-8
        raise HTTPError(400, "invalid UTF-8 in request body") from None


def _check(body: dict, struct: str, fields: Mapping[str, Check]) -> dict:
    """Type-check known fields like Go's decoder; null means absent, unknown keys are ignored."""
    for key, value in body.items():
        go_type, test = fields.get(key, ("", lambda v: True))
        if value is not None and not test(value):
            raise HTTPError(400, f"json: cannot unmarshal {_kind(value)} into Go struct field {struct}.{key} of type {go_type}")
    return {k: v for k, v in body.items() if v is not None}


def _body(raw: bytes, struct: str, fields: Mapping[str, Check]) -> dict:
    body = _json(raw)
    if not isinstance(body, dict):
        raise HTTPError(400, f"json: cannot unmarshal {_kind(body)} into Go value of type api.{struct}")
    return _check(body, struct, fields)


_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's keep_alive: seconds as a number, or a Go duration string ("5m", "1h30m", "-1s")."""
    if value is None or isinstance(value, (int, float)):
        return value
    text = value.strip()
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    if not body or _DURATION_PART.sub("", body):
        raise HTTPError(400, f'time: invalid duration "{value}"')
    seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(body))
    return -seconds if text.startswith("-") else seconds


# Ollama's options (api.Options and api.Runner) and their Go kinds. Others are ignored, as Ollama
# ignores them; these are type-checked like Ollama's Options.FromMap, with its messages.


def _option(key: str, value: Any) -> Any:
    kind = OLLAMA_OPTION_TYPES[key]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is bool and not isinstance(value, bool):
        raise HTTPError(400, f'option "{key}" must be of type boolean')
    if kind is int and not number:
        raise HTTPError(400, f'option "{key}" must be of type integer')
    if kind is float and not number:
        raise HTTPError(400, f'option "{key}" must be of type float32')
    if kind is list and not isinstance(value, list):
        raise HTTPError(400, f'option "{key}" must be of type array')
    if kind is list and not all(isinstance(s, str) for s in value):
        raise HTTPError(400, f'option "{key}" must be of an array of strings')
    return int(value) if kind is int else value  # Go truncates a float given for an integer


def ollama_params(options: Mapping[str, Any], base: DecodingParams) -> DecodingParams:
    """Ollama `options` -> `DecodingParams` (out-of-range values raise ConfigError: a 400).

    seed, temperature, top_p, top_k, min_p, num_predict, repeat_penalty, stop and num_ctx take
    effect; a negative seed means a random one and num_predict <= 0 means "until the context is
    full", as in Ollama.
    """
    typed = {k: _option(k, v) for k, v in options.items() if k in OLLAMA_OPTION_TYPES and v is not None}
    if typed.get("seed", 0) < 0:
        del typed["seed"]
    if typed.get("num_predict", 1) <= 0:
        del typed["num_predict"]
    elif "num_predict" in typed:  # a huge limit means the same as none: the context bounds it anyway
        typed["num_predict"] = min(typed["num_predict"], int(SPECS["max_tokens"].high))
    return DecodingParams.from_ollama_options(typed, base=base)


def reproducible(params: DecodingParams, seed: Any) -> bool:
    """Whether a request asked for the same text every time: a seed of its own, or greedy decoding."""
    return params.temperature == 0 or (isinstance(seed, (int, float)) and not isinstance(seed, bool) and seed >= 0)


def openai_params(body: Mapping[str, Any], base: DecodingParams) -> DecodingParams:
    """An OpenAI request body -> `DecodingParams`: temperature, top_p, max_tokens (or
    max_completion_tokens), seed, stop, and the llama.cpp extras top_k, min_p, repeat_penalty."""
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or STRS[1](stop)):
        raise HTTPError(400, "stop must be a string or a list of strings")
    return DecodingParams.from_openai(body, base=base)


# ----------------------------------------------------------------------------------------------
# Replies
# ----------------------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    body: bytes
    started: float  # perf_counter() when the request arrived: total_duration counts from here


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"


@dataclass
class Stream:
    items: Iterator[Any]  # dicts (one JSON object each) or the string "[DONE]" for SSE
    sse: bool = False  # False: NDJSON (Ollama); True: server-sent events (OpenAI)


def _piece(name: str, text: str, *, chat: bool) -> dict:
    reply = {"model": name, "created_at": _now()}
    reply |= {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
    return reply | {"done": False}


def _final(name: str, done: Done, started: float, *, chat: bool, text: str) -> dict:
    reply = _piece(name, text, chat=chat) | {"done": True, "done_reason": done.gen.finish_reason}
    if done.context is not None:
        reply["context"] = done.context
    metrics = {"total_duration": _ns(time.perf_counter() - started), "load_duration": done.load_ns,
               "prompt_eval_count": done.gen.prompt_tokens, "prompt_eval_duration": done.prompt_ns,
               "eval_count": done.gen.completion_tokens, "eval_duration": done.eval_ns}
    return reply | {k: v for k, v in metrics.items() if v}  # Go's omitempty: zero metrics are left out


def _ollama_stream(events: Iterator[str | Done], name: str, started: float, *, chat: bool) -> Iterator[dict]:
    with contextlib.closing(events):  # closing the stream stops the generation and frees the lock
        for event in events:
            if isinstance(event, Done):
                yield _final(name, event, started, chat=chat, text="")
            else:
                yield _piece(name, event, chat=chat)


def _drain(events: Iterator[str | Done]) -> Done:
    with contextlib.closing(events):
        for event in events:
            if isinstance(event, Done):
                return event
    raise RuntimeError("generation ended without a final event")


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
    if body.get("logprobs"):
        raise HTTPError(400, "logprobs are not supported by toolkit serve")
    for key, capability in (("tools", "tools"), ("suffix", "insert"), ("images", "vision")):
        if body.get(key):
            raise HTTPError(400, f"{model.name} does not support {capability}")


def _messages(raw: list[dict], model: ServedModel) -> list[dict[str, str]]:
    """Chat messages for the template: roles lowercased, content defaulting to "" as in Ollama."""
    out = []
    for message in raw:
        message = _check(message, "Message.messages", MESSAGE)
        if message.get("images"):
            raise HTTPError(400, f"{model.name} does not support vision")
        out.append({"role": message.get("role", "").lower(), "content": message.get("content", "")})
    return out


def _render(backend: LlamaCppBackend, messages: list[dict[str, str]], go_template: str | None = None) -> str:
    if go_template:  # a request's own TEMPLATE, in Ollama's Go template syntax
        from toolkit.chat.gotemplate import render_chat

        return render_chat(go_template, messages)
    return backend.render(messages)


def _context_text(backend: LlamaCppBackend, tokens: list[int]) -> str:
    llm = _llama(backend)
    if any(not 0 <= t < llm.n_vocab() for t in tokens):  # an unknown id would crash llama.cpp
        raise HTTPError(400, "context contains a token id outside the vocabulary")
    return llm.detokenize(tokens, special=True).decode("utf-8", "replace")


def _generate_prompt(body: dict, backend: LlamaCppBackend) -> str:
    """What llama.cpp sees for /api/generate: `context` tokens, then the prompt through the
    template (the GGUF's, or the request's Go `template`), or the prompt as-is when raw."""
    if body.get("raw"):
        return body["prompt"]
    text = _render(backend, as_messages(body["prompt"], body.get("system") or None), body.get("template"))
    return _context_text(backend, body["context"]) + text if body.get("context") else text


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


def _modelfile(model: ServedModel, params: dict[str, Any]) -> str:
    """A Modelfile that rebuilds this model in Ollama (`ollama create -f`), when the chat template
    belongs to a family Ollama ships a Go template for; otherwise just its FROM line."""
    from toolkit.chat.gotemplate import default_system_prompt, ollama_template_for
    from toolkit.export.convert.modelfile import build_modelfile

    head = f'# Modelfile generated by "toolkit serve"\n# FROM {model.name} builds on this model\n\n'
    jinja = model.meta.get("tokenizer.chat_template", "")
    found = ollama_template_for(jinja) if jinja else None
    if found is not None:
        extra = {k: v for k, v in params.items() if k != "stop"}
        with contextlib.suppress(ConfigError):
            return head + build_modelfile(from_=str(model.gguf), template=found[0], stops=found[1],
                                          system=default_system_prompt(jinja), parameters=extra,
                                          license=model.meta.get("general.license"))
    return head + f"FROM {model.gguf}\n"


# ----------------------------------------------------------------------------------------------
# The API
# ----------------------------------------------------------------------------------------------

ROUTES = {("GET", "/"): "root", ("GET", "/api/version"): "version", ("GET", "/api/tags"): "tags",
          ("GET", "/api/ps"): "ps", ("POST", "/api/show"): "show", ("POST", "/api/generate"): "generate",
          ("POST", "/api/chat"): "chat", ("POST", "/api/embed"): "embed", ("POST", "/api/embeddings"): "embeddings",
          ("GET", "/v1/models"): "v1_models", ("POST", "/v1/chat/completions"): "v1_chat",
          ("POST", "/v1/completions"): "v1_completions", ("POST", "/v1/embeddings"): "v1_embeddings"}


class Api:
    """Request -> reply for every route; the HTTP handler only moves bytes."""

    def __init__(self, registry: Registry):
        self.registry = registry

    def handle(self, req: Request) -> dict | Reply | Stream:
        path = req.path.split("?", 1)[0].rstrip("/") or "/"
        method = "GET" if req.method == "HEAD" else req.method
        if (method, path) in ROUTES:
            return getattr(self, ROUTES[method, path])(req)
        if method == "GET" and path.startswith("/v1/models/"):
            return self.v1_model(unquote(path[len("/v1/models/"):]))
        if path in NOT_STORED or path.startswith("/api/blobs/"):
            raise HTTPError(501, f"toolkit serve does not store or fetch models, so {path} is not supported: "
                                 "serve a GGUF with `toolkit serve --model PATH`")
        if any(p == path for _, p in ROUTES):
            raise HTTPError(405, "method not allowed")
        raise HTTPError(404, "404 page not found")

    # -- Ollama: models ------------------------------------------------------------------------

    def root(self, req: Request) -> Reply:
        return Reply(200, b"Ollama is running", "text/plain; charset=utf-8")

    def version(self, req: Request) -> dict:
        return {"version": OLLAMA_VERSION}

    def tags(self, req: Request) -> dict:
        return {"models": [m.listing() for m in self.registry.models.values()]}

    def ps(self, req: Request) -> dict:
        forever = (datetime.now(timezone.utc) + timedelta(days=36500)).isoformat().replace("+00:00", "Z")
        running = []
        for model in self.registry.models.values():
            backend = model.backend  # one read: an unload may run concurrently
            if backend is not None:  # models stay until keep_alive 0 or exit, so never expire
                running.append(model.listing() | {"expires_at": forever, "size_vram": 0, "context_length": backend.n_ctx})
        return {"models": [{k: v for k, v in m.items() if k != "modified_at"} for m in running]}

    def show(self, req: Request) -> dict:
        body = _body(req.body, "ShowRequest", SHOW)
        name = body.get("model") or body.get("name") or ""
        if not name:
            raise HTTPError(400, "model is required")
        model = self.registry.get(name)
        from toolkit.chat.gotemplate import ollama_template_for

        found = ollama_template_for(model.meta.get("tokenizer.chat_template", "")) or ("", [])
        params = _parameters(self.registry.n_ctx, list(found[1]))
        info = {k: _typed(v) for k, v in sorted(model.meta.items()) if k not in ("general.name", "tokenizer.chat_template")}
        return {"license": model.meta.get("general.license", ""), "modelfile": _modelfile(model, params),
                "parameters": _parameters_text(params), "template": model.meta.get("tokenizer.chat_template", ""),
                "details": model.details(), "model_info": info, "capabilities": ["completion"],
                "modified_at": _stamp(model.gguf)}

    # -- Ollama: generation --------------------------------------------------------------------

    def _load_or_unload(self, model: ServedModel, body: dict, reply: dict) -> dict:
        """An empty prompt (or no messages) loads the model, with the request's num_ctx; with
        keep_alive 0 it unloads it."""
        keep = keep_alive_seconds(body.get("keep_alive"))
        if keep == 0:
            self.registry.unload(model)
        else:
            self.registry.load(model, ollama_params(body.get("options", {}), self.registry.base()).num_ctx)
        return reply | {"done": True, "done_reason": "unload" if keep == 0 else "load"}

    def generate(self, req: Request) -> dict | Stream:
        body = _body(req.body, "GenerateRequest", GENERATE)
        sent = body.get("model", "")
        model = self.registry.get(sent)
        _refuse(body, model, sent)
        raw = body.get("raw", False)
        if raw and (body.get("template") or body.get("system") or body.get("context")):
            raise HTTPError(400, "raw mode does not support template, system, or context")
        if not body.get("prompt"):
            return self._load_or_unload(model, body, {"model": sent, "created_at": _now(), "response": ""})
        options = body.get("options", {})
        params = ollama_params(options, self.registry.base())
        events = self.registry.generate(model, lambda backend: _generate_prompt(body, backend), params,
                                        grammar=_grammar(body.get("format")), want_context=not raw,
                                        unload=keep_alive_seconds(body.get("keep_alive")) == 0,
                                        fresh=reproducible(params, options.get("seed")))
        if body.get("stream", True):
            return Stream(_ollama_stream(events, sent, req.started, chat=False))
        done = _drain(events)
        return _final(sent, done, req.started, chat=False, text=done.gen.text)

    def chat(self, req: Request) -> dict | Stream:
        body = _body(req.body, "ChatRequest", CHAT)
        sent = body.get("model", "")
        if not sent:
            raise HTTPError(400, "model is required")
        model = self.registry.get(sent)
        _refuse(body, model, sent)
        messages = _messages(body.get("messages", []), model)
        if not messages:
            reply = {"model": sent, "created_at": _now(), "message": {"role": "assistant", "content": ""}}
            return self._load_or_unload(model, body, reply)
        options = body.get("options", {})
        params = ollama_params(options, self.registry.base())
        events = self.registry.generate(model, lambda backend: _render(backend, messages), params,
                                        grammar=_grammar(body.get("format")),
                                        unload=keep_alive_seconds(body.get("keep_alive")) == 0,
                                        fresh=reproducible(params, options.get("seed")))
        if body.get("stream", True):
            return Stream(_ollama_stream(events, sent, req.started, chat=True))
        done = _drain(events)
        return _final(sent, done, req.started, chat=True, text=done.gen.text)

    # -- Ollama: embeddings --------------------------------------------------------------------

    def embed(self, req: Request) -> dict:
        body = _body(req.body, "EmbedRequest", EMBED)
        sent = body.get("model", "")
        model = self.registry.get(sent)
        texts = _inputs(body.get("input"))
        dims = body.get("dimensions")
        if dims is not None and dims < 1:
            raise HTTPError(400, "dimensions must be a positive number")
        if not texts:
            return {"model": sent, "embeddings": []}
        vectors, count, load_ns = self.registry.embed(model, texts, truncate=body.get("truncate", True))
        vectors = [_normalize(v[:dims] if dims else v) for v in vectors]  # Ollama: L2-normalised, then cut
        metrics = {"total_duration": _ns(time.perf_counter() - req.started), "load_duration": load_ns, "prompt_eval_count": count}
        return {"model": sent, "embeddings": vectors} | {k: v for k, v in metrics.items() if v}

    def embeddings(self, req: Request) -> dict:
        """The legacy endpoint: one prompt, one vector, not normalised (as Ollama's)."""
        body = _body(req.body, "EmbeddingRequest", EMBEDDINGS)
        model = self.registry.get(body.get("model", ""))
        if not body.get("prompt"):
            return {"embedding": []}
        vectors, _, _ = self.registry.embed(model, [body["prompt"]])
        return {"embedding": vectors[0]}

    # -- OpenAI ---------------------------------------------------------------------------------

    def _v1_request(self, req: Request, struct: str) -> tuple[dict, str, ServedModel]:
        body = _json(req.body)
        if not isinstance(body, dict):
            raise HTTPError(400, f"request body must be a JSON object for {struct}")
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise HTTPError(400, "model is required")
        if body.get("stream") is not None and not isinstance(body["stream"], bool):
            raise HTTPError(400, "stream must be a boolean")
        if body.get("n") not in (None, 1):
            raise HTTPError(400, "n must be 1: toolkit serve returns one choice")
        if body.get("logprobs") or body.get("tools") or body.get("suffix") or body.get("echo"):
            raise HTTPError(400, "logprobs, tools, suffix and echo are not supported by toolkit serve")
        return body, name, self.registry.get(name)

    def v1_models(self, req: Request) -> dict:
        return {"object": "list", "data": [_v1_model(m) for m in self.registry.models.values()]}

    def v1_model(self, name: str) -> dict:
        return _v1_model(self.registry.get(name))

    def v1_chat(self, req: Request) -> dict | Stream:
        body, name, model = self._v1_request(req, "/v1/chat/completions")
        messages = _v1_messages(body.get("messages"))
        params = openai_params(body, self.registry.base(openai=True))
        events = self.registry.generate(model, lambda backend: backend.render(messages), params,
                                        grammar=_v1_grammar(body.get("response_format")),
                                        fresh=reproducible(params, body.get("seed")))
        return _v1_reply(events, body, name, chat=True)

    def v1_completions(self, req: Request) -> dict | Stream:
        body, name, model = self._v1_request(req, "/v1/completions")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise HTTPError(400, "prompt must be a non-empty string (or a list of one)")
        params = openai_params(body, self.registry.base(openai=True))
        events = self.registry.generate(model, lambda backend: prompt, params, fresh=reproducible(params, body.get("seed")))
        return _v1_reply(events, body, name, chat=False)

    def v1_embeddings(self, req: Request) -> dict:
        body, name, model = self._v1_request(req, "/v1/embeddings")
        texts = _inputs(body.get("input"))
        if body.get("encoding_format") not in (None, "float"):
            raise HTTPError(400, 'encoding_format must be "float"')
        dims = body.get("dimensions")
        if dims is not None and (not _is_int(dims) or dims < 1):
            raise HTTPError(400, "dimensions must be a positive integer")
        vectors, count, _ = self.registry.embed(model, texts) if texts else ([], 0, 0)
        data = [{"object": "embedding", "embedding": _normalize(v[:dims] if dims else v), "index": i} for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": count, "total_tokens": count}}


def _inputs(value: Any) -> list[str]:
    """Embedding input: a string or a list of strings ("" and [] embed nothing, as in Ollama)."""
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return [value]
    if STRS[1](value):
        return value
    raise HTTPError(400, "invalid input type")


def _v1_model(model: ServedModel) -> dict:
    return {"id": model.name, "object": "model", "created": int(model.gguf.stat().st_mtime), "owned_by": "library"}


def _v1_messages(raw: Any) -> list[dict[str, str]]:
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


def _v1_grammar(fmt: Any) -> Any:
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return _grammar("json")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return _grammar(schema if isinstance(schema, dict) else "json")
    raise HTTPError(400, 'response_format type must be "text", "json_object" or "json_schema"')


def _usage(gen: Generation) -> dict:
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
            "total_tokens": gen.prompt_tokens + gen.completion_tokens}


def _v1_reply(events: Iterator[str | Done], body: dict, name: str, *, chat: bool) -> dict | Stream:
    head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}", "created": int(time.time()),
            "model": name, "system_fingerprint": "fp_toolkit"}
    if body.get("stream"):
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return Stream(_v1_chunks(events, head, chat=chat, usage=usage), sse=True)
    gen = _drain(events).gen
    choice = {"index": 0, "finish_reason": gen.finish_reason, "logprobs": None}
    choice |= {"message": {"role": "assistant", "content": gen.text}} if chat else {"text": gen.text}
    kind = "chat.completion" if chat else "text_completion"
    return {"object": kind} | head | {"choices": [choice], "usage": _usage(gen)}


def _v1_chunks(events: Iterator[str | Done], head: dict, *, chat: bool, usage: bool) -> Iterator[dict | str]:
    """OpenAI streaming: a chunk per piece, one with finish_reason, optionally one with usage, [DONE]."""
    head = {"object": "chat.completion.chunk" if chat else "text_completion"} | head

    def chunk(text: str, finish: str | None) -> dict:
        choice = {"delta": {"role": "assistant", "content": text} if text or not finish else {}} if chat else {"text": text}
        return head | {"choices": [{"index": 0, **choice, "finish_reason": finish, "logprobs": None}]}

    with contextlib.closing(events):
        for event in events:
            if isinstance(event, Done):
                yield chunk("", event.gen.finish_reason)
                if usage:
                    yield head | {"choices": [], "usage": _usage(event.gen)}
            else:
                yield chunk(event, None)
    yield "[DONE]"


# ----------------------------------------------------------------------------------------------
# HTTP
# ----------------------------------------------------------------------------------------------


def _status_of(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, HTTPError):
        return exc.status, exc.message
    if isinstance(exc, (ConfigError, DataError)):  # a bad option or template: the client's to fix
        return 400, str(exc)
    if isinstance(exc, ToolkitError):
        return 500, str(exc)
    log.error("request failed", exc_info=exc)
    return 500, f"internal error: {type(exc).__name__}: {exc}"


def _error_body(path: str, status: int, message: str) -> dict:
    if not path.startswith("/v1/"):
        return {"error": message}
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _dumps(obj: Any) -> bytes:
    # compact like Go's encoder; newlines inside strings are escaped, so one object is one line
    # "replace": a lone surrogate from a request's JSON escapes must not break the reply
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked streams the client reads as they come
    server_version = "toolkit-serve"
    disable_nagle_algorithm = True  # small stream chunks must not wait for a delayed ACK
    server: _HTTPServer

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_HEAD = do_DELETE = do_PUT = do_GET

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _dispatch(self) -> None:
        req = Request(self.command, self.path, b"", time.perf_counter())
        try:
            req.body = self._read_body()
            result = self.server.api.handle(req)
            if isinstance(result, Stream):
                first = next(result.items, None)  # an error before the first byte gets its own status
                self._stream(result, first)
            else:
                self._send(*self._encode(result))
        except ConnectionError:
            self.close_connection = True  # the client went away; nothing left to tell it
        except Exception as exc:
            status, message = _status_of(exc)
            self._send(status, _dumps(_error_body(req.path, status, message)), "application/json; charset=utf-8")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise HTTPError(400, "invalid Content-Length") from None
        if length > MAX_BODY:
            self.close_connection = True  # the unread body would be taken for the next request
            raise HTTPError(413, "request body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        data = bytearray()
        while True:
            try:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            except ValueError:
                self.close_connection = True
                raise HTTPError(400, "malformed chunked request body") from None
            if size == 0:
                while self.rfile.readline().strip():  # trailers
                    pass
                return bytes(data)
            data += self.rfile.read(size)
            self.rfile.readline()
            if len(data) > MAX_BODY:
                self.close_connection = True
                raise HTTPError(413, "request body too large")

    @staticmethod
    def _encode(result: dict | Reply) -> tuple[int, bytes, str]:
        if isinstance(result, Reply):
            return result.status, result.body, result.content_type
        return 200, _dumps(result), "application/json; charset=utf-8"

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self, stream: Stream, first: Any) -> None:
        """Write a stream chunk by chunk; an error once started becomes its last line, as in Ollama."""
        chunked = self.request_version != "HTTP/1.0"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream" if stream.sse else "application/x-ndjson")
        self.send_header("Cache-Control", "no-cache")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
        self.end_headers()
        items = stream.items
        try:
            try:
                for item in itertools.chain([] if first is None else [first], items):
                    self._write_chunk(self._frame(item, stream.sse), chunked)
            except ConnectionError:
                raise
            except Exception as exc:
                status, message = _status_of(exc)
                self._write_chunk(self._frame(_error_body(self.path, status, message), stream.sse), chunked)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        finally:
            items.close()  # type: ignore[attr-defined]  # stops llama.cpp if the client left

    @staticmethod
    def _frame(item: Any, sse: bool) -> bytes:
        data = item.encode() if isinstance(item, str) else _dumps(item)
        return b"data: " + data + b"\n\n" if sse else data + b"\n"

    def _write_chunk(self, data: bytes, chunked: bool) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # clients connecting while models load wait here instead of being refused
    api: Api

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("connection from %s dropped: %s", client_address, exc)
        else:
            log.error("request from %s failed", client_address, exc_info=exc)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class Server:
    """The HTTP server and its models. `start()` serves from a background thread, `serve_forever()`
    from this one; `close()` stops serving and frees the models."""

    def __init__(self, models: Mapping[str, str | os.PathLike], *, host: str = "127.0.0.1", port: int = 11434,
                 n_ctx: int = 2048, n_threads: int | None = None, parallel: int = 1):
        try:  # bind before loading: a taken port fails at once, not after a model load
            self.httpd = (_HTTPServer6 if ":" in host else _HTTPServer)((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                              fix="pick another --port (is Ollama already running on this one?)") from None
        try:  # clients that connect meanwhile wait in the listen backlog
            self.registry = Registry(models, n_ctx=n_ctx, n_threads=n_threads, parallel=parallel)
        except BaseException:
            self.httpd.server_close()
            raise
        self.httpd.api = Api(self.registry)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> Server:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="toolkit-serve", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        if self._thread is not None:  # shutdown() from the serving thread itself would deadlock
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()
        self.registry.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def serve_in_thread(models: Mapping[str, str | os.PathLike] | None = None, *, host: str = "127.0.0.1",
                    port: int = 0, n_ctx: int = 2048, n_threads: int | None = None, parallel: int = 1) -> Iterator[str]:
    """Serve `models` ({name: model spec or .gguf path}; default: the embedded model) from a
    background thread on a free port: `with serve_in_thread() as url: ollama.Client(host=url)`.
    `n_threads=1` keeps a test server light on a shared machine."""
    from toolkit.models import DEFAULT_MODEL

    server = Server(models or {DEFAULT_MODEL: DEFAULT_MODEL}, host=host, port=port, n_ctx=n_ctx, n_threads=n_threads,
                    parallel=parallel).start()
    try:
        yield server.url
    finally:
        server.close()


def named_models(model: str, name: str = "") -> dict[str, Path]:
    """{Ollama name: GGUF} from comma-separated model specs and optional names (default: stems)."""
    from toolkit.models import resolve

    specs = [s.strip() for s in model.split(",") if s.strip()]
    names = [n.strip() for n in name.split(",")] if name.strip() else []
    if not specs:
        raise ConfigError("no model to serve", fix="pass --model smollm2, a .gguf file or an exported model directory")
    if names and len(names) != len(specs):
        raise ConfigError(f"--name gives {len(names)} names for {len(specs)} models", fix="give one name per model, comma-separated")
    resolved = [resolve(spec, hf=False) for spec in specs]
    out: dict[str, Path] = {}
    for i, found in enumerate(resolved):
        full = ollama_name(names[i] if names else found.name)
        if full.lower() in {k.lower() for k in out}:
            raise ConfigError(f"two models are both named {full!r}", fix="pass --name with one name per model")
        out[full] = found.require_gguf()
    return out


def env_parallel() -> int:
    """How many generations to decode together when --parallel is not given: OLLAMA_NUM_PARALLEL,
    read as Ollama reads it (unset or 0: one at a time, Ollama's default)."""
    raw = os.environ.get("OLLAMA_NUM_PARALLEL", "").strip()
    if not raw.isdigit() and raw:
        raise ConfigError(f"OLLAMA_NUM_PARALLEL={raw!r} is not a whole number", fix="set it to e.g. 4, or pass --parallel")
    return int(raw or 0) or 1


def serve(model: str = "smollm2", host: str = "127.0.0.1", port: int = 11434, name: str = "", n_ctx: int = 2048,
          parallel: int = 0) -> int:
    """Serve models over Ollama's REST API (and OpenAI's /v1 API) with llama.cpp in process.

    The official `ollama` client and OpenAI-compatible clients work unchanged: point them at the
    printed URL (OLLAMA_HOST=HOST:PORT for tools that read it, base_url URL/v1 for OpenAI's).
    Models load once at start and stay loaded. One generation runs at a time unless --parallel
    (like OLLAMA_NUM_PARALLEL) lets several clients' generations decode together. Ctrl-C stops.

    Args:
        model: model(s) to serve, comma-separated: embedded name (smollm2), a .gguf file or an exported model directory.
        host: address to listen on (0.0.0.0 for every interface).
        port: port to listen on; 11434 is Ollama's, pick another if Ollama runs here.
        name: name(s) clients use, comma-separated in --model order (default: each model's file stem); the tag defaults to :latest.
        n_ctx: context size in tokens each model is loaded with; a request's num_ctx can raise it up to the model's trained context.
        parallel: generations decoded together, each with n_ctx tokens of KV cache (requests with
            structured output, keep_alive 0 or a larger num_ctx still run one at a time); default:
            OLLAMA_NUM_PARALLEL if set, else 1.
    """
    from toolkit.console import err, status

    parallel = parallel or env_parallel()
    models = named_models(model, name)
    with status(f"Loading {', '.join(models)}"):
        server = Server(models, host=host, port=port, n_ctx=n_ctx, parallel=parallel)
    together = f", up to {parallel} generations together" if parallel > 1 else ""
    err.print(f"Serving {', '.join(models)} at {server.url} (Ollama API; OpenAI API at {server.url}/v1{together}). Ctrl-C stops.",
              highlight=False, soft_wrap=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
