"""The backend contract: every backend passes the same tests against a real model."""

import os

import pytest

from toolkit.errors import ToolkitError
from toolkit.params import DecodingParams
from toolkit.runtime.backends import LlamaCppBackend, ollama_host
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


@pytest.fixture(params=["llamacpp", "ollama", "openai", "ollama-parallel", "ollama-server"])
def backend(request, llamacpp_backend, served):
    """Every backend; `ollama-parallel` sends 3 requests at once to a server that batches them;
    `ollama-server` is a real Ollama at OLLAMA_HOST, skipped when none runs."""
    from toolkit.runtime.backends import OllamaBackend, OpenAIBackend

    if request.param == "llamacpp":
        return llamacpp_backend
    if request.param == "ollama":
        return OllamaBackend("smollm2", served)
    if request.param == "ollama-parallel":
        return OllamaBackend("smollm2", request.getfixturevalue("served_parallel"), parallel=3)
    if request.param == "openai":
        return OpenAIBackend("smollm2", served)
    from toolkit.doctor import check_ollama

    reachable, detail = check_ollama()
    model = os.environ.get("TOOLKIT_TEST_OLLAMA_MODEL", "")
    if not reachable or not model:
        pytest.skip(f"real Ollama contract run needs a server and TOOLKIT_TEST_OLLAMA_MODEL ({detail})")
    return OllamaBackend(model)


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
