"""lm-evaluation-harness's own CLI against `toolkit serve`: /v1/completions with echo + logprobs in
the legacy shape, /tokenize and /tokenizer_info, and the same per-item answers as `toolkit eval`
in process, through `local-completions` (token ids, the server's tokenizer) and `gguf` (text split
by character offset)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from eval_tasks import write_tasks

pytestmark = pytest.mark.slow

TASK_YAML = """task: tiny_arc
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def _post(url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=300).read())


@pytest.fixture(scope="module")
def server(default_gguf):
    from toolkit.serve.server import serve_in_thread

    with serve_in_thread({"smollm2": default_gguf}, n_ctx=1024, n_threads=1) as url:
        yield url


def test_echo_logprobs_are_the_in_process_scorer_numbers(server, default_gguf):
    from toolkit.runtime.scoring import Scorer

    info = json.loads(urllib.request.urlopen(server + "/tokenizer_info").read())
    assert info["eos_token"] == "<|im_end|>" and info["add_bos_token"] is False
    ids = _post(server, "/tokenize", {"prompt": "The sky is blue<|im_end|>", "add_special_tokens": False})["tokens"]
    with Scorer(default_gguf, n_ctx=256, n_threads=1) as scorer:
        assert ids == scorer.tokenize("The sky is blue<|im_end|>")
        expected = scorer.score(ids[:1], [ids[1:]])[0].logprobs
    for prompt in ("The sky is blue<|im_end|>", ids):  # text, and token ids taken as given
        reply = _post(server, "/v1/completions", {"model": "smollm2", "prompt": prompt, "echo": True, "logprobs": 3,
                                                  "max_tokens": 1, "temperature": 0})
        lp = reply["choices"][0]["logprobs"]
        assert lp["token_logprobs"][0] is None and len(lp["tokens"]) == len(ids) + 1
        assert lp["token_logprobs"][1:len(ids)] == pytest.approx(expected, abs=1e-6)
        assert all(len(top) == 3 for top in lp["top_logprobs"][1:])
        assert lp["text_offset"][:2] == [0, len("The")] and reply["choices"][0]["text"].startswith("The sky is blue<|im_end|>")
        assert max(lp["top_logprobs"][-1].values()) == lp["token_logprobs"][-1]  # the new token is the greedy one


