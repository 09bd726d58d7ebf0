"""The clients people point at an Ollama or OpenAI server, driven against `toolkit serve`: the
official `openai` SDK (chat, embeddings as its default base64 and as floats, token-id inputs, the
Responses API plain and streamed, and its refusals), LangChain's OpenAI and Ollama integrations,
LlamaIndex's Ollama integration, and the JS `ollama` and `openai` packages (installed by .ci/run in
.ci/node; skipped with the reason where they are not). The official Python `ollama` client has its
own tests in test_serve.py.

Every answer is compared with the same server's own route on this machine (greedy decoding, or
/api/embed's vectors), never with a recorded text.
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

MODEL = "smollm2"
CAP = 8
PROMPT = "Why is the sky blue?"
TEXT = "Rayleigh scattering makes the sky look blue."
NODE_DIR = Path(__file__).resolve().parents[1] / ".ci" / "node"


@pytest.fixture(scope="module")
def url() -> str:
    from toolkit.models import resolve
    from toolkit.serve.server import serve_in_thread

    with serve_in_thread({MODEL: resolve(MODEL, hf=False).gguf}, n_ctx=1024, n_threads=1) as base:
        yield base


@pytest.fixture(scope="module")
def http(url) -> httpx.Client:
    with httpx.Client(base_url=url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def sdk(url):
    openai = pytest.importorskip("openai", reason="the openai package is in the test extras")
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def api_embed(http, text: str) -> list[float]:
    r = http.post("/api/embed", json={"model": MODEL, "input": text})
    assert r.status_code == 200, r.text
    return r.json()["embeddings"][0]


def chat_text(http, messages: list[dict]) -> str:
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": CAP, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def assert_same_vector(ours, reference) -> None:
    assert len(ours) == len(reference) > 0
    assert max(abs(a - b) for a, b in zip(ours, reference)) < 1e-6  # float32 round-off only


# -- the official openai SDK: embeddings ------------------------------------------------------------


def test_openai_sdk_default_embeddings_equal_api_embed(sdk, http):
    reference = api_embed(http, TEXT)
    got = sdk.embeddings.create(model=MODEL, input=TEXT)  # the SDK asks for base64 and decodes it
    assert_same_vector(got.data[0].embedding, reference)
    raw = http.post("/v1/embeddings", json={"model": MODEL, "input": [TEXT, "Another one."], "encoding_format": "base64"}).json()
    assert [d["index"] for d in raw["data"]] == [0, 1] and isinstance(raw["data"][0]["embedding"], str)
    decoded = base64.b64decode(raw["data"][0]["embedding"])
    assert_same_vector(struct.unpack(f"<{len(decoded) // 4}f", decoded), reference)
    floats = sdk.embeddings.create(model=MODEL, input=TEXT, encoding_format="float")
    assert_same_vector(floats.data[0].embedding, reference)


def test_openai_embeddings_take_token_ids(sdk, http):
    from toolkit.models import resolve
    from toolkit.runtime.backends import LlamaCppBackend

    ids = LlamaCppBackend(resolve(MODEL, hf=False).gguf, vocab_only=True).tokenize(TEXT, special=False)
    reference = api_embed(http, TEXT)
    one = sdk.embeddings.create(model=MODEL, input=ids)
    assert_same_vector(one.data[0].embedding, reference)
    two = sdk.embeddings.create(model=MODEL, input=[ids, ids[:3]])
    assert len(two.data) == 2 and two.data[0].embedding == one.data[0].embedding
    for bad, message in (([ids, []], "non-empty lists of integers"), ([10**9], "outside the model's vocabulary")):
        r = http.post("/v1/embeddings", json={"model": MODEL, "input": bad})
        assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    r = http.post("/v1/embeddings", json={"model": MODEL, "input": TEXT, "encoding_format": "int8"})
    assert r.status_code == 400 and r.json()["error"]["message"] == 'encoding_format must be "float" or "base64"'


# -- the official openai SDK: the Responses API -------------------------------------------------------


def test_openai_sdk_responses_create_equals_chat(sdk, http):
    response = sdk.responses.create(model=MODEL, input=PROMPT, max_output_tokens=CAP, temperature=0)
    assert response.output_text == chat_text(http, [{"role": "user", "content": PROMPT}]) and response.output_text
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == CAP and response.usage.input_tokens > 0 and response.id.startswith("resp_")
    # messages with instructions are the chat with a system message first
    messages = [{"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]},
                {"role": "assistant", "content": "Blue."}, {"role": "user", "content": PROMPT}]
    response = sdk.responses.create(model=MODEL, input=messages, instructions="Answer briefly.", max_output_tokens=CAP, temperature=0)
    assert response.output_text == chat_text(http, [{"role": "system", "content": "Answer briefly."},
                                                    {"role": "user", "content": "Name a colour."},
                                                    {"role": "assistant", "content": "Blue."}, {"role": "user", "content": PROMPT}])


def test_openai_sdk_responses_stream(sdk):
    plain = sdk.responses.create(model=MODEL, input=PROMPT, max_output_tokens=CAP, temperature=0)
    events = list(sdk.responses.create(model=MODEL, input=PROMPT, max_output_tokens=CAP, temperature=0, stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.incomplete"]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-4].text == events[-1].response.output_text == plain.output_text


def test_openai_sdk_responses_refuses_stateful_parts(sdk, http):
    import openai

    for extra, message in (({"previous_response_id": "resp_1"}, "stores no responses"), ({"conversation": "conv_1"}, "stores no"),
                           ({"background": True}, "background is not supported"),
                           ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools")):
        with pytest.raises(openai.BadRequestError, match=message):
            sdk.responses.create(model=MODEL, input=PROMPT, max_output_tokens=CAP, **extra)
    r = http.post("/v1/responses", json={"model": MODEL, "input": [{"type": "function_call_output", "call_id": "c", "output": "1"}]})
    assert r.status_code == 400 and "not supported" in r.json()["error"]["message"]


def test_openai_sdk_chat(sdk, http):
    reply = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=CAP, temperature=0)
    assert reply.choices[0].message.content == chat_text(http, [{"role": "user", "content": PROMPT}])
    assert reply.usage.completion_tokens <= CAP


# -- LangChain and LlamaIndex -------------------------------------------------------------------------


def test_langchain_openai(url, http):
    lc = pytest.importorskip("langchain_openai", reason="langchain-openai is in the test extras")
    chat = lc.ChatOpenAI(model=MODEL, base_url=f"{url}/v1", api_key="unused", max_tokens=CAP, temperature=0, max_retries=0)
    assert chat.invoke(PROMPT).content == chat_text(http, [{"role": "user", "content": PROMPT}])
    # its default tokenizes with tiktoken files fetched from the network: offline, send the text
    embeddings = lc.OpenAIEmbeddings(model=MODEL, base_url=f"{url}/v1", api_key="unused", check_embedding_ctx_length=False)
    assert_same_vector(embeddings.embed_query(TEXT), api_embed(http, TEXT))


def test_langchain_ollama(url, http):
    lc = pytest.importorskip("langchain_ollama", reason="langchain-ollama is in the test extras")
    chat = lc.ChatOllama(model=MODEL, base_url=url, num_predict=CAP, temperature=0)
    assert chat.invoke(PROMPT).content == chat_text(http, [{"role": "user", "content": PROMPT}])
    assert_same_vector(lc.OllamaEmbeddings(model=MODEL, base_url=url).embed_query(TEXT), api_embed(http, TEXT))


def test_llama_index_ollama(url, http):
    llms = pytest.importorskip("llama_index.llms.ollama", reason="llama-index-llms-ollama is in the test extras")
    embeddings = pytest.importorskip("llama_index.embeddings.ollama", reason="llama-index-embeddings-ollama is in the test extras")
    from llama_index.core.llms import ChatMessage

    llm = llms.Ollama(model=MODEL, base_url=url, request_timeout=120, temperature=0, additional_kwargs={"num_predict": CAP})
    reply = llm.chat([ChatMessage(role="user", content=PROMPT)])
    assert reply.message.content == chat_text(http, [{"role": "user", "content": PROMPT}])
    vector = embeddings.OllamaEmbedding(model_name=MODEL, base_url=url).get_text_embedding(TEXT)
    assert_same_vector(vector, api_embed(http, TEXT))


# -- the JS ollama and openai packages ----------------------------------------------------------------


def test_js_ollama_and_openai_clients(url, http):
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "openai").is_dir() or not (NODE_DIR / "node_modules" / "ollama").is_dir():
        pytest.skip("the JS clients are not installed: .ci/run installs them (npm install --prefix .ci/node)")
    proc = subprocess.run([node, str(NODE_DIR / "clients.mjs"), url, MODEL, str(CAP), TEXT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    greedy = chat_text(http, [{"role": "user", "content": PROMPT}])
    assert got["ollama_chat"] == got["openai_chat"] == got["responses_text"] == greedy
    assert got["ollama_generate_stream"]
    reference = api_embed(http, TEXT)
    assert_same_vector(got["ollama_embed"], reference)
    assert_same_vector(got["openai_embedding"], reference)
    assert got["responses_stream_types"][0] == "response.created" and got["responses_stream_types"][-1] == "response.incomplete"
    assert got["responses_stream_text"] == greedy
