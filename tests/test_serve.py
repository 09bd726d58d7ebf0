"""`toolkit serve` over real loopback HTTP: the official `ollama` client, raw HTTP, OpenAI-style
requests, and the Ollama conformance examples (../shared/conformance/ollama/api-examples.json).

One server with the embedded model runs for the whole module; every generation is capped at a
few tokens because the machine is shared.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import ollama
import pytest

from toolkit.errors import BackendError, ConfigError
from toolkit.params import DEFAULTS, DecodingParams
from toolkit.runtime.backends import LlamaCppBackend
from toolkit.serve.registry import ollama_name
from toolkit.serve.request import HTTPError, keep_alive_seconds, ollama_params, openai_params
from toolkit.serve.server import Server, named_models, serve, serve_in_thread

pytestmark = pytest.mark.slow

MODEL = "smollm2"
CAP = 8  # tokens per generation in conformance runs: shapes, not essays
PROMPT = "Why is the sky blue?"
EXAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "ollama" / "api-examples.json"


@pytest.fixture(scope="module", params=[1, 3], ids=["one-at-a-time", "parallel"])
def url(request) -> str:
    """The server once as Ollama runs by default (one generation at a time) and once with
    generations batched across requests (`--parallel`): every test here holds for both."""
    from toolkit.models import resolve

    # one thread: llama.cpp's threads spin-wait on each other when a busy machine deschedules one
    with serve_in_thread({MODEL: resolve(MODEL, hf=False).gguf}, n_ctx=1024, n_threads=1, parallel=request.param) as base:
        yield base


@pytest.fixture(scope="module")
def client(url) -> ollama.Client:
    return ollama.Client(host=url)


@pytest.fixture(scope="module")
def http(url) -> httpx.Client:
    with httpx.Client(base_url=url, timeout=120) as c:
        yield c


def ndjson(text: str) -> list[dict]:
    assert text.endswith("\n") and "\n\n" not in text, "NDJSON: newline-terminated, no blank lines"
    return [json.loads(line) for line in text.splitlines()]


# -- the official ollama client ------------------------------------------------------------------


def test_client_list_show_ps_and_version(client, http):
    listed = client.list().models
    assert [m.model for m in listed] == ["smollm2:latest"]
    assert listed[0].details.format == "gguf" and listed[0].details.quantization_level == "Q4_1"
    assert listed[0].size > 50_000_000 and re.fullmatch(r"[0-9a-f]{64}", listed[0].digest)
    shown = client.show(MODEL)
    assert shown.modelinfo["general.architecture"] == "llama" and shown.modelinfo["general.parameter_count"] > 1e8
    assert "num_ctx" in shown.parameters and "<|im_start|>" in shown.template
    assert shown.capabilities == ["completion"] and shown.details.family == "llama"
    assert "TEMPLATE" in shown.modelfile and "FROM " in shown.modelfile
    client.generate(MODEL)  # an empty prompt loads the model (a conformance example may have unloaded it)
    running = client.ps().models
    assert running[0].model == "smollm2:latest" and running[0].context_length >= 1024
    # the 0.6.x client has no version(): /api/version over plain HTTP
    assert http.get("/api/version").json() == {"version": "0.12.0"}
    assert http.get("/").text == "Ollama is running" and http.head("/").status_code == 200


def test_generate_stream_equals_non_stream_and_reports_metrics(client):
    options = {"temperature": 0, "num_predict": CAP}
    whole = client.generate(MODEL, PROMPT, options=options)
    assert whole.done and whole.done_reason in ("stop", "length") and whole.response
    assert whole.prompt_eval_count > 5 and 1 <= whole.eval_count <= CAP + 1
    assert all(isinstance(v, int) and v > 0 for v in (whole.total_duration, whole.load_duration, whole.eval_duration))
    assert whole.context and all(isinstance(t, int) for t in whole.context)
    chunks = list(client.generate(MODEL, PROMPT, options=options, stream=True))
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert "".join(c.response for c in chunks) == whole.response
    assert chunks[-1].eval_count == whole.eval_count and chunks[-1].done_reason == whole.done_reason


def test_chat_stream_and_non_stream_agree_for_a_seed(client):
    messages = [{"role": "user", "content": "Name three fruits."}]
    options = {"temperature": 0.8, "seed": 11, "num_predict": 10}
    reply = client.chat(MODEL, messages=messages, options=options)
    assert reply.message.role == "assistant" and reply.message.content and reply.done
    chunks = list(client.chat(MODEL, messages=messages, options=options, stream=True))
    assert all(c.message.role == "assistant" for c in chunks) and chunks[-1].done
    assert "".join(c.message.content for c in chunks) == reply.message.content
    assert chunks[-1].eval_count == reply.eval_count


def test_same_seed_same_text_at_positive_temperature(client):
    def text(seed: int) -> str:
        return client.generate(MODEL, "Write a short poem.", options={"temperature": 0.8, "seed": seed, "num_predict": 12}).response

    first = text(7)
    assert text(7) == first
    assert {text(8), text(9)} != {first}, "other seeds should sample other text"


def test_num_predict_is_honoured(client):
    reply = client.generate(MODEL, "Describe a method to evaluate a language model.", options={"temperature": 0, "num_predict": 5})
    assert reply.done_reason == "length" and 1 <= reply.eval_count <= 6


def test_stop_is_honoured(client):
    prompt, options = "Count from 1 to 10, separated by commas.", {"temperature": 0, "num_predict": 30}
    free = client.generate(MODEL, prompt, options=options).response
    assert "5" in free
    cut = client.generate(MODEL, prompt, options=options | {"stop": ["5"]})
    assert "5" not in cut.response and len(cut.response) < len(free) and cut.done_reason == "stop"


def test_num_ctx_bounds_the_answer(client):
    reply = client.generate(MODEL, PROMPT, options={"temperature": 0, "num_ctx": 128, "num_predict": 500})
    assert reply.done_reason == "length" and reply.prompt_eval_count + reply.eval_count <= 128
    with pytest.raises(ollama.ResponseError, match="exceeds the context length") as err:
        client.generate(MODEL, "word " * 200, options={"num_ctx": 128})
    assert err.value.status_code == 400


def test_a_larger_num_ctx_reloads_with_that_context(client):
    client.generate(MODEL, options={"num_ctx": 1536})  # a load request takes the request's options, as in Ollama
    assert client.ps().models[0].context_length == 1536


def test_context_continues_a_conversation(client):
    first = client.generate(MODEL, "My name is Ada.", options={"temperature": 0, "num_predict": 4})
    second = client.generate(MODEL, "What is my name?", context=first.context, options={"temperature": 0, "num_predict": 4})
    assert second.prompt_eval_count > first.prompt_eval_count and len(second.context) > len(first.context)


def test_unknown_model_is_a_404_response_error(client):
    for call in (lambda: client.generate("nope", "hi"), lambda: client.chat("nope", messages=[{"role": "user", "content": "hi"}]),
                 lambda: client.show("nope"), lambda: list(client.generate("nope", "hi", stream=True))):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 404 and err.value.error == "model 'nope' not found"


# -- raw HTTP --------------------------------------------------------------------------------------


def test_stream_is_chunked_ndjson_without_blank_lines(http):
    with http.stream("POST", "/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                                                 "options": {"num_predict": 4}}) as r:  # stream defaults to true
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        assert r.headers["transfer-encoding"] == "chunked"
        lines = list(r.iter_lines())
    assert lines and all(lines) and all(json.loads(line)["message"]["role"] == "assistant" for line in lines)
    assert json.loads(lines[-1])["done"] is True


@pytest.mark.parametrize("body, status, error", [
    (b"", 400, "missing request body"),
    (b'{"model": "smollm2", "prompt": ', 400, "unexpected EOF"),
    (b"[1]", 400, "json: cannot unmarshal array into Go value of type api.GenerateRequest"),
    ({"model": MODEL, "prompt": 5}, 400, "json: cannot unmarshal number into Go struct field GenerateRequest.prompt of type string"),
    ({"model": MODEL, "prompt": "x", "options": {"temperature": "hot"}}, 400, 'option "temperature" must be of type float32'),
    ({"model": MODEL, "prompt": "x", "options": {"num_predict": True}}, 400, 'option "num_predict" must be of type integer'),
    ({"model": MODEL, "prompt": "x", "options": {"stop": "x"}}, 400, 'option "stop" must be of type array'),
    ({"model": MODEL, "prompt": "x", "options": {"temperature": 5}}, 400, "temperature=5 is outside its valid range [0.0, 2.0]"),
    ({"model": MODEL, "prompt": "x", "keep_alive": "soon"}, 400, 'time: invalid duration "soon"'),
    ({"model": MODEL, "prompt": "x", "format": "yaml"}, 400, 'invalid format: expected "json" or a valid JSON schema'),
    ({"model": MODEL, "prompt": "x", "context": [10**9]}, 400, "context contains a token id outside the vocabulary"),
])
def test_bad_generate_requests_are_400s(http, body, status, error):
    r = http.post("/api/generate", content=body) if isinstance(body, bytes) else http.post("/api/generate", json=body)
    assert (r.status_code, r.json()) == (status, {"error": error})


def test_models_are_not_stored_or_fetched(http):
    for method, path in [("POST", "/api/pull"), ("POST", "/api/create"), ("DELETE", "/api/delete"), ("HEAD", "/api/blobs/sha256:00")]:
        r = http.request(method, path, json={"model": "x"} if method != "HEAD" else None)
        assert r.status_code == 501, path
    assert http.get("/api/nothing").status_code == 404 and http.get("/api/generate").status_code == 405


def test_a_client_that_leaves_mid_stream_frees_the_server(http, client):
    with http.stream("POST", "/api/generate", json={"model": MODEL, "prompt": "Write a long story.",
                                                    "options": {"num_predict": 400}}) as r:
        next(r.iter_lines())  # one chunk, then hang up
    start = time.perf_counter()
    assert client.generate(MODEL, "Hi", options={"num_predict": 2}).done
    assert time.perf_counter() - start < 60  # not queued behind 400 tokens nobody reads


def test_requests_wait_for_each_other(client):
    results: list[str] = []

    def ask() -> None:
        results.append(client.generate(MODEL, "Hi", options={"temperature": 0, "num_predict": 4}).response)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 2 and len(set(results)) == 1  # serialised on one context, same greedy text


def test_every_llama_cpp_computation_runs_on_one_thread(url, monkeypatch):
    """llama.cpp's OpenMP keeps a thread team per computing thread; two teams on this 2-core
    machine halve decode speed for good (53 -> 27 tok/s). Requests arrive on many connection
    threads, so the server must compute on one thread only, whatever the request."""
    import llama_cpp
    import llama_cpp.llama_cpp as bindings  # what llama_cpp.Llama calls

    seen: set[str] = set()
    decode = bindings.llama_decode

    def spy(*args):
        seen.add(threading.current_thread().name)
        return decode(*args)

    monkeypatch.setattr(llama_cpp, "llama_decode", spy)  # what toolkit.runtime.batched calls
    monkeypatch.setattr(bindings, "llama_decode", spy)

    def ask(i: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as own:  # a connection, so a server thread, of its own
            own.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": False,
                                        "options": {"num_predict": 3, "seed": i}}).raise_for_status()
            own.post("/api/generate", json={"model": MODEL, "prompt": "Hi", "format": "json", "stream": False,
                                            "options": {"num_predict": 3}}).raise_for_status()  # the one-at-a-time path
            own.post("/api/embed", json={"model": MODEL, "input": "Hi"}).raise_for_status()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert seen == {"llama-compute"}


def test_embed(http):
    r = http.post("/api/embed", json={"model": MODEL, "input": ["Why is the sky blue?", "Why is the grass green?"], "dimensions": 64})
    vectors = r.json()["embeddings"]
    assert r.status_code == 200 and [len(v) for v in vectors] == [64, 64]
    assert all(abs(sum(x * x for x in v) - 1) < 1e-6 for v in vectors)
    assert http.post("/api/embed", json={"model": MODEL, "input": ["a", ""]}).status_code == 400  # "" crashes llama.cpp


# -- OpenAI-compatible routes --------------------------------------------------------------------


def sse(text: str) -> list:
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") and "\n" not in e for e in events), "one data: line per event"
    assert events[-1] == "data: [DONE]"
    return [json.loads(e[len("data: "):]) for e in events[:-1]]


def test_openai_chat_completions(http):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 6, "seed": 5, "temperature": 0.8}
    first = http.post("/v1/chat/completions", json=body).json()
    assert first["object"] == "chat.completion" and first["model"] == MODEL
    choice = first["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    usage = first["usage"]
    assert 1 <= usage["completion_tokens"] <= 7 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    again = http.post("/v1/chat/completions", json=body).json()
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]  # same seed, same text
    streamed = http.post("/v1/chat/completions", json=body | {"stream": True, "stream_options": {"include_usage": True}})
    assert streamed.headers["content-type"] == "text/event-stream"
    chunks = sse(streamed.text)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == choice["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == choice["finish_reason"] and chunks[-1]["usage"] == usage


def test_openai_completions_models_and_embeddings(http):
    done = http.post("/v1/completions", json={"model": MODEL, "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0}).json()
    assert done["object"] == "text_completion" and done["choices"][0]["finish_reason"] == "length" and done["usage"]["completion_tokens"] <= 4
    assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["smollm2:latest"]
    assert http.get("/v1/models/smollm2:latest").json()["owned_by"] == "library"
    emb = http.post("/v1/embeddings", json={"model": MODEL, "input": "hello"}).json()
    assert emb["object"] == "list" and len(emb["data"][0]["embedding"]) == 576


@pytest.mark.parametrize("body, status, kind", [
    ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "not_found_error"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 9}, 400, "invalid_request_error"),
    ({"model": MODEL, "messages": []}, 400, "invalid_request_error"),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "invalid_request_error"),
])
def test_openai_errors_use_openai_envelope(http, body, status, kind):
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == status and r.json()["error"]["type"] == kind and r.json()["error"]["message"]


# -- request -> DecodingParams (no server) ---------------------------------------------------------


def test_ollama_options_map_to_decoding_params():
    base = DEFAULTS.replace(seed=1, max_tokens=32768)
    params = ollama_params({"seed": 42, "num_predict": 100, "top_k": 20, "top_p": 0.9, "min_p": 0.05, "temperature": 0.2,
                            "repeat_penalty": 1.2, "stop": ["\n", "user:"], "num_ctx": 1024, "typical_p": 0.7,
                            "numa": "ignored", "draft_num_predict": 4}, base)
    assert params == DecodingParams(temperature=0.2, top_p=0.9, top_k=20, min_p=0.05, max_tokens=100, repeat_penalty=1.2,
                                    seed=42, num_ctx=1024, stop=("\n", "user:"))
    assert ollama_params({"seed": -1, "num_predict": -1}, base) == base  # random seed, until the context is full
    assert ollama_params({"top_k": 20.7}, base).top_k == 20  # Go truncates floats given for integers
    with pytest.raises(HTTPError, match='"stop" must be of an array of strings'):
        ollama_params({"stop": [1]}, base)
    with pytest.raises(ConfigError, match="top_p"):
        ollama_params({"top_p": 0}, base)


def test_openai_body_maps_to_decoding_params():
    base = DEFAULTS.replace(seed=1)
    params = openai_params({"temperature": 0.3, "max_completion_tokens": 9, "stop": "END", "seed": 4, "top_k": 5}, base)
    assert (params.temperature, params.max_tokens, params.stop, params.seed, params.top_k) == (0.3, 9, ("END",), 4, 5)
    with pytest.raises(HTTPError):
        openai_params({"stop": 3}, base)


def test_streamed_logprobs_go_with_the_piece_that_completes_their_token():
    """A token spanning two pieces goes with the second; a byte the pieces never show (a tokenizer's
    added space) puts its token with the last piece; every token is sent once, in order."""
    from toolkit.serve.logprobs import _shares

    entry = lambda text: {"token": text, "bytes": list(text.encode())}  # noqa: E731
    found = [entry("Hello"), entry(" wor"), entry("ld"), entry("é!")]
    shares = _shares(["Hel", "lo wor", "ldé", "!"], found)
    assert [[e["token"] for e in share] for share in shares] == [[], ["Hello", " wor"], ["ld"], ["é!"]]
    shares = _shares(["Hi", " there"], [entry(" Hi"), entry(" there")])
    assert [[e["token"] for e in share] for share in shares] == [[], [" Hi", " there"]]


def test_a_taken_port_fails_before_any_model_loads():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match="cannot listen"):
            Server({"x": "/does/not/exist.gguf"}, port=taken.getsockname()[1])  # the bad path is never reached


def test_parallel_requests_decode_together_with_the_texts_of_one_at_a_time(llamacpp_backend):
    """With --parallel, requests from several clients share llama.cpp batches, and each still gets
    the text it gets alone (same seed): the server's contract does not depend on who else asks."""
    prompts = ["Name a colour.", "Write a haiku about rain.", "Explain gravity briefly."]
    options = {"temperature": 0.9, "num_predict": 24, "num_ctx": 1024}
    with Server({MODEL: MODEL}, port=0, n_ctx=1024, n_threads=1, parallel=3) as server:
        server.start()
        client = ollama.Client(host=server.url)
        start = threading.Barrier(len(prompts))
        texts: dict[int, str] = {}

        def ask(i: int) -> None:
            start.wait()
            reply = client.chat(model=MODEL, messages=[{"role": "user", "content": prompts[i]}], options=options | {"seed": i})
            texts[i] = reply.message.content

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert server.registry.models[f"{MODEL}:latest"].engine.gen.most_live >= 2, "the requests were not batched"
    for i, prompt in enumerate(prompts):
        alone = llamacpp_backend.chat(prompt, DecodingParams(temperature=0.9, max_tokens=24, num_ctx=1024, seed=i))
        assert texts[i] == alone.text, i
    with pytest.raises(ConfigError, match="--parallel 0 is outside"):
        Server({MODEL: MODEL}, port=0, parallel=0)


