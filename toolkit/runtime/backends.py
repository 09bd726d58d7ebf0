"""Generation backends behind one small interface.

A backend turns chat messages plus `DecodingParams` into a `Generation`. `llamacpp` runs a GGUF in
process (the model is loaded once and reused); later backends talk to Ollama or any
OpenAI-compatible server. `BACKENDS` is the registry (name -> class): a class says how it is
opened (`open`), what identifies its weights (`weights_id`) and what it can do (`capabilities`),
so code outside this package asks those, never compares backend names. `--backend` offers the
registry's names (`BackendName`). Every registered backend passes the same contract test
(tests/test_backends.py).
"""

from __future__ import annotations

import abc
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from toolkit.chat.jinja import render_jinja
from toolkit.chat.render import render_chat
from toolkit.errors import BackendError, ConfigError
from toolkit.models import resolve
from toolkit.params import DecodingParams
from toolkit.runtime import llamacpp
from toolkit.runtime.batched import BatchedGenerator, Job
from toolkit.runtime.generation import Generation, Messages, StreamJob, as_messages, check_parallel, per_item, run_jobs
from toolkit.runtime.tokenize import bos_to_add, check_prompting, no_template, raw_prompt, with_bos


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared by its class, so callers ask this instead of its name."""

    in_process: bool = False  # generates in this process (this machine made the numbers); False: a server does
    loads_gguf: bool = False  # opens GGUF files here: their quantization can be read, llama.cpp's machine probe applies
    json_mode: bool = False  # can constrain a reply to a JSON schema (`stream`'s and `generate_stream`'s `schema`)
    token_logprobs: bool = False  # can give per-token log-probabilities (what log-likelihood benchmarks need)


class Backend(abc.ABC):
    """Chat generation with explicit decoding parameters."""

    name = "backend"
    parallel = 1  # generations run at once by generate_batch and generate_stream
    capabilities: ClassVar[Capabilities] = Capabilities()

    @classmethod
    def open(cls, model: str, *, n_ctx: int = 2048, url: str | None = None, parallel: int | None = None) -> Backend:
        """Open `model` (`url`: the server, where the backend has one) the way every command does:
        what `open_backend` calls for a registered name."""
        raise NotImplementedError(f"{cls.__name__} does not say how to open it")  # a backend bug, not a user error

    @classmethod
    def weights_id(cls, model: str, url: str = "") -> str:
        """What identifies `model`'s weights (the generation cache's model identity): here, the
        backend, the server and the model's name there."""
        return f"{cls.name}:{url}:{model}"

    @classmethod
    def check(cls, model: str, url: str = "") -> None:
        """Refuse `model` before any work where this backend can tell it could not run it (a
        server's models are only known when asked: nothing is checked here)."""

    def _set_parallel(self, parallel: int | None) -> None:
        if parallel is not None:
            self.parallel = check_parallel(parallel)

    @abc.abstractmethod
    def stream(self, messages: Messages, params: DecodingParams, schema: dict | None = None) -> Iterator[str | Generation]:
        """Yield text pieces as they are produced, then the final `Generation`. `schema`: a JSON
        schema the reply must follow, given only to a backend whose `capabilities.json_mode` says it
        can (one without it may leave the argument out)."""

    def chat(self, messages: str | Messages, params: DecodingParams, *, schema: dict | None = None) -> Generation:
        """Generate a whole reply (`schema`: as `stream`'s)."""
        final = None
        # no schema, no argument: a backend without a JSON mode need not take one
        pieces = self.stream(as_messages(messages), params) if schema is None else self.stream(as_messages(messages), params, schema)
        for piece in pieces:
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

    def generate_stream(self, next_job: Callable[[], StreamJob | None], cancelled: Callable[[Hashable], bool] = lambda key: False,
                        *, schema: dict | None = None) -> Iterator[tuple[Hashable, Generation]]:
        """Generate for jobs as `next_job()` hands them out (None: none waiting), yielding
        (key, Generation) as each finishes; jobs may appear between yields. `schema`: every reply
        follows this JSON schema (as `stream`'s; `runtime.cache.generate_cached` passes it only to
        a backend with `capabilities.json_mode`).

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
                    running.append((key, pool.submit(self.chat, conv, params, schema=schema)))
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
    """llama.cpp in process through llama-cpp-python; the GGUF's own chat template formats turns (a
    Modelfile's TEMPLATE where the GGUF has none); every text prompt gets BOS as the GGUF asks."""

    name = "llamacpp"
    parallel = 16
    raw = False  # True: raw completion mode (RawLlamaCppBackend)
    # json_mode: a schema becomes a llama_cpp.LlamaGrammar (`json_grammar`); token_logprobs: llama.cpp's logits
    capabilities = Capabilities(in_process=True, loads_gguf=True, json_mode=True, token_logprobs=True)

    @classmethod
    def open(cls, model: str, *, n_ctx: int = 2048, url: str | None = None, parallel: int | None = None) -> LlamaCppBackend:
        """`model`: an embedded name, a .gguf path or an exported dir (a Modelfile's ADAPTER comes along)."""
        resolved = resolve(model, hf=False)
        gguf, lora = resolved.require_llamacpp()
        backend = cls(gguf, n_ctx=n_ctx, parallel=parallel, lora=lora, go_template=resolved.template)
        if not backend.can_prompt:  # refused at load, not after the first prompt
            backend.close()
            raise no_template(gguf)
        return backend

    @classmethod
    def check(cls, model: str, url: str = "") -> None:
        """The model's files resolve and this backend can prompt it (a chat template, a Modelfile
        TEMPLATE, or raw mode): a one-line error otherwise, reading metadata only."""
        resolved = resolve(model, hf=False)
        check_prompting(resolved.require_llamacpp()[0], cls.raw, resolved.template)

    @classmethod
    def weights_id(cls, model: str, url: str = "") -> str:
        """The GGUF's digest (and its LoRA's, for a Modelfile with an ADAPTER): a renamed copy is the same model."""
        return resolve(model, hf=False).weights_id()

    def __init__(self, gguf: str | Path, *, n_ctx: int = 2048, n_threads: int | None = None, parallel: int | None = None,
                 vocab_only: bool = False, lora: str | Path | None = None, go_template: str | None = None):
        """`vocab_only`: load the vocabulary and metadata but no weights (a few MB, under a second):
        `render`, `tokenize`, `detokenize`, `metadata` and `max_piece_bytes` work, generation does
        not. `toolkit serve` builds prompts with one, outside its generation lock, so a reload or
        an unload of the model never frees what a prompt is being tokenized with. `lora`: a GGUF
        LoRA applied at load (one-at-a-time and batched generation alike). `go_template`: a
        Modelfile's Go TEMPLATE, which prompts where the GGUF has no chat template."""
        self._set_parallel(parallel)
        self.gguf = Path(gguf)
        self.n_ctx = n_ctx
        self.vocab_only = vocab_only
        self.lora = Path(lora) if lora is not None else None
        self._llm = (llamacpp.load_vocab(self.gguf) if vocab_only
                     else llamacpp.load(self.gguf, n_ctx=n_ctx, n_threads=n_threads, lora=self.lora))
        self._template = self._llm.metadata.get("tokenizer.chat_template")
        self._go_template = go_template
        self._max_piece: int | None = None
        self._bos = bos_to_add(self._llm._model.vocab)  # what every text prompt starts with

    @property
    def can_prompt(self) -> bool:
        """Whether `render` can make a prompt of a conversation (raw mode, or a template)."""
        return self.raw or self._template is not None or bool(self._go_template)

    def render(self, messages: Messages) -> str:
        """The prompt text for `messages`: the messages as given in raw mode, else through the chat
        template embedded in the GGUF, else through the Modelfile's Go TEMPLATE."""
        if self.raw:
            return raw_prompt(messages)
        if self._template is not None:
            return render_jinja(self._template, messages, bos_token=self._special("bos"), eos_token=self._special("eos"))
        if self._go_template:
            return render_chat(self._go_template, messages)
        raise no_template(self.gguf)

    def _special(self, which: str) -> str:
        tid = self._llm.metadata.get(f"tokenizer.ggml.{which}_token_id")
        return self._llm.detokenize([int(tid)], special=True).decode("utf-8", "replace") if tid is not None else ""

    def _check_num_ctx(self, params: DecodingParams) -> None:
        if params.num_ctx > self.n_ctx:  # the context is fixed at load time: never silently ignore it
            raise ConfigError(f"num_ctx={params.num_ctx} exceeds the loaded context {self.n_ctx}",
                              fix="open the backend with a larger n_ctx")

    def stream(self, messages: Messages, params: DecodingParams, schema: dict | None = None) -> Iterator[str | Generation]:
        self._check_num_ctx(params)  # before rendering: a num_ctx too large is reported first
        yield from self.stream_prompt(self.render(messages), params, grammar=json_grammar(schema))

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
        tokens = self.prompt_tokens(prompt) if isinstance(prompt, str) else list(prompt)
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

    def prompt_tokens(self, text: str) -> list[int]:
        """A text prompt's token ids as llama.cpp decodes them: special tokens read as such, BOS as
        the GGUF asks and never twice (`toolkit.runtime.tokenize`). Every text prompt goes through
        here (chat renders, raw prompts, `toolkit serve`); thread-safety as `tokenize`."""
        return with_bos(self.tokenize(text), self._bos)

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """`text`'s token ids, no BOS added and, with `special`, special-token text such as
        `<|im_start|>` read as those tokens: a piece of text, such as a completion to count (a
        prompt goes through `prompt_tokens`).

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

    def generate_stream(self, next_job: Callable[[], StreamJob | None], cancelled: Callable[[Hashable], bool] = lambda key: False,
                        *, schema: dict | None = None) -> Iterator[tuple[Hashable, Generation]]:
        """Jobs decoded together in the parallel slots, refilled as they come; a prompt another slot
        holds is shared, not prefilled again (`toolkit.runtime.batched`). Same texts as `chat()`.
        With a `schema`, one job at a time on this backend's own context, as `toolkit serve` runs a
        request with a format: the batched engine samples without a grammar (one as a link of each
        slot's chain gave the same texts but was no faster here: README, "Synthetic training data")."""
        if schema is not None:
            yield from self._one_at_a_time(next_job, cancelled, json_grammar(schema))
            return

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

    def _one_at_a_time(self, next_job: Callable[[], StreamJob | None], cancelled: Callable[[Hashable], bool],
                       grammar: Any) -> Iterator[tuple[Hashable, Generation]]:
        while (job := next_job()) is not None:
            key, conv, params = job
            if cancelled(key):
                continue
            self._check_num_ctx(params)
            *_, final = self.stream_prompt(self.render(as_messages(conv)), params, grammar=grammar)
            yield key, final

    def reserve(self, conversations: list[Messages], max_tokens: int) -> None:
        if conversations:
            self._generator(max(len(self._tokens(c)) for c in conversations) + max_tokens)

    def _tokens(self, conversation: Messages) -> list[int]:
        return self.prompt_tokens(self.render(as_messages(conversation)))

    def _generator(self, need: int):
        """The batched engine, with room for `need` tokens per sequence."""
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


class RawLlamaCppBackend(LlamaCppBackend):
    """llama.cpp in process in raw completion mode, as Ollama's `raw`, for base models without a
    chat template: the prompt exactly as given (`runtime.tokenize.raw_prompt`), BOS as the GGUF asks."""

    name = "llamacpp-raw"
    raw = True

    @classmethod
    def weights_id(cls, model: str, url: str = "") -> str:
        """Raw prompts are other requests than templated ones: a cache keeps them apart."""
        return "raw+" + super().weights_id(model, url)


class OllamaBackend(Backend):
    """An Ollama server (or `toolkit serve`) through the official `ollama` client.

    Every decoding parameter, num_ctx and seed included, is sent explicitly in `options`, so the
    server's or the Modelfile's defaults never silently change a result.
    """

    name = "ollama"
    capabilities = Capabilities(json_mode=True)  # Ollama's `format`, which takes a JSON schema

    @classmethod
    def open(cls, model: str, *, n_ctx: int = 2048, url: str | None = None, parallel: int | None = None) -> OllamaBackend:
        """`model`: an Ollama model name at `url` (default: OLLAMA_HOST)."""
        return cls(model, url, parallel=parallel)

    @classmethod
    def weights_id(cls, model: str, url: str = "") -> str:
        return super().weights_id(model, url or ollama_host())  # the server it would really ask

    def __init__(self, model: str, host: str | None = None, *, timeout: float = 600, parallel: int | None = None):
        import ollama

        self._set_parallel(parallel)
        self.model = model
        self.host = host or ollama_host()
        self._client = ollama.Client(host=self.host, timeout=timeout)

    def stream(self, messages: Messages, params: DecodingParams, schema: dict | None = None) -> Iterator[str | Generation]:
        import httpx
        import ollama

        start = time.perf_counter()
        pieces: list[str] = []
        try:
            for chunk in self._client.chat(model=self.model, messages=messages, stream=True,
                                           options=params.to_ollama_options(), format=schema):
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
    # json_mode: `response_format` with a json_schema, which llama-server, vLLM, Ollama's /v1 and
    # `toolkit serve` honour; log-probabilities vary by server: none are promised
    capabilities = Capabilities(json_mode=True)

    @classmethod
    def open(cls, model: str, *, n_ctx: int = 2048, url: str | None = None, parallel: int | None = None) -> OpenAIBackend:
        """`model`: a model name at the server `url` (required)."""
        if not url:
            raise ConfigError("the openai backend needs a server URL", fix="pass --url http://HOST:PORT")
        return cls(model, url, parallel=parallel)

    def __init__(self, model: str, base_url: str, *, api_key: str = "none", timeout: float = 600,
                 parallel: int | None = None):
        import httpx

        self._set_parallel(parallel)
        self.model = model
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self._http = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {api_key}"})

    def stream(self, messages: Messages, params: DecodingParams, schema: dict | None = None) -> Iterator[str | Generation]:
        import json

        import httpx

        body = {"model": self.model, "messages": messages, "stream": True,
                "stream_options": {"include_usage": True}} | params.to_openai()
        if schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
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


# the registry: a new backend is its class and one entry here (the name lives on the class)
BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (LlamaCppBackend, OllamaBackend, OpenAIBackend)}
# Raw completion modes, asked for with a command's --raw (`raw_backend`), not offered as --backend:
# they prompt with the text as given, so the chat contract (tests/test_backends.py) is not theirs.
RAW_MODES: dict[str, type[Backend]] = {RawLlamaCppBackend.name: RawLlamaCppBackend}


