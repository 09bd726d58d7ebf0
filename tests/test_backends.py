"""The backend contract: every registered backend passes the same tests against a real model; the
registry, the capabilities callers ask instead of names, and the one cached-generation key."""

import json
import os

import pytest

from toolkit.errors import ToolkitError
from toolkit.params import DecodingParams
from toolkit.runtime.backends import BACKENDS, Backend, Capabilities, LlamaCppBackend, ollama_host
from toolkit.runtime.generation import Generation

PROMPT = "Describe a method to evaluate a language model."


@pytest.fixture(scope="module")
def served():
    """A real local server (toolkit serve: Ollama's API and OpenAI's /v1) over loopback HTTP."""
    from toolkit.serve.server import serve_in_thread

    # one thread: this process also computes on its main thread (the llamacpp backend), and a second
    # OpenMP team of two threads on 2 cores slows both (see toolkit/serve/compute.py, Compute)
    with serve_in_thread({"smollm2": "smollm2"}, n_ctx=1024, n_threads=1) as url:
        yield url


@pytest.fixture(scope="module")
def served_parallel():
    """The same server decoding up to 3 requests together (`toolkit serve --parallel 3`)."""
    from toolkit.serve.server import serve_in_thread

    with serve_in_thread({"smollm2": "smollm2"}, n_ctx=1024, n_threads=1, parallel=3) as url:
        yield url


@pytest.fixture(params=[*BACKENDS, "ollama-parallel", "ollama-server"])
def backend(request, llamacpp_backend, served):
    """Every registered backend: one in process runs the default model, one at a server talks to
    `toolkit serve` (Ollama's API and OpenAI's /v1). Besides: `ollama-parallel` sends 3 requests at
    once to a server that batches them; `ollama-server` is a real Ollama at OLLAMA_HOST, skipped
    when none runs."""
    from toolkit.runtime.backends import OllamaBackend

    if request.param == "ollama-parallel":
        yield OllamaBackend("smollm2", request.getfixturevalue("served_parallel"), parallel=3)
        return
    if request.param == "ollama-server":
        from toolkit.doctor import check_ollama

        reachable, detail = check_ollama()
        model = os.environ.get("TOOLKIT_TEST_OLLAMA_MODEL", "")
        if not reachable or not model:
            pytest.skip(f"real Ollama contract run needs a server and TOOLKIT_TEST_OLLAMA_MODEL ({detail})")
        yield OllamaBackend(model)
        return
    kind = BACKENDS[request.param]
    if kind is LlamaCppBackend:
        yield llamacpp_backend  # the session's model, loaded once
    elif kind.capabilities.in_process:
        yield request.getfixturevalue("in_process")(kind, llamacpp_backend.gguf)
    else:
        with kind.open("smollm2", n_ctx=1024, url=served) as engine:
            yield engine


@pytest.fixture(scope="module")
def in_process():
    """Opens another in-process backend on the default model once for this module's tests."""
    opened = {}

    def get(kind, gguf):
        if kind not in opened:
            opened[kind] = kind.open(str(gguf), n_ctx=1024)
        return opened[kind]

    yield get
    for engine in opened.values():
        engine.close()


def test_text_out(backend):
    gen = backend.chat("Name a primary colour.", DecodingParams(temperature=0, max_tokens=24, num_ctx=1024))
    assert isinstance(gen, Generation) and gen.text.strip()
    assert gen.prompt_tokens > 5 and gen.completion_tokens > 0 and gen.seconds > 0


def test_max_tokens_is_honoured(backend):
    gen = backend.chat(PROMPT, DecodingParams(temperature=0, max_tokens=7, num_ctx=1024))
    assert gen.finish_reason == "length"
    assert 1 <= gen.completion_tokens <= 8  # re-tokenising the text may merge or split one token


