"""Users' own models, base ones included (issue 23), on tiny random-weight models made here
(tests/tiny_models.py): a Gemma 3 and a Llama whose tokenizers add BOS (`add_bos_token` true),
without a chat template, and a Gemma 3 with its chat template (which writes `<bos>` itself).

Every path that hands a text prompt to llama.cpp starts it with exactly one BOS; a GGUF without a
chat template runs in raw mode or through a Modelfile TEMPLATE and is refused, before any work,
with a message naming both; verify checks what applies; export moves a GGUF into place only after
its checks pass, and makes a stop token of its own end generation in llama.cpp.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest
from chat_templates import GEMMA3
from tiny_models import base_model, build_tiny, to_gguf

from toolkit.errors import ConfigError, ModelError
from toolkit.params import DEFAULTS

TEXT = "Once upon a time"
SHORT = DEFAULTS.replace(max_tokens=4, temperature=0.0, num_ctx=256)


@pytest.fixture(scope="module")
def base(default_hf_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(HF dir, f32 GGUF) of a tiny base Gemma 3: add_bos_token true, no chat template."""
    hf_dir = base_model(default_hf_dir, tmp_path_factory.mktemp("base") / "gemma-base")
    return hf_dir, to_gguf(hf_dir)


@pytest.fixture(scope="module")
def gemma_chat(default_hf_dir, tmp_path_factory) -> Path:
    """The f32 GGUF of a tiny Gemma 3 with its chat template, which writes `<bos>` itself."""
    hf_dir = base_model(default_hf_dir, tmp_path_factory.mktemp("chat") / "gemma-chat", template=GEMMA3)
    return to_gguf(hf_dir)


def _bos(backend) -> int:
    return int(backend.metadata["tokenizer.ggml.bos_token_id"])


def test_every_text_prompt_path_starts_with_one_bos(base, gemma_chat, tmp_path):
    """Raw prompts, chat renders, the batched engine, streamed jobs and the cached helper that
    compare, the judge, gap drafts and data prefs generate through: BOS once, as the GGUF asks."""
    from toolkit.runtime.backends import BackendSpec, LlamaCppBackend, open_backend
    from toolkit.runtime.cache import GenerationCache, Request, generate_cached

    gguf = base[1]
    with open_backend("llamacpp-raw", str(gguf), n_ctx=256, parallel=2) as raw:
        bos, ids = _bos(raw), raw.tokenize(TEXT)
        assert raw.metadata["tokenizer.ggml.add_bos_token"] == "true" and ids[0] != bos
        assert raw.prompt_tokens(TEXT) == [bos, *ids]
        assert raw.prompt_tokens("<bos>" + TEXT) == [bos, *ids]  # never a second one
        one = raw.chat(TEXT, SHORT)
        batch = raw.generate_batch([[{"role": "user", "content": TEXT}]] * 2, SHORT)
        jobs = deque([(0, TEXT, SHORT)])
        streamed = [g for _, g in raw.generate_stream(lambda: jobs.popleft() if jobs else None)]
        assert {one.prompt_tokens, *(g.prompt_tokens for g in batch + streamed)} == {len(ids) + 1}
        assert one.text == batch[0].text == streamed[0].text  # one-at-a-time and batched agree
    cache = GenerationCache(tmp_path / "generations.sqlite")
    try:
        outputs, made = generate_cached(BackendSpec("llamacpp-raw", str(gguf)), [Request.of(TEXT, SHORT)], cache, "t")
    finally:
        cache.close()
    assert made == 1 and outputs[0]["prompt_tokens"] == len(ids) + 1
    with LlamaCppBackend(gemma_chat, n_ctx=256) as chat:
        messages = [{"role": "user", "content": TEXT}]
        rendered = chat.render(messages)
        tokens = chat.prompt_tokens(rendered)
        assert rendered.startswith("<bos>") and tokens[0] == _bos(chat) and tokens.count(_bos(chat)) == 1
        assert chat.chat(messages, SHORT).prompt_tokens == len(tokens)


