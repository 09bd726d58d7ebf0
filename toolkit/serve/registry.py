"""The models `toolkit serve` serves: loaded once and reused, one lock, one compute thread.

`Registry` owns the served models (`ServedModel`: an Ollama name over a GGUF; how clients see
them is `toolkit.serve.presentation`). By default generation is serialised by its lock, as
Ollama's default OLLAMA_NUM_PARALLEL=1 does; with `parallel` > 1 plain generations (no structured
output) go to the model's batched `Engine`. Every llama.cpp computation runs on the registry's one
`Compute` thread. Generations yield text pieces, then a `Done` with the timings Ollama reports.

Only generation (and loading, unloading, embedding) holds the lock: prompts are rendered and
tokenized before it, with the model's vocabulary-only handle and within the bounds of
`toolkit.serve.prompt`. At most `max_queue` requests wait for it (OLLAMA_MAX_QUEUE); past that a
request gets Ollama's 503. A request whose `cancel` event is set stops waiting or generating.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import ConfigError
from toolkit.models import resolve
from toolkit.params import DEFAULTS, SPECS, DecodingParams
from toolkit.runtime import llamacpp
from toolkit.runtime.backends import LlamaCppBackend
from toolkit.runtime.generation import MAX_PARALLEL, Generation
from toolkit.serve.compute import POLL, Compute, Engine
from toolkit.serve.prompt import text_limit, tokens_for
from toolkit.serve.request import Cancelled, HTTPError

log = logging.getLogger("toolkit.serve.registry")

EMBED_CTX = 512  # llama.cpp embeds one sequence per batch: longer inputs are truncated to this
_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?(:[\w][\w.\-]*)?$")


def ollama_name(name: str) -> str:
    """`name` with Ollama's default tag: `smollm2` -> `smollm2:latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def ns(seconds: float) -> int:
    """Seconds as the nanoseconds Ollama reports durations in."""
    return max(0, int(seconds * 1e9))


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
    """One model as clients see it: an Ollama name over a GGUF file, plus the GGUF LoRA that
    llama.cpp applies on top of it when the model is an adapter export's Modelfile."""

    name: str  # with its tag, e.g. "smollm2:latest"
    gguf: Path
    lora: Path | None = None
    meta: dict[str, str] = field(default_factory=dict)  # GGUF metadata, kept after an unload
    backend: LlamaCppBackend | None = None
    vocab: LlamaCppBackend | None = None  # vocabulary only: prompts are built with it, outside the lock
    embedder: Any = None  # a second llama.cpp context with embeddings on, made on first use
    scorer: Any = None  # token log-probabilities (toolkit.serve.logprobs), made on first use
    engine: Engine | None = None  # the batched generator when serving with parallel > 1

    def trained_ctx(self) -> int | None:
        value = self.meta.get(f"{self.meta.get('general.architecture', '')}.context_length", "")
        return int(value) if value.isdigit() else None

    def size(self) -> int:
        """Bytes on disk: the GGUF, and the LoRA when there is one."""
        return sum(path.stat().st_size for path in (self.gguf, self.lora) if path is not None)


