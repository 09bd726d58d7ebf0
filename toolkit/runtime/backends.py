"""Generation backends behind one small interface.

A backend turns chat messages plus `DecodingParams` into a `Generation`. `llamacpp` runs a GGUF in
process (the model is loaded once and reused); later backends talk to Ollama or any
OpenAI-compatible server. Every backend passes the same contract test (tests/test_backends.py).
"""

from __future__ import annotations

import abc
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from toolkit.chat.jinja import render_jinja
from toolkit.errors import BackendError, ConfigError
from toolkit.params import DecodingParams
from toolkit.runtime.generation import Generation, Messages, StreamJob, as_messages, check_parallel, per_item, run_jobs


class Backend(abc.ABC):
    """Chat generation with explicit decoding parameters."""

    name = "backend"
    parallel = 1  # generations run at once by generate_batch and generate_stream

    def _set_parallel(self, parallel: int | None) -> None:
        if parallel is not None:
            self.parallel = check_parallel(parallel)

    @abc.abstractmethod
    def stream(self, messages: Messages, params: DecodingParams) -> Iterator[str | Generation]:
        """Yield text pieces as they are produced, then the final `Generation`."""

    def chat(self, messages: str | Messages, params: DecodingParams) -> Generation:
        """Generate a whole reply."""
        final = None
        for piece in self.stream(as_messages(messages), params):
            if isinstance(piece, Generation):
                final = piece
        if final is None:  # a backend bug, not a user error
            raise RuntimeError(f"{self.name} backend produced no final generation")
        return final

    def generate_batch(self, conversations: list[Messages], params: DecodingParams | Sequence[DecodingParams], *,
                       seeds: list[int] | None = None) -> list[Generation]:
        """Generate one reply per conversation, up to `parallel` at once (see `generate_stream`).

        `params` is one set for all, or one per conversation; `seeds` gives each conversation its
        own sampling seed (default: its parameters' seed).
        """
        each = per_item(params, len(conversations))
        seeds = seeds or [p.seed for p in each]
        jobs = [(i, conv, p.replace(seed=seed)) for i, (conv, p, seed) in enumerate(zip(conversations, each, seeds))]
        return run_jobs(self.generate_stream, jobs)

    def generate_stream(self, next_job: Callable[[], StreamJob | None],
                        cancelled: Callable[[Hashable], bool] = lambda key: False) -> Iterator[tuple[Hashable, Generation]]:
        """Generate for jobs as `next_job()` hands them out (None: none waiting), yielding
        (key, Generation) as each finishes; jobs may appear between yields.

        Here: up to `parallel` requests at once (a server with several slots, such as Ollama with
        OLLAMA_NUM_PARALLEL or `toolkit serve --parallel`, decodes them together), each answered
        in the order asked, so what the caller sees never depends on which reply came back
        first. A job that becomes `cancelled` is dropped unanswered. Backends with slots of their
        own override this.
        """
        from concurrent.futures import ThreadPoolExecutor

        running: deque = deque()  # (key, future), oldest first
        pool = ThreadPoolExecutor(self.parallel, thread_name_prefix=f"{self.name}-request")
        try:
            while True:
                while len(running) < self.parallel and (job := next_job()) is not None:
                    key, conv, params = job
                    running.append((key, pool.submit(self.chat, conv, params)))
                dropped = [r for r in running if cancelled(r[0])]
                for key, reply in dropped:  # not waited for; their room goes to the next jobs
                    running.remove((key, reply))
                    reply.cancel()
                if dropped:
                    continue
                if not running:
                    return
                key, reply = running.popleft()
                yield key, reply.result()
        finally:  # an error or an early stop: requests not sent yet are not sent, none is waited for
            pool.shutdown(wait=False, cancel_futures=True)

    def reserve(self, conversations: list[Messages], max_tokens: int) -> None:
        """Prepare for streamed jobs over these conversations generating up to `max_tokens` each
        (a backend that sizes buffers up front does it here)."""

    def close(self) -> None:
        """Release the model or connection."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LlamaCppBackend(Backend):
    """llama.cpp in process through llama-cpp-python; the GGUF's own chat template formats turns."""

    name = "llamacpp"
    parallel = 16

    def __init__(self, gguf: str | Path, *, n_ctx: int = 2048, n_threads: int | None = None, parallel: int | None = None,
                 vocab_only: bool = False, lora: str | Path | None = None):
        """`vocab_only`: load the vocabulary and metadata but no weights (a few MB, under a second):
        `render`, `tokenize`, `detokenize`, `metadata` and `max_piece_bytes` work, generation does
        not. `toolkit serve` builds prompts with one, outside its generation lock, so a reload or
        an unload of the model never frees what a prompt is being tokenized with. `lora`: a GGUF
        LoRA applied at load (one-at-a-time and batched generation alike)."""
        from toolkit.runtime import llamacpp

        self._set_parallel(parallel)
        self.gguf = Path(gguf)
        self.n_ctx = n_ctx
        self.vocab_only = vocab_only
        self.lora = Path(lora) if lora is not None else None
        self._llm = (llamacpp.load_vocab(self.gguf) if vocab_only
                     else llamacpp.load(self.gguf, n_ctx=n_ctx, n_threads=n_threads, lora=self.lora))
        self._template = self._llm.metadata.get("tokenizer.chat_template")
        self._max_piece: int | None = None

    def render(self, messages: Messages) -> str:
        """The prompt text for `messages`, from the chat template embedded in the GGUF."""
        if self._template is None:
            raise ConfigError(f"{self.gguf} has no chat template", fix="export it with a tokenizer that has one")
        return render_jinja(self._template, messages, bos_token=self._special("bos"), eos_token=self._special("eos"))

    def _special(self, which: str) -> str:
        tid = self._llm.metadata.get(f"tokenizer.ggml.{which}_token_id")
        return self._llm.detokenize([int(tid)], special=True).decode("utf-8", "replace") if tid is not None else ""

    def _check_num_ctx(self, params: DecodingParams) -> None:
        if params.num_ctx > self.n_ctx:  # the context is fixed at load time: never silently ignore it
            raise ConfigError(f"num_ctx={params.num_ctx} exceeds the loaded context {self.n_ctx}",
                              fix="open the backend with a larger n_ctx")

    def stream(self, messages: Messages, params: DecodingParams) -> Iterator[str | Generation]:
        self._check_num_ctx(params)  # before rendering: a num_ctx too large is reported first
        yield from self.stream_prompt(self.render(messages), params)

    def stream_prompt(self, prompt: str | list[int], params: DecodingParams, *, grammar: Any = None,
                      cancelled: Callable[[], bool] | None = None) -> Iterator[str | Generation]:
        """`stream` for a prompt already rendered (a raw prompt, a request's own template, an
        OpenAI completion) or already tokenized, optionally constrained by a
        `llama_cpp.LlamaGrammar` (structured output): text pieces, then the final `Generation`.

        `cancelled` is asked after every decoded token (also while text is held back for a stop
        string); once it says True, generation ends there, as if a stop string had matched.
        `toolkit serve` stops a request whose client left with it.

        Called by `stream` and by `toolkit serve`'s one-at-a-time path. Not thread-safe: it decodes
        on this backend's llama.cpp context, so one call at a time (the server runs it on its one
        compute thread, under its registry lock).
        """
        self._check_num_ctx(params)
        if self.vocab_only:
            raise BackendError(f"{self.gguf} was opened with its vocabulary only", fix="open it without vocab_only to generate")
        start = time.perf_counter()
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if len(tokens) + params.max_tokens > self.n_ctx:
            raise BackendError(f"prompt ({len(tokens)} tokens) + max_tokens ({params.max_tokens}) exceed the context ({self.n_ctx})",
                               fix="shorten the prompt, lower max_tokens or raise num_ctx")
        pieces: list[str] = []
        finish = "stop"
        count = 0
        # llama-cpp-python reuses a cached prompt prefix and re-evaluates only its last token, whose
        # logits then differ slightly from a full evaluation: same seed, different text. A full
        # prompt evaluation each time keeps results independent of what ran before.
        self._llm.reset()
        stopping = None
        if cancelled is not None:
            from llama_cpp import StoppingCriteriaList

            stopping = StoppingCriteriaList([lambda ids, logits: cancelled()])
        for chunk in self._llm.create_completion(tokens, stream=True, grammar=grammar, stopping_criteria=stopping,
                                                 **params.to_llamacpp()):
            choice = chunk["choices"][0]
            if choice["text"]:
                count += 1
                pieces.append(choice["text"])
                yield choice["text"]
            finish = choice.get("finish_reason") or finish
        text = "".join(pieces)
        # a chunk is a token except where a multi-byte character spans tokens: count exactly
        completion = len(self.tokenize(text)) if text else 0
        yield Generation(text, "length" if finish == "length" else "stop", len(tokens), max(completion, count) if finish == "length" else completion,
                         time.perf_counter() - start)

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """`text`'s token ids as every prompt here is tokenized: no BOS added (the chat template
        writes its own) and, with `special`, special-token text such as `<|im_start|>` read as those
        tokens. `toolkit serve` calls it to size prompts and to return `context`.

        Reads only the vocabulary and computes nothing, so any thread may call it; the server does
        from request threads under its registry lock, which keeps the model loaded meanwhile.
        """
        return self._llm.tokenize(text.encode(), add_bos=False, special=special)

    def detokenize(self, tokens: list[int]) -> str:
        """The text of `tokens`, special tokens written out (undecodable bytes replaced); a
        ValueError for an id outside the vocabulary, which would crash llama.cpp. `toolkit serve`
        calls it for a request's `context`; thread-safety as `tokenize`.
        """
        if any(not 0 <= t < self._llm.n_vocab() for t in tokens):
            raise ValueError("token id outside the vocabulary")
        return self._llm.detokenize(tokens, special=True).decode("utf-8", "replace")

    @property
    def max_piece_bytes(self) -> int:
        """The most bytes one token stands for (special tokens as written): a text of more than
        n * this many bytes is more than n tokens, known before tokenizing it. Any thread."""
        if self._max_piece is None:
            import ctypes

            import llama_cpp

            vocab, buf, longest = self._llm._model.vocab, ctypes.create_string_buffer(256), 1
            for token in range(self._llm.n_vocab()):
                n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
                longest = max(longest, n if n >= 0 else -n)  # negative: the piece needs -n bytes
            self._max_piece = longest
        return self._max_piece

    @property
    def metadata(self) -> Mapping[str, str]:
        """The GGUF's key/value metadata as llama.cpp reads it (values as strings), read-only.
        `toolkit serve` reads it once per load (/api/show, /api/tags); read at load, so any thread."""
        return MappingProxyType(self._llm.metadata)

    @property
    def n_params(self) -> int | None:
        """The model's parameter count, which llama.cpp counts from the tensors (None where this
        llama-cpp-python binding lacks the call). `toolkit serve` reports it as Ollama does; any thread."""
        import llama_cpp

        try:
            return int(llama_cpp.llama_model_n_params(self._llm.model))
        except (AttributeError, TypeError):  # an older or newer llama-cpp-python binding
            return None

    def generate_batch(self, conversations: list[Messages], params: DecodingParams | Sequence[DecodingParams], *,
                       seeds: list[int] | None = None) -> list[Generation]:
        """Decode up to 16 conversations at once (`toolkit.runtime.batched`): same texts as `chat()` per seed,
        several times the throughput. `completion_tokens` is the exact count of sampled tokens."""
        each = per_item(params, len(conversations))
        for p in each:
            self._check_num_ctx(p)
        prompts = [self._tokens(c) for c in conversations]
        if not prompts:
            return []
        batched = self._generator(max(len(t) + p.max_tokens for t, p in zip(prompts, each)))
        return batched.generate(prompts, each, seeds)

    def generate_stream(self, next_job: Callable[[], StreamJob | None],
                        cancelled: Callable[[Hashable], bool] = lambda key: False) -> Iterator[tuple[Hashable, Generation]]:
        """Jobs decoded together in the parallel slots, refilled as they come; a prompt another slot
        holds is shared, not prefilled again (`toolkit.runtime.batched`). Same texts as `chat()`."""
        from toolkit.runtime.batched import Job

        def jobs() -> Job | None:
            job = next_job()
            if job is None:
                return None
            key, conv, params = job
            self._check_num_ctx(params)
            return Job(key, self._tokens(conv), params)

        # without reserve() the engine gets room for the whole context per sequence
        batched = getattr(self, "_batched", None) or self._generator(self.n_ctx)
        for key, done in batched.stream(jobs, cancelled):
            yield key, done.generation

    def reserve(self, conversations: list[Messages], max_tokens: int) -> None:
        if conversations:
            self._generator(max(len(self._tokens(c)) for c in conversations) + max_tokens)

    def _tokens(self, conversation: Messages) -> list[int]:
        return self.tokenize(self.render(as_messages(conversation)))

    def _generator(self, need: int):
        """The batched engine, with room for `need` tokens per sequence."""
        from toolkit.runtime.batched import BatchedGenerator

        if need > self.n_ctx:
            raise BackendError(f"a prompt + its max_tokens need {need} tokens, more than the context ({self.n_ctx})",
                               fix="shorten the prompt, lower max_tokens or raise num_ctx")
        batched = getattr(self, "_batched", None)
        if batched is None or batched.n_ctx_per_seq < need:
            # KV room for 16 sequences of the full n_ctx is large (~750 MB at 2048 for a 135M model):
            # size it to what calls need, in 256-token steps, and grow it only when a call needs more
            if batched is not None:
                batched.close()
            batched = self._batched = BatchedGenerator(self.gguf, n_ctx_per_seq=min(self.n_ctx, -(-need // 256) * 256),
                                                       n_parallel=self.parallel, n_threads=self._llm.n_threads, lora=self.lora)
        return batched

    def close(self) -> None:
        batched, self._batched = getattr(self, "_batched", None), None
        if batched is not None:  # the batched engine holds its own llama.cpp context
            batched.close()
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()


class OllamaBackend(Backend):
    """An Ollama server (or `toolkit serve`) through the official `ollama` client.

    Every decoding parameter, num_ctx and seed included, is sent explicitly in `options`, so the
    server's or the Modelfile's defaults never silently change a result.
    """

    name = "ollama"

    def __init__(self, model: str, host: str | None = None, *, timeout: float = 600, parallel: int | None = None):
        import ollama

        self._set_parallel(parallel)
        self.model = model
        self.host = host or ollama_host()
        self._client = ollama.Client(host=self.host, timeout=timeout)

    def stream(self, messages: Messages, params: DecodingParams) -> Iterator[str | Generation]:
        import httpx
        import ollama

        start = time.perf_counter()
        pieces: list[str] = []
        try:
            for chunk in self._client.chat(model=self.model, messages=messages, stream=True,
                                           options=params.to_ollama_options()):
                text = chunk.message.content or ""
                if text:
                    pieces.append(text)
                    yield text
                if chunk.done:
                    yield Generation("".join(pieces), "length" if chunk.done_reason == "length" else "stop",
                                     chunk.prompt_eval_count or 0, chunk.eval_count or 0,
                                     (chunk.eval_duration or 0) / 1e9 or time.perf_counter() - start)
        except (httpx.ConnectError, ConnectionError) as exc:
            raise BackendError(f"no Ollama server at {self.host} ({exc})",
                               fix="start one with `ollama serve` (or `toolkit serve`), set OLLAMA_HOST, or use --backend llamacpp") from None
        except ollama.ResponseError as exc:
            fix = f"create it with `toolkit ollama create {self.model}`" if exc.status_code == 404 else "see the server's message"
            raise BackendError(f"Ollama at {self.host}: {exc.error}", fix=fix) from None


class OpenAIBackend(Backend):
    """Any OpenAI-compatible chat server (llama.cpp's llama-server, vLLM, `toolkit serve`)."""

    name = "openai"

    def __init__(self, model: str, base_url: str, *, api_key: str = "none", timeout: float = 600,
                 parallel: int | None = None):
        import httpx

        self._set_parallel(parallel)
        self.model = model
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self._http = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {api_key}"})

    def stream(self, messages: Messages, params: DecodingParams) -> Iterator[str | Generation]:
        import json

        import httpx

        body = {"model": self.model, "messages": messages, "stream": True,
                "stream_options": {"include_usage": True}} | params.to_openai()
        start = time.perf_counter()
        pieces: list[str] = []
        finish, usage = "stop", {}
        url = f"{self.base_url}/v1/chat/completions"
        try:
            with self._http.stream("POST", url, json=body) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise BackendError(f"{url} answered {resp.status_code}: {resp.text[:200]}", fix="check the model name and parameters")
                for line in resp.iter_lines():
                    if not line.startswith("data:") or line.strip() == "data: [DONE]":
                        continue
                    event = json.loads(line[5:])
                    usage = event.get("usage") or usage
                    for choice in event.get("choices", []):
                        text = (choice.get("delta") or {}).get("content") or ""
                        if text:
                            pieces.append(text)
                            yield text
                        finish = choice.get("finish_reason") or finish
        except httpx.ConnectError as exc:
            raise BackendError(f"no OpenAI-compatible server at {self.base_url} ({exc})",
                               fix="start one (e.g. `toolkit serve`) or check --url") from None
        yield Generation("".join(pieces), "length" if finish == "length" else "stop", usage.get("prompt_tokens", 0),
                         usage.get("completion_tokens", len(pieces)), time.perf_counter() - start)

    def close(self) -> None:
        self._http.close()


BACKENDS = ("llamacpp", "ollama", "openai")


def open_backend(kind: str, model: str, *, n_ctx: int = 2048, url: str | None = None, parallel: int | None = None) -> Backend:
    """Open a backend: `llamacpp` takes a model spec (embedded name, .gguf path, exported dir);
    `ollama` an Ollama model name (server from `url` or OLLAMA_HOST); `openai` a model name at `url`.
    `parallel`: generations at once (default: 16 llama.cpp slots, one request at a time to a server)."""
    if kind == "llamacpp":
        from toolkit.models import resolve

        gguf, lora = resolve(model, hf=False).require_llamacpp()  # a Modelfile's ADAPTER comes along
        return LlamaCppBackend(gguf, n_ctx=n_ctx, parallel=parallel, lora=lora)
    if kind == "ollama":
        return OllamaBackend(model, url, parallel=parallel)
    if kind == "openai":
        if not url:
            raise ConfigError("the openai backend needs a server URL", fix="pass --url http://HOST:PORT")
        return OpenAIBackend(model, url, parallel=parallel)
    raise ConfigError(f"unknown backend {kind!r}", fix=f"use one of: {', '.join(BACKENDS)}")


def ollama_host() -> str:
    """The Ollama server URL from OLLAMA_HOST, read the way Ollama reads it (default 127.0.0.1:11434)."""
    import os

    raw = os.environ.get("OLLAMA_HOST", "").strip() or "127.0.0.1:11434"
    scheme, _, rest = raw.rpartition("://")
    scheme = scheme or "http"
    host, _, port = rest.partition(":")
    port = port.split("/")[0] or ("443" if scheme == "https" else "11434")
    host = host or "127.0.0.1"
    if host == "0.0.0.0":  # a listen address, not a place to connect to
        host = "127.0.0.1"
    return f"{scheme}://{host}:{port}"