def test_serve_adds_bos_to_raw_templated_and_openai_prompts(base):
    """`toolkit serve`: raw /api/generate, a request carrying its own template and /v1/completions
    tokenize like Ollama (BOS per the GGUF), and the returned context holds one BOS."""
    import httpx

    from toolkit.runtime.backends import LlamaCppBackend
    from toolkit.serve.server import serve_in_thread

    gguf = base[1]
    with LlamaCppBackend(gguf, vocab_only=True) as vocab:
        bos, n = _bos(vocab), len(vocab.tokenize(TEXT))
    options = {"num_predict": 2, "temperature": 0}
    with serve_in_thread({"base": gguf}, n_ctx=256, n_threads=1) as url:
        raw = httpx.post(f"{url}/api/generate", json={"model": "base", "prompt": TEXT, "raw": True, "stream": False,
                                                      "options": options}, timeout=60).json()
        templated = httpx.post(f"{url}/api/generate", json={"model": "base", "prompt": TEXT, "template": "{{ .Prompt }}",
                                                            "stream": False, "options": options}, timeout=60).json()
        completion = httpx.post(f"{url}/v1/completions", json={"model": "base", "prompt": TEXT, "max_tokens": 2,
                                                               "temperature": 0}, timeout=60).json()
        again = httpx.post(f"{url}/api/generate", json={"model": "base", "prompt": " Then", "template": "{{ .Prompt }}",
                                                        "stream": False, "context": templated["context"], "options": options},
                           timeout=60).json()
    assert raw["prompt_eval_count"] == templated["prompt_eval_count"] == completion["usage"]["prompt_tokens"] == n + 1
    assert templated["context"][0] == bos and templated["context"].count(bos) == 1
    with LlamaCppBackend(gguf, vocab_only=True) as vocab:  # a context sent back keeps its one BOS
        resent = vocab.prompt_tokens(vocab.detokenize(templated["context"]) + " Then")
    assert resent.count(bos) == 1 and again["prompt_eval_count"] == len(resent)


def test_a_gguf_without_template_runs_raw_or_through_a_modelfile_template(base, tmp_path, monkeypatch, capsys):
    """generate and chat refuse a template-less GGUF at load with a message naming --raw and a
    Modelfile TEMPLATE; --raw completes the prompt as given; a Modelfile's TEMPLATE is honoured."""
    from toolkit.generate import chat, generate
    from toolkit.runtime.backends import open_backend

    gguf = base[1]
    with pytest.raises(ConfigError) as refused:
        generate([TEXT], model=str(gguf), params=SHORT)
    assert "--raw" in str(refused.value) and "TEMPLATE" in str(refused.value)
    monkeypatch.setattr("builtins.input", lambda *_: pytest.fail("chat read a line before checking the model"))
    with pytest.raises(ConfigError):
        chat(model=str(gguf), params=SHORT)
    assert generate([TEXT], model=str(gguf), raw=True, params=SHORT) == 0
    with pytest.raises(ConfigError, match="--raw"):
        generate([TEXT], model=str(gguf), raw=True, backend="ollama", params=SHORT)
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {gguf}\nTEMPLATE \"\"\"Q: {{{{ .Prompt }}}}\nA:\"\"\"\n")
    with open_backend("llamacpp", str(modelfile), n_ctx=256) as engine:
        rendered = engine.render([{"role": "user", "content": TEXT}])
        assert rendered == f"Q: {TEXT}\nA:"
        assert engine.chat(TEXT, SHORT).prompt_tokens == len(engine.prompt_tokens(rendered)) == len(engine.tokenize(rendered)) + 1


def _split(path: Path, n: int = 3) -> Path:
    path.write_text("".join(json.dumps({"id": str(i), "prompt": f"Tell me about topic {i}.", "response": f"Topic {i} is fine."}) + "\n"
                            for i in range(n)))
    return path