def _harness(model: str, model_args: str, include: Path, out: Path) -> dict:
    """Per-item (acc, acc_norm) of tiny_arc through the harness's CLI."""
    cmd = [sys.executable, "-m", "lm_eval", "--model", model, "--model_args", model_args, "--tasks", "tiny_arc",
           "--include_path", str(include), "--output_path", str(out), "--log_samples", "--batch_size", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    samples = next(out.rglob("samples_tiny_arc_*.jsonl"))
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    return {r["doc_id"]: (r["acc"], r["acc_norm"]) for r in rows}


def test_harness_cli_against_serve_agrees_with_in_process(server, tmp_path):
    from toolkit.evaluate.harness.command import evaluate
    from toolkit.evaluate.harness.layouts import TASKS, read_task

    data = write_tasks(tmp_path / "data")
    rows = read_task(TASKS["arc_challenge"], data)["test"]
    (tmp_path / "tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    include = tmp_path / "tasks"
    include.mkdir()
    (include / "tiny_arc.yaml").write_text(TASK_YAML.format(data=tmp_path / "tiny.jsonl"))

    assert evaluate(["arc_challenge"], model=["default"], data_dir=data, out=tmp_path / "in-process") == 0
    ours = {}
    for line in (tmp_path / "in-process" / "default" / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        ours[row["doc_id"]] = (row["acc"], row["acc_norm"])

    local = _harness("local-completions", f"base_url={server}/v1/completions,model=smollm2,tokenizer_backend=remote,"
                     "tokenized_requests=True,num_concurrent=1,max_retries=1", include, tmp_path / "local")
    assert local == ours
    # `gguf` splits context and continuation by characters: here every choice starts a new token
    # (" carbon"), so the boundary falls where the harness puts it and the answers are the same
    text = _harness("gguf", f"base_url={server}", include, tmp_path / "gguf")
    assert text == ours


def _greedy(entries) -> bool:
    """Temperature 0, no repeat penalty: every reply token is the most likely one, or within 0.05
    nats of it (the reply is scored in one batch, generated one token at a time: the kernels sum
    in another order, which can swap a near-tie)."""
    return all(e["logprob"] >= max(t["logprob"] for t in e["top_logprobs"]) - 0.05 for e in entries)


def test_chat_logprobs_through_the_official_clients(server):
    import ollama
    import openai

    client = ollama.Client(host=server)
    messages = [{"role": "user", "content": "Name a color."}]
    chat = client.chat(model="smollm2", messages=messages, logprobs=True, top_logprobs=3, options={"temperature": 0, "repeat_penalty": 1.0, "num_predict": 8})
    entries = [e.model_dump() for e in chat.logprobs]
    assert entries and all(len(e["top_logprobs"]) == 3 for e in entries)
    assert "".join(e["token"] for e in entries) == chat.message.content and _greedy(entries)
    generated = client.generate(model="smollm2", prompt="The sky is", raw=True, logprobs=True, top_logprobs=2,
                                options={"temperature": 0, "repeat_penalty": 1.0, "num_predict": 6})
    entries = [e.model_dump() for e in generated.logprobs]
    assert "".join(e["token"] for e in entries) == generated.response and _greedy(entries)

    oa = openai.OpenAI(base_url=server + "/v1", api_key="none")
    reply = oa.chat.completions.create(model="smollm2", messages=messages, logprobs=True, top_logprobs=2, temperature=0, max_tokens=8)
    content = [e.model_dump() for e in reply.choices[0].logprobs.content]
    assert "".join(e["token"] for e in content) == reply.choices[0].message.content and _greedy(content)
    # the chat reply scores the same through both APIs (one scorer)
    assert [e["logprob"] for e in content] == pytest.approx([e.logprob for e in chat.logprobs][:len(content)], abs=1e-6)


def _joined(chunks: list[tuple[str, list[dict]]]) -> list[dict]:
    """The entries of streamed chunks (text, entries) joined, checking that no chunk carries a token
    whose text has not arrived yet (the tokens so far spell a prefix of the text so far)."""
    text, entries = "", []
    for piece, found in chunks:
        text, entries = text + piece, entries + found
        assert text.startswith("".join(e["token"] for e in entries))
    return entries


def test_streamed_chat_logprobs_equal_the_non_streamed_through_the_official_clients(server):
    """With stream and logprobs, each Ollama chunk and each OpenAI chunk carries its tokens'
    log-probabilities; joined, they are the non-streamed reply's (the same greedy request)."""
    import ollama
    import openai

    client = ollama.Client(host=server)
    messages = [{"role": "user", "content": "Name a color."}]
    options = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 8}
    whole = client.chat(model="smollm2", messages=messages, logprobs=True, top_logprobs=2, options=options)
    chunks = [(c.message.content, [e.model_dump() for e in c.logprobs or []])
              for c in client.chat(model="smollm2", messages=messages, logprobs=True, top_logprobs=2, options=options, stream=True)]
    assert "".join(text for text, _ in chunks) == whole.message.content
    assert len(chunks) > 2 and _joined(chunks) == [e.model_dump() for e in whole.logprobs]

    options = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 6}
    whole = client.generate(model="smollm2", prompt="The sky is", raw=True, logprobs=True, top_logprobs=2, options=options)
    chunks = [(c.response, [e.model_dump() for e in c.logprobs or []])
              for c in client.generate(model="smollm2", prompt="The sky is", raw=True, logprobs=True, top_logprobs=2, options=options,
                                       stream=True)]
    assert "".join(text for text, _ in chunks) == whole.response
    assert _joined(chunks) == [e.model_dump() for e in whole.logprobs]

    oa = openai.OpenAI(base_url=server + "/v1", api_key="none")
    ask = dict(model="smollm2", messages=messages, logprobs=True, top_logprobs=2, temperature=0, max_tokens=8)
    reply = oa.chat.completions.create(**ask)
    chunks = [(c.choices[0].delta.content or "", [e.model_dump() for e in c.choices[0].logprobs.content] if c.choices[0].logprobs else [])
              for c in oa.chat.completions.create(**ask, stream=True) if c.choices]
    assert "".join(text for text, _ in chunks) == reply.choices[0].message.content
    assert _joined(chunks) == [e.model_dump() for e in reply.choices[0].logprobs.content]