def test_batch_generation_matches_the_contract(backend):
    params = DecodingParams(temperature=0.9, max_tokens=12, seed=5, num_ctx=1024)
    convs = [[{"role": "user", "content": p}] for p in ("Name a colour.", "Name a fruit.", "Name a tree.")]
    first = backend.generate_batch(convs, params)
    assert [g.text for g in first] == [g.text for g in backend.generate_batch(convs, params)]
    assert all(g.text and g.completion_tokens <= 13 for g in first)


def test_streamed_jobs_match_chat_and_can_be_added_while_running(backend):
    """generate_stream takes jobs as they come (a sweep queues a trial's next chunk once it is
    scored) and gives each the text chat() gives; a repeated prompt is one a batched backend shares."""
    from collections import deque

    params = DecodingParams(temperature=0.9, max_tokens=10, seed=3, num_ctx=1024)
    convs = [[{"role": "user", "content": p}] for p in ("Name a colour.", "Name a fruit.")]
    queue = deque([("a", convs[0], params), ("b", convs[1], params.replace(seed=4)), ("c", convs[0], params.replace(seed=5))])
    later = deque([("d", convs[1], params.replace(temperature=0.5)), ("e", convs[0], params.replace(seed=6))])
    got = {}
    for key, gen in backend.generate_stream(lambda: queue.popleft() if queue else None):
        got[key] = gen
        if later:
            queue.append(later.popleft())
    assert sorted(got) == ["a", "b", "c", "d", "e"]
    expected = {"a": (0, params), "b": (1, params.replace(seed=4)), "c": (0, params.replace(seed=5)),
                "d": (1, params.replace(temperature=0.5)), "e": (0, params.replace(seed=6))}
    for key, (conv, p) in expected.items():
        assert got[key].text == backend.chat(convs[conv], p).text, key


def test_cancelled_jobs_are_not_answered(backend):
    """A sweep drops a pruned trial's prompts, queued or running: they never come back."""
    from collections import deque

    params = DecodingParams(temperature=0.9, max_tokens=10, seed=3, num_ctx=1024)
    conv = [{"role": "user", "content": "Name a colour."}]
    queue = deque((key, conv, params) for key in ("a", "b", "c", "d"))
    got = [key for key, _ in backend.generate_stream(lambda: queue.popleft() if queue else None, lambda key: key in "bc")]
    assert got == ["a", "d"]


def test_same_seed_same_text_at_positive_temperature(backend):
    params = DecodingParams(temperature=1.0, top_p=0.95, max_tokens=40, seed=123, num_ctx=1024)
    first = backend.chat(PROMPT, params).text
    assert backend.chat(PROMPT, params).text == first
    others = {backend.chat(PROMPT, params.replace(seed=s)).text for s in (1, 2, 3)}
    assert len(others | {first}) > 1, "different seeds should give different samples"


def test_stop_sequences_are_honoured(backend):
    free = backend.chat("Count from 1 to 10, separated by commas.", DecodingParams(temperature=0, max_tokens=40, num_ctx=1024)).text
    assert "5" in free
    cut = backend.chat("Count from 1 to 10, separated by commas.",
                       DecodingParams(temperature=0, max_tokens=40, num_ctx=1024, stop=("5",))).text
    assert "5" not in cut and free.startswith(cut.rstrip()[:3])
    assert len(cut) < len(free)


COLOUR = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 24}}, "required": ["colour"],
          "additionalProperties": False}


def test_a_json_schema_constrains_every_json_mode_backend(backend):
    """A backend that declares a JSON mode answers a schema with a reply that follows it (llama.cpp
    in process by its grammar; Ollama's `format` and OpenAI's `response_format` at the server),
    and its streamed jobs give the text chat() gives."""
    if not backend.capabilities.json_mode:
        pytest.skip(f"{backend.name} declares no JSON mode")
    params = DecodingParams(temperature=0.9, max_tokens=40, seed=3, num_ctx=1024)
    conv = [{"role": "user", "content": "Name a colour."}]
    reply = backend.chat(conv, params, schema=COLOUR)
    assert set(json.loads(reply.text)) == {"colour"} and isinstance(json.loads(reply.text)["colour"], str), reply.text
    queue = [("a", conv, params), ("b", conv, params.replace(seed=4))]
    got = dict(backend.generate_stream(lambda: queue.pop(0) if queue else None, schema=COLOUR))
    assert got["a"].text == reply.text and got["b"].text == backend.chat(conv, params.replace(seed=4), schema=COLOUR).text