def test_refused_sweep_and_compare_write_nothing(base, tmp_path):
    """Every system is checked (files, template, quantization) before any work: a refused sweep
    leaves no study.db, a refused compare generates nothing for the systems before it."""
    from toolkit.evaluate.compare import CompareSettings, compare
    from toolkit.evaluate.sweep.command import sweep

    gguf, data = base[1], _split(tmp_path / "split.jsonl")
    with pytest.raises(ConfigError, match="--raw"):
        sweep(Path("sweeps/demo.yaml"), model=str(gguf), data=data, out=tmp_path / "sweep", trials=1, prompts=2)
    assert not (tmp_path / "sweep").exists()
    with pytest.raises(ConfigError, match="--raw"):
        compare([f"base2={gguf}"], CompareSettings(data=data, allow_mixed_quant=True), out=tmp_path / "compare",
                base="smollm2")
    assert not (tmp_path / "compare").exists()


def test_base_model_goes_raw_through_sweep_and_compare(base, tmp_path):
    """A base model end to end in raw mode: a sweep finishes and compare reports it."""
    from toolkit.evaluate.compare import CompareSettings, compare
    from toolkit.evaluate.sweep.command import sweep

    gguf, data = base[1], _split(tmp_path / "split.jsonl")
    assert sweep(Path("sweeps/demo.yaml"), model=str(gguf), data=data, out=tmp_path / "sweep", trials=2, prompts=2,
                 noise=False, raw=True) == 0
    assert (tmp_path / "sweep" / "study.db").exists()
    assert compare([], CompareSettings(data=data, prompts=2, raw=True), out=tmp_path / "compare", base=str(gguf),
                   params=SHORT) == 0
    result = json.loads((tmp_path / "compare" / "results.json").read_text())
    assert result["settings"]["backend"] == "llamacpp-raw"


def test_verify_a_base_gguf_checks_fidelity_and_says_templates_do_not_apply(default_hf_dir, tmp_path, capsys):
    """`toolkit verify G --gguf G` on a base Llama GGUF (dequantized as the reference): fidelity
    passes, the template check is said not to apply, with --no-templates too."""
    from toolkit.export.verify import verify

    gguf = to_gguf(base_model(default_hf_dir, tmp_path / "llama-base", arch="LlamaForCausalLM"))
    for templates in (True, False):
        assert verify(str(gguf), gguf=[gguf], prompts=2, tokens=4, templates=templates) == 0
    assert "does not apply" in capsys.readouterr().err


def _with_stops(default_hf_dir: Path, dest: Path, stops: tuple[str, ...]) -> Path:
    return build_tiny(default_hf_dir, dest, "LlamaForCausalLM", template=None, bos="<s>", eos="</s>", add_bos=True, stops=stops)


def test_export_marks_its_own_stop_token_as_end_of_generation(default_hf_dir, tmp_path):
    """A stop token of our own (the tagged format's </approach>) ends generation in llama.cpp."""
    from toolkit.export.convert import export
    from toolkit.export.eog import not_ending, stop_ids

    hf_dir = _with_stops(default_hf_dir, tmp_path / "tagged", ("</approach>",))
    assert export(str(hf_dir), out=tmp_path / "out", outtype="f32", modelfile=False) == 0
    gguf = tmp_path / "out" / "tagged-f32.gguf"
    assert not_ending(gguf, stop_ids(hf_dir))[0] == []