def raw_backend(name: str, raw: bool) -> str:
    """The backend a command's `--raw` asks for: the raw completion mode of `name` (llama.cpp in
    process has one); `name` itself without `--raw`."""
    if not raw or getattr(backend_class(name), "raw", False):
        return name
    if backend_class(name) is not LlamaCppBackend:
        raise ConfigError(f"--raw is the raw completion mode of llama.cpp in process, not of the {name} backend",
                          fix=f"drop --raw, or use --backend {LlamaCppBackend.name}")
    return RawLlamaCppBackend.name


class BackendName(str):
    """A command option naming a registered backend: the CLI offers `choices()` as argparse choices."""

    @staticmethod
    def choices() -> list[str]:
        """The registry's names, read when the parser is built (so a backend registered later is offered)."""
        return list(BACKENDS)


def backend_class(name: str) -> type[Backend]:
    """The registered class called `name`, or the raw mode of that name (`RAW_MODES`); a ConfigError
    naming the choices otherwise."""
    try:
        return BACKENDS[name] if name in BACKENDS else RAW_MODES[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}", fix=f"use one of: {', '.join(BACKENDS)}") from None


def open_backend(kind: str, model: str, *, n_ctx: int = 2048, url: str | None = None, parallel: int | None = None) -> Backend:
    """Open a registered backend: `llamacpp` takes a model spec (embedded name, .gguf path, exported
    dir); `ollama` an Ollama model name (server from `url` or OLLAMA_HOST); `openai` a model name at
    `url`. `parallel`: generations at once (default: 16 llama.cpp slots, one request at a time to a server)."""
    return backend_class(kind).open(model, n_ctx=n_ctx, url=url, parallel=parallel)