def test_streaming_yields_pieces_then_generation(backend):
    pieces = list(backend.stream([{"role": "user", "content": "Say hi."}], DecodingParams(temperature=0, max_tokens=10, num_ctx=1024)))
    assert isinstance(pieces[-1], Generation)
    assert "".join(p for p in pieces[:-1]) == pieces[-1].text


def test_unreachable_or_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ToolkitError, match="does not exist"):
        LlamaCppBackend(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(ToolkitError, match="cannot load"):
        LlamaCppBackend(bad)


def test_llamacpp_prompt_uses_the_gguf_chat_template(llamacpp_backend):
    text = llamacpp_backend.render([{"role": "user", "content": "hi"}])
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("env,url", [("", "http://127.0.0.1:11434"), ("0.0.0.0", "http://127.0.0.1:11434"),
                                     ("example.test:8080", "http://example.test:8080"),
                                     ("https://example.test", "https://example.test:443")])
def test_ollama_host_is_read_like_ollama(monkeypatch, env, url):
    monkeypatch.setenv("OLLAMA_HOST", env)
    assert ollama_host() == url


def test_chat_repl_keeps_history_and_resets():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "toolkit", "chat", "--max-tokens", "8", "--temperature", "0"],
                          input="Name a colour.\n/reset\nName an animal.\n/exit\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "history cleared" in proc.stderr and proc.stderr.count("tokens,") == 2
    assert len([l for l in proc.stdout.splitlines() if l.strip()]) == 2


def test_ollama_backend_unreachable_is_a_clear_error():
    from toolkit.runtime.backends import OllamaBackend

    with pytest.raises(ToolkitError, match="no Ollama server at http://127.0.0.1:9") as info:
        OllamaBackend("smollm2", "http://127.0.0.1:9").chat("hi", DecodingParams(max_tokens=4))
    assert "ollama serve" in str(info.value)


def test_parallel_is_validated_before_anything_runs():
    from toolkit.runtime.backends import OllamaBackend, open_backend

    for bad in (0, 65):
        with pytest.raises(ToolkitError, match=f"parallel={bad} is outside 1..64"):
            OllamaBackend("smollm2", "http://127.0.0.1:9", parallel=bad)
    with pytest.raises(ToolkitError, match="parallel=0"):
        open_backend("openai", "m", url="http://127.0.0.1:9", parallel=0)


def test_openai_backend_unreachable_is_a_clear_error():
    from toolkit.runtime.backends import OpenAIBackend

    with pytest.raises(ToolkitError, match="no OpenAI-compatible server"):
        OpenAIBackend("m", "http://127.0.0.1:9").chat("hi", DecodingParams(max_tokens=4))


# -------------------------------------------------------------------------------- registry


class Reverse(Backend):
    """A test-only backend that really generates: the last turn's words in reverse order, at most
    max_tokens of them. Registering it is one entry in BACKENDS."""

    name = "reverse"
    capabilities = Capabilities(in_process=True)

    @classmethod
    def open(cls, model, *, n_ctx=2048, url=None, parallel=None):
        engine = cls()
        engine._set_parallel(parallel)
        return engine

    def stream(self, messages, params):
        words = messages[-1]["content"].split()[::-1]
        kept = words[:params.max_tokens]
        pieces = [w + " " for w in kept]
        yield from pieces
        yield Generation("".join(pieces), "length" if len(words) > len(kept) else "stop", len(words), len(kept), 0.001)