def test_a_failed_export_leaves_nothing_a_rerun_can_reuse(default_hf_dir, tmp_path):
    """Three stop tokens of our own fit no GGUF slot (EOT, EOM): export fails, writes no GGUF or
    Modelfile, fails again on a re-run, and never skips the check for a file already there."""
    from toolkit.export.convert import convert, export
    from toolkit.export.outputs import sidecar

    hf_dir = _with_stops(default_hf_dir, tmp_path / "three", ("<s1>", "<s2>", "<s3>"))
    out = tmp_path / "out"
    for _ in range(2):
        with pytest.raises(ModelError, match="does not end generation"):
            export(str(hf_dir), out=out, outtype="f32")
        assert not list(out.glob("*.gguf")) and not list(out.glob("*.Modelfile")) and not list(out.glob(".*"))
    convert(hf_dir, out / "three-f32.gguf", "f32")  # an unchecked file with its sidecar, as an old export left it
    assert sidecar(out / "three-f32.gguf").exists()
    with pytest.raises(ModelError, match="does not end generation"):
        export(str(hf_dir), out=out, outtype="f32")


def test_tagged_training_tokenizes_as_the_exported_model_is_prompted(default_hf_dir, tmp_path):
    """Tagged training on a tokenizer that adds BOS: the prompt ids are llama.cpp's for the same
    text (one BOS), the reply ends with EOS, and no short reply is counted as cut."""
    from transformers import AutoTokenizer

    from toolkit.data.records import Example
    from toolkit.runtime.backends import LlamaCppBackend
    from toolkit.train.config import TrainConfig
    from toolkit.train.tokens import IGNORE, TAGGED_TEMPLATE, TAGS, prepare_tokenizer, tokenize_dataset, tokenize_example

    hf_dir = base_model(default_hf_dir, tmp_path / "base")
    tok = AutoTokenizer.from_pretrained(hf_dir)
    prepare_tokenizer(tok, "tagged")
    examples = [Example(str(i), f"Why does method {i} help?", f"It pools estimates {i}.", "qa") for i in range(3)]
    ids, labels = tokenize_example(tok, examples[0], "tagged", max_length=512)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert [t for t in labels if t != IGNORE][-1] == tok.eos_token_id
    cfg = TrainConfig(format="tagged", max_length=512)
    assert tokenize_dataset(tok, examples, cfg, "train.jsonl").truncated == 0
    # the model as exported: the tags as tokens, the tagged template, BOS from the GGUF
    tagged = build_tiny(default_hf_dir, tmp_path / "tagged", "Gemma3ForCausalLM", template=TAGGED_TEMPLATE, bos="<bos>",
                        eos="<eos>", extra=TAGS, add_bos=True)
    tok2 = AutoTokenizer.from_pretrained(tagged)
    ids2, labels2 = tokenize_example(tok2, examples[0], "tagged", max_length=512)
    prompt_len = labels2.index(next(t for t in labels2 if t != IGNORE))
    with LlamaCppBackend(to_gguf(tagged), vocab_only=True) as vocab:
        rendered = vocab.render([{"role": "user", "content": examples[0].prompt}])
        assert vocab.prompt_tokens(rendered) == ids2[:prompt_len]


def test_llama_cpp_load_log_is_shown_only_with_verbose(base):
    """Loading a Gemma 3 GGUF logs "using full-size SWA cache" at WARN: quiet unless --verbose."""
    code = f"from toolkit.runtime.backends import LlamaCppBackend as B; B({str(base[1])!r}, n_ctx=256).close()"
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, TOOLKIT_VERBOSE=""))
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, TOOLKIT_VERBOSE="1"))
    assert quiet.returncode == loud.returncode == 0
    assert "SWA" not in quiet.stderr and "SWA" in loud.stderr


def test_models_takes_the_model_as_the_readme_writes_it(capsys):
    """`toolkit models [MODEL]`, as documented, and `--model` alike."""
    from toolkit.cli import main

    assert main(["models", "smollm2"]) == 0
    positional = capsys.readouterr().out
    assert main(["models", "--model", "smollm2"]) == 0
    assert "smollm2" in positional and positional == capsys.readouterr().out