@dataclass(frozen=True)
class BackendSpec:
    """Which backend runs which model, opened how: what a command's --backend, --model, --url and
    --parallel say. `n_ctx` None: the caller's requests decide (see `runtime.cache.generate_cached`)."""

    name: str
    model: str
    url: str = ""
    parallel: int | None = None
    n_ctx: int | None = None

    def weights_id(self) -> str:
        return backend_class(self.name).weights_id(self.model, self.url)

    def check(self) -> None:
        """Refuse the model before any work where the backend can tell it could not run it."""
        backend_class(self.name).check(self.model, self.url)

    def open(self, n_ctx: int | None = None) -> Backend:
        return open_backend(self.name, self.model, n_ctx=n_ctx or self.n_ctx or 2048, url=self.url or None, parallel=self.parallel)


def json_grammar(schema: dict | None) -> Any:
    """The llama.cpp grammar (`llama_cpp.LlamaGrammar`) a reply following the JSON `schema` is
    sampled under; None for no schema. A schema llama.cpp cannot convert is a ConfigError."""
    if schema is None:
        return None
    import json

    from llama_cpp import LlamaGrammar

    try:
        return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except Exception as exc:  # the converter raises several types for a schema it cannot read
        raise ConfigError(f"llama.cpp cannot turn this JSON schema into a grammar ({exc})",
                          fix="give a JSON schema of objects, strings, numbers and arrays") from None


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