def test_a_backend_registered_by_one_entry_is_offered_and_runs_end_to_end(tmp_path, monkeypatch, capsys):
    """One registry entry: `--backend` offers it, `generate` streams from it, `data prefs` generates
    through the cached helper with it (and resumes from the cache); without the entry the option refuses it."""
    from toolkit.cli import main
    from toolkit.evaluate.machine import measured_on

    monkeypatch.setitem(BACKENDS, Reverse.name, Reverse)
    assert main(["generate", "--backend", "reverse", "--model", "any", "one two three"]) == 0
    assert capsys.readouterr().out.strip() == "three two one"
    split = tmp_path / "train.jsonl"
    split.write_text("".join(json.dumps({"id": f"r{i}", "prompt": p, "response": "A reference answer.", "kind": "qa"}) + "\n"
                             for i, p in enumerate(["alpha beta", "gamma delta epsilon"])))
    out = tmp_path / "prefs.jsonl"
    args = ["data", "prefs", str(split), "--backend", "reverse", "--model", "any", "--out", str(out), "--max-tokens", "2"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["rejected"], r["rejected_finish"]) for r in rows] == [("beta alpha", "stop"), ("epsilon delta", "length")]
    calls = []
    monkeypatch.setattr(Reverse, "stream", lambda self, *a: calls.append(a) or iter(()))
    assert main(args) == 0 and not calls  # every answer from the cache: the backend was not asked
    assert "generations" not in measured_on("reverse")  # in process: no server made the numbers
    capsys.readouterr()
    monkeypatch.delitem(BACKENDS, Reverse.name)
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--backend", "reverse", "x"])
    assert exit_.value.code == 2 and "invalid choice: 'reverse'" in capsys.readouterr().err


def test_the_same_request_is_the_same_cache_key_from_every_command():
    """compare, the judge, gap drafts and data prefs build their requests one way, so one request
    is one key whichever command asks; the model, the conversation, the parameters and the seed each count."""
    from toolkit.data.prefs import conversation_of, pref_requests
    from toolkit.data.records import Example
    from toolkit.evaluate.compare import System, system_requests
    from toolkit.evaluate.judge import Judge
    from toolkit.gaps.draft import SYSTEM, draft_requests
    from toolkit.runtime.backends import BackendSpec
    from toolkit.runtime.cache import GenerationCache, Request

    params = DecodingParams(temperature=0, max_tokens=16, seed=7)
    model = BackendSpec("ollama", "m", "http://h:1").weights_id()

    def key(requests, model=model):
        (request,) = requests
        return GenerationCache.key(model, request)

    ex = Example("1", "Name a colour.", "Blue.", "qa")
    plain = {"compare": key(system_requests(System("s", "m", params), [ex])),
             "judge": key(Judge("m", "ollama", params=params).requests([ex.prompt])),
             "data prefs": key(pref_requests([conversation_of(ex)], params)),
             "a bare prompt": key([Request(ex.prompt, params)])}
    assert len(set(plain.values())) == 1, plain
    turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ex.prompt}, {"role": "assistant", "content": "Blue."}]
    chat = Example("2", ex.prompt, "Blue.", "chat", {"messages": turns})
    with_system = {"gaps --draft": key(draft_requests([ex.prompt], params)), "data prefs": key(pref_requests([conversation_of(chat)], params))}
    assert len(set(with_system.values())) == 1, with_system
    same = plain["compare"]
    assert with_system["data prefs"] != same
    assert key([Request(ex.prompt, params.replace(seed=8))]) != same
    assert key([Request(ex.prompt, params.replace(top_k=1))]) != same
    assert key([Request(ex.prompt, params)], BackendSpec("ollama", "m", "http://h:2").weights_id()) != same
    # an output schema is part of the request: set, it makes another key; unset, the key above
    assert key([Request(ex.prompt, params, {"type": "object"})]) != same
    assert key([Request.of(ex.prompt, params, schema=None)]) == same