class Registry:
    """The served models, loaded up front and reused. `lock` orders loads, unloads and one-at-a-time
    generations; `compute` is the one thread every llama.cpp computation runs on."""

    def __init__(self, models: Mapping[str, str | os.PathLike], *, n_ctx: int = 2048, n_threads: int | None = None,
                 parallel: int = 1, max_queue: int = 512):
        DEFAULTS.replace(num_ctx=n_ctx)  # validates n_ctx before anything loads
        if not 1 <= parallel <= MAX_PARALLEL:
            raise ConfigError(f"--parallel {parallel} is outside 1..{MAX_PARALLEL}", fix="pick how many generations may run at once")
        self.n_ctx = n_ctx
        self.parallel = parallel
        self.compute = Compute()  # every llama.cpp computation runs on this one thread
        self.n_threads = n_threads  # None: every core this process may use
        self.lock = threading.Lock()
        self.max_queue = max_queue
        self.waiting = 0  # requests waiting for the lock or generating, counted under _count
        self._count = threading.Lock()
        self.closed = False
        self.models: dict[str, ServedModel] = {}
        for name, spec in models.items():
            full = ollama_name(name)
            if not _NAME.match(full):
                raise ConfigError(f"{name!r} is not a valid model name", fix="use letters, digits, '_', '-', '.' and an optional :tag")
            if full.lower() in self.models:
                raise ConfigError(f"model name {full!r} is given twice", fix="give each model its own --name")
            gguf, lora = resolve(str(spec), hf=False).require_llamacpp()  # a Modelfile's ADAPTER comes along
            self.models[full.lower()] = ServedModel(full, gguf, lora)
        try:
            for model in self.models.values():
                model.vocab = LlamaCppBackend(model.gguf, vocab_only=True)
                model.vocab.max_piece_bytes  # noqa: B018  # measured once, at start
                model.backend = self._open(model, n_ctx)
                self._engine(model)  # with parallel > 1: loaded up front, so a failure shows at start
        except BaseException:
            self.close()
            raise
        # the most text any request's prompt can have: the largest context a request may ask for
        most = [(m.trained_ctx() or int(SPECS["num_ctx"].high), m) for m in self.models.values()]
        self.max_ctx = max(min(ctx, int(SPECS["num_ctx"].high)) for ctx, _ in most)
        self.prompt_bytes = max(text_limit(m.vocab, min(ctx, self.max_ctx)) for ctx, m in most)

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
        backend = LlamaCppBackend(model.gguf, n_ctx=n_ctx, n_threads=self.n_threads, lora=model.lora)
        # Ollama derives general.parameter_count from the tensors; llama.cpp counts them for us
        count = backend.n_params
        model.meta = dict(backend.metadata) | ({"general.parameter_count": str(count)} if count is not None else {})
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

    def load(self, model: ServedModel, num_ctx: int, cancel: threading.Event | None = None) -> None:
        with self._queued(), self._locked(cancel):
            self._ready(model, num_ctx)

    def unload(self, model: ServedModel, cancel: threading.Event | None = None) -> None:
        with self._queued(), self._locked(cancel):
            self._unload(model)

    def _engine(self, model: ServedModel) -> Engine | None:
        """The model's batched generator (made on first use after an unload), or None when serving
        one generation at a time."""
        if self.parallel > 1 and model.engine is None:
            model.engine = Engine(model.gguf, self.compute, n_ctx=self.n_ctx, parallel=self.parallel,
                                  n_threads=self.n_threads, lora=model.lora)
        return model.engine

    def _unload(self, model: ServedModel) -> None:
        for part in ("backend", "embedder", "engine"):
            handle = getattr(model, part)
            setattr(model, part, None)
            if handle is not None:
                handle.close()

    @contextlib.contextmanager
    def _queued(self) -> Iterator[None]:
        """A place among the requests waiting or generating: 503 past `max_queue` waiting ones."""
        with self._count:
            if self.waiting >= self.max_queue + self.parallel:
                raise HTTPError(503, "server busy, please try again.  maximum pending requests exceeded")
            self.waiting += 1
        try:
            yield
        finally:
            with self._count:
                self.waiting -= 1

    @contextlib.contextmanager
    def _locked(self, cancel: threading.Event | None) -> Iterator[None]:
        """The lock, given up while waiting for it if the client leaves (Cancelled)."""
        while not self.lock.acquire(timeout=POLL):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
        try:
            if self.closed:
                raise HTTPError(503, "server is shutting down")
            yield
        finally:
            self.lock.release()

    def generate(self, model: ServedModel, build: Callable[[LlamaCppBackend], str], params: DecodingParams, *,
                 grammar: Any = None, want_context: bool = False, unload: bool = False,
                 cancel: threading.Event | None = None) -> Iterator[str | Done]:
        """Text pieces, then a `Done`. The prompt is built and tokenized first, without the lock.
        One at a time, the lock is then held while pieces flow and released before `Done`, so a
        consumer that stops after `Done` never keeps other requests waiting; in parallel, it is only
        held to queue the request for the batch.

        `build` makes the prompt text from the model's vocabulary-only backend; `grammar`
        (structured output) and `unload` (keep_alive 0) run the request alone; `want_context`
        returns the prompt and reply as tokens (/api/generate's `context`); `cancel`, once set,
        stops the request within a decode step (Cancelled is raised).
        """
        asked = time.perf_counter()
        text = build(model.vocab)
        tokens = tokens_for(model.vocab, text, params.num_ctx)
        if not tokens:
            raise HTTPError(400, "prompt is empty")
        engine = None
        with self._queued():
            with self._locked(cancel):
                backend = self._ready(model, params.num_ctx)
                ready = time.perf_counter()
                fitted = _fit(backend, len(tokens), params)
                # together with other requests when serving in parallel, unless it needs what only the
                # one-at-a-time path has: a grammar, an unload after it, or more context than the slots
                if grammar is None and not unload and fitted.num_ctx <= self.n_ctx:
                    engine = self._engine(model)
                if engine is not None:
                    ticket = engine.enqueue(tokens, fitted)
                else:
                    alone = lambda: self._generate_alone(backend, tokens, fitted, grammar, cancel)  # noqa: E731
                    for piece in self.compute.iterate(alone, cancel):
                        if isinstance(piece, tuple):
                            final, first, end = piece
                        else:
                            yield piece
                    if unload:  # keep_alive 0: the client asked for the memory back after this request
                        self._unload(model)
            if engine is not None:
                first = None
                for item in engine.replies(*ticket, cancel):
                    if isinstance(item, str):
                        first = first or time.perf_counter()
                        yield item
                end = time.perf_counter()
                first = first or end
                final = item.generation
        context = model.vocab.prompt_tokens(text + final.text) if want_context else None
        yield Done(final, ns(ready - asked), ns(first - ready), ns(end - first), context)

    def _generate_alone(self, backend: LlamaCppBackend, tokens: list[int], fitted: DecodingParams, grammar: Any,
                        cancel: threading.Event | None) -> Iterator[str | tuple[Generation, float, float]]:
        """One generation on the model's own llama.cpp context (compute thread, lock held): its
        pieces, then the final Generation with the times of its first piece and of its end."""
        first = final = None
        cancelled = cancel.is_set if cancel is not None else None
        for piece in backend.stream_prompt(tokens, fitted, grammar=grammar, cancelled=cancelled):
            if isinstance(piece, Generation):
                final = piece
                continue
            first = first or time.perf_counter()
            yield piece
        if final is None:  # a backend bug, not a user error
            raise RuntimeError("the backend produced no final generation")
        end = time.perf_counter()
        yield final, first or end, end

    def embed(self, model: ServedModel, texts: list[str], *, truncate: bool = True,
              cancel: threading.Event | None = None) -> tuple[list[list[float]], int, int]:
        """Mean-pooled embeddings (not normalised), the token count and the load time in ns."""
        if any(not t for t in texts):  # llama.cpp corrupts its heap on an empty sequence
            raise HTTPError(400, "input must not contain empty strings")
        texts = [_embed_text(model.vocab, t, truncate) for t in texts]

        asked = time.perf_counter()
        with self._queued(), self._locked(cancel):
            if model.embedder is None:
                model.embedder = llamacpp.load(model.gguf, n_ctx=EMBED_CTX, n_threads=self.n_threads,
                                               n_threads_batch=self.n_threads, embedding=True, lora=model.lora)
            ready = time.perf_counter()
            try:
                rows, count = self.compute.call(model.embedder.embed, texts, truncate=truncate, return_count=True)
            except ValueError:
                raise HTTPError(400, "the input length exceeds the context length") from None
        return [_mean(r) for r in rows], count, ns(ready - asked)

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