@pytest.mark.parametrize("value,parallel", [(None, 1), ("", 1), ("0", 1), ("4", 4), (" 16 ", 16), ("four", None), ("-2", None)])
def test_parallel_defaults_to_ollama_num_parallel(monkeypatch, value, parallel):
    from toolkit.serve.server import env_parallel

    if value is None:
        monkeypatch.delenv("OLLAMA_NUM_PARALLEL", raising=False)
    else:
        monkeypatch.setenv("OLLAMA_NUM_PARALLEL", value)
    if parallel is None:
        with pytest.raises(ConfigError, match="OLLAMA_NUM_PARALLEL=.* is not a whole number"):
            env_parallel()
    else:
        assert env_parallel() == parallel


def test_names_keep_alive_and_cli_contract(default_gguf):
    assert ollama_name("smollm2") == "smollm2:latest" and ollama_name("a/b:q4") == "a/b:q4"
    assert named_models("smollm2") == {"smollm2:latest": default_gguf}
    assert list(named_models(str(default_gguf), name="tiny:v1")) == ["tiny:v1"]
    assert list(named_models(str(default_gguf))) == [f"{default_gguf.stem}:latest"]
    with pytest.raises(ConfigError):
        named_models("smollm2", name="a,b")
    assert [keep_alive_seconds(v) for v in (None, 0, 0.0, "0", "5m", "1h30m", "-1s", 300)] == [None, 0, 0.0, 0.0, 300, 5400, -1, 300]
    from toolkit.cli import parse_docstring

    desc, args = parse_docstring(serve.__doc__)
    assert desc and set(args) == set(inspect.signature(serve).parameters)