@pytest.mark.slow  # two imports of peft, half a minute
def test_hub_notices_are_quiet_unless_verbose():
    """peft's import makes bitsandbytes ask `kernels` for a CPU kernel; offline, `kernels` notes
    it skips its publisher trust check. Ordinary runs keep that off stderr. bitsandbytes asks only
    on CPUs with AVX-512 BF16 (its own probe, printed by the child): elsewhere there is no notice."""
    code = ("import sys; from toolkit.cli import quiet_libraries; '{}' and quiet_libraries(); import peft; "
            "from bitsandbytes.functional import has_avx512bf16; print(bool(has_avx512bf16()))")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    quiet = subprocess.run([sys.executable, "-c", code.format("q")], capture_output=True, text=True, env=env)
    loud = subprocess.run([sys.executable, "-c", code.format("")], capture_output=True, text=True, env=env)
    assert quiet.returncode == loud.returncode == 0
    assert "trust check" not in quiet.stderr
    if loud.stdout.split() != ["True"]:
        pytest.skip("bitsandbytes asks for its CPU kernel only where the CPU has AVX-512 BF16; this one has not")
    assert "trust check" in loud.stderr


def test_verbose_is_taken_from_any_position():
    from toolkit.cli import take_verbose

    argv = ["generate", "--verbose", "hi", "--", "--verbose"]
    assert take_verbose(argv) and argv == ["generate", "hi", "--", "--verbose"]
    assert not take_verbose(argv)


def test_tagged_base_model_trains_merges_exports_verifies_and_serves_with_bos(default_hf_dir, tmp_path):
    """A base Llama whose tokenizer adds BOS, end to end in the tagged format: train -> merge ->
    export (its </approach> stop ends generation in llama.cpp) -> verify -> serve, with BOS first
    in the served prompt's token ids, as in training."""
    import httpx
    from transformers import AutoTokenizer

    from toolkit.data.records import Example
    from toolkit.export.convert import export
    from toolkit.export.eog import not_ending, stop_ids
    from toolkit.export.verify import verify
    from toolkit.runtime.backends import LlamaCppBackend
    from toolkit.serve.server import serve_in_thread
    from toolkit.train.command import train
    from toolkit.train.config import TrainOverrides
    from toolkit.train.merge import merge
    from toolkit.train.tokens import IGNORE, tokenize_example

    tiny = base_model(default_hf_dir, tmp_path / "tiny", arch="LlamaForCausalLM")
    data = _split(tmp_path / "train.jsonl", 4)
    run = train(options=TrainOverrides(model=str(tiny), train_data=str(data), validation_data="", out=str(tmp_path / "run"),
                                       max_steps=2, batch_size=2, grad_accum=1, max_length=256, lr=5e-2, eval_every=0,
                                       save_every=0, format="tagged"))
    merged = merge(run.adapter, tmp_path / "merged").out
    assert export(str(merged), out=tmp_path / "gguf", outtype="f32") == 0
    gguf = tmp_path / "gguf" / "merged-f32.gguf"
    assert not_ending(gguf, stop_ids(merged))[0] == []
    assert verify(str(merged), gguf=[gguf], prompts=2, tokens=4) == 0
    tok = AutoTokenizer.from_pretrained(merged)
    ids, labels = tokenize_example(tok, Example("0", "Tell me about topic 0.", "Topic 0 is fine.", "qa"), "tagged")
    trained_prompt = ids[:labels.index(next(t for t in labels if t != IGNORE))]
    with serve_in_thread({"tuned": gguf}, n_ctx=256, n_threads=1) as url:
        reply = httpx.post(f"{url}/api/chat", json={"model": "tuned", "stream": False, "options": {"num_predict": 2},
                                                   "messages": [{"role": "user", "content": "Tell me about topic 0."}]},
                           timeout=60).json()
    with LlamaCppBackend(gguf, vocab_only=True) as vocab:
        served = vocab.prompt_tokens(vocab.render([{"role": "user", "content": "Tell me about topic 0."}]))
        assert served[0] == _bos(vocab) == tok.bos_token_id
    assert served == trained_prompt and reply["prompt_eval_count"] == len(served)