def _fit(backend: LlamaCppBackend, used: int, params: DecodingParams) -> DecodingParams:
    """Clamp max_tokens to the room left in the context after `used` prompt tokens: a long answer
    then ends with done_reason "length", as in Ollama, instead of failing the backend's check."""
    ctx = min(params.num_ctx, backend.n_ctx)
    if used >= ctx:
        raise HTTPError(400, f"the input length ({used} tokens) exceeds the context length ({ctx})")
    return params.replace(num_ctx=ctx, max_tokens=min(params.max_tokens, ctx - used))


def _embed_text(vocab: LlamaCppBackend, text: str, truncate: bool) -> str:
    """`text` as the embedder may take it without tokenizing megabytes under the lock: longer than
    EMBED_CTX tokens can hold, it is refused, or with `truncate` cut to twice that many bytes (at
    least 2 x EMBED_CTX tokens, so its first EMBED_CTX tokens, all that is kept, are unchanged)."""
    limit = text_limit(vocab, EMBED_CTX)
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    if not truncate:
        raise HTTPError(400, "the input length exceeds the context length")
    return data[: 2 * limit].decode("utf-8", "ignore")


def _mean(rows: list) -> list[float]:
    """One vector per input: llama.cpp returns per-token rows unless the GGUF sets a pooling."""
    if not rows or not isinstance(rows[0], list):
        return list(rows)
    return [sum(col) / len(rows) for col in zip(*rows)]


def normalize(vector: list[float]) -> list[float]:
    """`vector` scaled to unit length (Ollama's embeddings are L2-normalised)."""
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


def drain(events: Iterator[str | Done]) -> Done:
    """The `Done` of a generation, its pieces dropped (a reply that does not stream)."""
    with contextlib.closing(events):
        for event in events:
            if isinstance(event, Done):
                return event
    raise RuntimeError("generation ended without a final event")