# -- conformance: every example in api-examples.json ---------------------------------------------

NOT_SERVED = {"/api/create", "/api/blobs/:digest", "/api/copy", "/api/delete", "/api/pull", "/api/push"}


def _ids(kind: str) -> list:
    if not EXAMPLES.exists():  # the conformance_dir fixture skips these
        return [pytest.param(-1, id="absent")]
    data = json.loads(EXAMPLES.read_text())[kind]
    slug = lambda e: re.sub(r"\W+", "-", e.get("title") or e.get("case", "")).strip("-").lower()
    # unloads last: every reload costs a cold prompt evaluation on a busy CPU
    unloads = lambda i: (data[i].get("request") or {}).get("keep_alive") == 0
    return [pytest.param(i, id=f"{i}-{slug(data[i])}") for i in sorted(range(len(data)), key=unloads)]


def _load(conformance_dir: Path, kind: str, index: int) -> dict:
    return json.loads((conformance_dir / "ollama" / "api-examples.json").read_text())[kind][index]


def shape_problems(ours, theirs, where: str = "$") -> list[str]:
    """Where `ours` lacks a key of `theirs` or has another JSON type (null in theirs: optional)."""
    if theirs is None:
        return []
    if isinstance(theirs, dict):
        if not isinstance(ours, dict):
            return [f"{where}: expected an object"]
        if where.endswith("model_info"):  # keys depend on the model: compare the general.* ones
            theirs = {k: v for k, v in theirs.items() if k.startswith("general.")}
        return [p for k, v in theirs.items() if v is not None
                for p in ([f"{where}.{k}: missing"] if k not in ours else shape_problems(ours[k], v, f"{where}.{k}"))]
    if isinstance(theirs, list):
        if not isinstance(ours, list):
            return [f"{where}: expected an array"]
        return shape_problems(ours[0], theirs[0], f"{where}[0]") if ours and theirs else []
    kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}[type(theirs)]
    ok = isinstance(ours, kinds) and (isinstance(theirs, bool) or not isinstance(ours, bool))
    return [] if ok else [f"{where}: {type(ours).__name__} where the example has {type(theirs).__name__}"]