class Shaped(Reverse):
    """Reverse with a JSON mode: its reply says which schema it was given."""

    name = "shaped"
    capabilities = Capabilities(in_process=True, json_mode=True)

    def stream(self, messages, params, schema=None):
        text = json.dumps({"schema": schema})
        yield Generation(text, "stop", 1, 1, 0.001)


def test_generate_cached_gives_a_schema_only_to_a_backend_with_a_json_mode(tmp_path, monkeypatch):
    """A request's schema reaches a backend that declares a JSON mode, in the requests' order among
    plain ones; a backend without one gets the prompt alone (Reverse's stream takes no schema)."""
    from toolkit.runtime.backends import BackendSpec
    from toolkit.runtime.cache import GenerationCache, Request, generate_cached

    params = DecodingParams(temperature=0, max_tokens=8, seed=1)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    requests = [Request.of("one two", params, schema=schema), Request.of("three four", params), Request.of("five six", params, schema=schema)]
    for cls in (Shaped, Reverse):
        monkeypatch.setitem(BACKENDS, cls.name, cls)
    cache = GenerationCache(tmp_path / "generations.sqlite")
    try:
        shaped, fresh = generate_cached(BackendSpec("shaped", "m"), requests, cache, "test")
        assert fresh == 3 and [json.loads(r["text"])["schema"] for r in shaped] == [schema, None, schema]
        assert generate_cached(BackendSpec("shaped", "m"), requests, cache, "test") == (shaped, 0)
        plain, _ = generate_cached(BackendSpec("reverse", "m"), requests, cache, "test")
        assert [r["text"] for r in plain] == ["two one ", "four three ", "six five "]
    finally:
        cache.close()


def test_the_judge_honours_parallel_through_the_cached_helper(tmp_path, monkeypatch):
    """The judge opens its backend with compare's --parallel (it used to ignore it), like every
    command that generates through `generate_cached`."""
    import toolkit.runtime.backends as backends
    from toolkit.evaluate.judge import Judge, Judging
    from toolkit.runtime.cache import GenerationCache

    opened = []

    def open_reverse(kind, model, **kwargs):
        opened.append(kwargs)
        return Reverse.open(model, **kwargs)

    monkeypatch.setattr(backends, "open_backend", open_reverse)
    cache = GenerationCache(tmp_path / "judgments.sqlite")
    try:
        judge = Judge.open("j", "ollama", "http://h:1", None, 8, seed=0, parallel=3)
        replies = Judging(judge, cache).replies(["first answer", "second one here"], "test")
    finally:
        cache.close()
    assert [r["text"] for r in replies] == ["answer first ", "here one second "]
    assert opened == [{"n_ctx": judge.params.num_ctx, "url": "http://h:1", "parallel": 3}]


def test_capabilities_not_names_decide_and_unknown_names_are_refused():
    from toolkit.errors import ConfigError
    from toolkit.runtime.backends import BackendName, backend_class, open_backend

    assert BackendName.choices() == list(BACKENDS) and {"llamacpp", "ollama", "openai"} <= set(BACKENDS)
    assert all(name == cls.name for name, cls in BACKENDS.items())
    assert backend_class("llamacpp").capabilities.in_process and not backend_class("openai").capabilities.in_process
    with pytest.raises(ConfigError, match="unknown backend 'nope'.*llamacpp, ollama, openai"):
        open_backend("nope", "m")
    # a server's model is known by its server and its name there
    assert backend_class("openai").weights_id("m", "http://h") == "openai:http://h:m"


def test_no_module_outside_runtime_compares_backend_names():
    """Which backend runs is asked of the registry (`capabilities`, `weights_id`), never decided by
    comparing its name, so a new backend needs no edit outside toolkit/runtime/."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "toolkit"
    found = []
    for path in root.rglob("*.py"):
        if "runtime" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                names = [c.value for s in sides for c in ast.walk(s) if isinstance(c, ast.Constant)]
                found += [f"{path.relative_to(root)}:{node.lineno} {n}" for n in names if n in BACKENDS]
    assert not found, found