def _capability_refusal(request: dict) -> str | None:
    """What Ollama answers for a model without the capability an example needs (ours has none)."""
    if request.get("suffix"):
        return "does not support insert"
    if request.get("images") or any(m.get("images") for m in request.get("messages", [])):
        return "does not support vision"
    if request.get("tools"):
        return "does not support tools"
    return None


def _prepare(example: dict) -> dict | None:
    request = copy.deepcopy(example["request"])
    if request is None:
        return None
    if "model" in request:
        request["model"] = MODEL
    if request.get("prompt") or request.get("messages"):  # a generation: keep it short
        options = request.setdefault("options", {})
        options["num_predict"] = min(options.get("num_predict", CAP), CAP)
    return request


@pytest.mark.parametrize("index", _ids("examples"))
def test_conformance_example(conformance_dir, http, index):
    example = _load(conformance_dir, "examples", index)
    endpoint, method = example["endpoint"], example["method"]
    if endpoint in NOT_SERVED:
        pytest.skip(f"{method} {endpoint}: toolkit serve serves the GGUFs it was started with; it does not "
                    "create, copy, delete, pull or push models (it answers 501)")
    if endpoint == "/api/ps":
        http.post("/api/generate", json={"model": MODEL})  # make sure something is running
    request = _prepare(example)
    r = http.request(method, endpoint, json=request) if request is not None else http.request(method, endpoint)
    refusal = _capability_refusal(request or {})
    if refusal:  # Ollama's answer for a model lacking the capability: status and message
        assert r.status_code == 400 and r.json()["error"] == f"smollm2:latest {refusal}"
        return
    assert r.status_code == 200, r.text
    lines = ndjson(r.text if r.text.endswith("\n") else r.text + "\n")
    roles = {resp.get("role", ""): resp["body"] for resp in example["responses"]}
    final = roles.get("final chunk (done=true)") or (example["responses"][0]["body"] if example["responses"] else {})
    chunk = roles.get("stream chunk (done=false)")
    if chunk is not None:
        assert len(lines) >= 2 and all(not line["done"] for line in lines[:-1])
        assert [p for line in lines[:-1] for p in shape_problems(line, chunk)] == []
    assert shape_problems(lines[-1], final) == []
    if request and request.get("raw"):
        assert "context" not in lines[-1] and isinstance(lines[-1]["response"], str)  # raw: no context, per the doc note


ERROR_REQUESTS = {  # error case -> (path, request body: dict, raw bytes or None)
    "unknown model (generate)": ("/api/generate", {"model": "nope", "prompt": "hi"}),
    "unknown model (chat)": ("/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
    "unknown model (show)": ("/api/show", {"model": "nope"}),
    "empty/missing model name (chat)": ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}),
    "empty model name (generate)": ("/api/generate", {"model": "", "prompt": "hi"}),
    "empty model name (show)": ("/api/show", {"model": ""}),
    "no request body": ("/api/generate", None),
    "malformed JSON / wrong field type": ("/api/generate", b'{"model": "smollm2", "prompt": "hi"'),
    "top_logprobs outside 0..20": ("/api/generate", {"model": MODEL, "prompt": "hi", "top_logprobs": 21}),
    "raw with template/system/context": ("/api/generate", {"model": MODEL, "prompt": "hi", "raw": True, "system": "s"}),
    "think requested on non-thinking model": ("/api/generate", {"model": MODEL, "prompt": "hi", "think": True}),
    "bad option type at run time (e.g. \"temperature\": \"hot\")": (
        "/api/generate", {"model": MODEL, "prompt": "hi", "options": {"temperature": "hot"}}),
    "error before first streamed byte": ("/api/generate", {"model": "nope", "prompt": "hi", "stream": True}),
    "/api/generate unload": ("/api/generate", {"model": MODEL, "keep_alive": 0}),
    "/api/chat load (empty messages)": ("/api/chat", {"model": MODEL, "messages": []}),
}
ERROR_SKIPS = {
    "model lacks completion capability (e.g. embedding model on /api/generate)":
        "every served model is a chat GGUF with the completion capability",
    "model file missing when scheduling": "GGUFs are resolved and loaded before the server listens; a missing file fails `toolkit serve` at start",
    "request canceled by client": "499 is logged by Ollama for a client that left and is never read by one; "
                                  "test_a_client_that_leaves_mid_stream_frees_the_server covers what matters",
    "server queue full": "needs a server with a short queue: tests/test_serve_abuse.py checks this status and message "
                         "with OLLAMA_MAX_QUEUE=1 (this module's server has Ollama's default, 512)",
    "create: neither from nor files": "/api/create is not served (models are given to `toolkit serve`)",
}
# Deliberate difference: Ollama reports a bad option type as 500 (it surfaces while scheduling the
# runner); it is the client's mistake, so toolkit serve answers 400 with Ollama's message.
STATUS_OVERRIDES = {"bad option type at run time (e.g. \"temperature\": \"hot\")": 400}


def _error_flow(http, monkeypatch, example: dict) -> None:
    """The "error after streaming started" case: a model failure after the first piece."""
    from toolkit.runtime.batched import BatchedGenerator

    def failing(self, prompt, params, grammar=None, cancelled=None):
        yield " Yes"
        raise BackendError("an error was encountered while running the model")

    def failing_step(self, live):  # in parallel: after each request's first token is out
        raise BackendError("an error was encountered while running the model")

    monkeypatch.setattr(LlamaCppBackend, "stream_prompt", failing)
    monkeypatch.setattr(BatchedGenerator, "_step", failing_step)
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "hi"})
    lines = ndjson(r.text)
    assert r.status_code == example["status"] and lines[-1] == example["ndjson"][-1]
    assert shape_problems(lines[0], example["ndjson"][0]) == []


@pytest.mark.parametrize("index", _ids("error_examples"))
def test_conformance_error_example(conformance_dir, http, monkeypatch, index):
    example = _load(conformance_dir, "error_examples", index)
    case = example["case"]
    if case in ERROR_SKIPS:
        pytest.skip(ERROR_SKIPS[case])
    if case == "error after streaming started":
        return _error_flow(http, monkeypatch, example)
    path, body = ERROR_REQUESTS[case]
    r = http.post(path, content=body) if isinstance(body, bytes) or body is None else http.post(path, json=body)
    expected = STATUS_OVERRIDES.get(case, example["status"])
    assert r.status_code == (expected if isinstance(expected, int) else 404), r.text  # "500 (or the error's own status)"
    assert r.headers["content-type"].startswith("application/json")
    theirs = json.loads(json.dumps(example["body"]).replace("mymodel", MODEL))
    if str(theirs.get("error", "")).startswith(("<", "...")):  # a placeholder for Go's own text
        assert isinstance(r.json()["error"], str) and r.json()["error"]
    elif "error" in theirs:
        assert r.json() == theirs
    else:
        assert shape_problems(r.json(), theirs) == [] and r.json()["done_reason"] == theirs["done_reason"]
