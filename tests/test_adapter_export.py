"""LoRA adapters shipped without merging: a tiny random-weight Llama (the default model's tokenizer
and ChatML template) trains an adapter for two steps -> `export --adapter` writes base GGUF + GGUF
LoRA + a Modelfile with FROM and ADAPTER -> the base with the LoRA applied by llama.cpp matches the
merged twin's logits (verify) -> generate, the batched engine and `toolkit serve` run through the
Modelfile and answer alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.errors import ModelError
from toolkit.export.adapter import check_exportable
from toolkit.models import resolve


@pytest.fixture(scope="module")
def trained(tmp_path_factory, default_hf_dir):
    from test_family_export import build_tiny_model

    from toolkit.train.command import TrainOverrides, train

    root = tmp_path_factory.mktemp("adapter")
    tiny = build_tiny_model(default_hf_dir, root / "tiny", "qwen2.5")
    rows = [{"prompt": f"Question {i}: why does method {i} help?", "response": f"Because method {i} pools estimates."}
            for i in range(4)]
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # a high learning rate so the adapter moves the logits clearly: the checks must have something to catch
    result = train(options=TrainOverrides(model=str(tiny), train_data=str(data), validation_data="", out=str(root / "run"), max_steps=2,
                                          batch_size=2, grad_accum=1, max_length=64, lr=5e-2, eval_every=0, save_every=0))
    return tiny, result.adapter


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The folder `toolkit export TINY --adapter RUN/adapter` wrote."""
    from toolkit.export.convert import export

    tiny, adapter = trained
    out = tmp_path_factory.mktemp("export") / "gguf"
    assert export(str(tiny), out=out, outtype="f32", adapter=adapter) == 0
    return out


def test_adapter_exports_and_verifies_against_its_merged_twin(trained, exported, tmp_path):
    from toolkit.export.modelfile.checks import validate_file
    from toolkit.export.verify import check_templates, compare_gguf, reference_sequences, verify
    from toolkit.params import DecodingParams
    from toolkit.runtime.backends import open_backend
    from toolkit.train.merge import merge

    tiny, adapter = trained
    out = exported
    base, lora, modelfile = out / "tiny-f32.gguf", out / "run-lora-f32.gguf", out / "run-F32.Modelfile"
    mf = validate_file(modelfile)
    assert (mf.model, mf.adapter) == ("./tiny-f32.gguf", "./run-lora-f32.gguf")
    assert "<|im_end|>" in mf.stops and "<|im_start|>" in mf.template
    assert lora.stat().st_size < base.stat().st_size / 20  # the point: a few MB beside the base, not a second model

    # the merged twin is the reference: base + LoRA in llama.cpp matches it, the base alone does not
    merged = merge(adapter, tmp_path / "merged").out
    seqs, starts, logprobs = reference_sequences(merged, ["Why does pooling help?", "What is a baseline?"], 12)
    with_lora = compare_gguf(base, seqs, starts, logprobs, lora)
    alone = compare_gguf(base, seqs, starts, logprobs)
    assert with_lora.type == "F32+LoRA" and with_lora.passed and with_lora.top1_agreement >= 0.99
    assert with_lora.mean_kl < 1e-4 < alone.mean_kl
    assert check_templates(merged, base, modelfile) == []
    # the command: the adapter itself as MODEL (merged in memory), its export's Modelfiles by default
    assert verify(str(adapter), gguf=[modelfile], prompts=1, tokens=6) == 0

    # generate through the Modelfile: one at a time and batched (the engine's own LoRA hook) agree
    params = DecodingParams(temperature=0, max_tokens=8, num_ctx=256)
    messages = [{"role": "user", "content": "Why does pooling help?"}]
    with open_backend("llamacpp", str(modelfile), n_ctx=256) as engine:
        assert engine.lora == lora.resolve()
        one = engine.chat(messages, params)
        batch = engine.generate_batch([messages, messages], params)
    assert one.completion_tokens >= 1 and [g.text for g in batch] == [one.text, one.text]
    assert resolve(out, hf=False).adapter == lora.resolve()  # the export folder resolves to its Modelfile


@pytest.mark.parametrize("parallel", [1, 2], ids=["one-at-a-time", "parallel"])
def test_adapter_modelfile_serves_what_generate_answers(exported, parallel):
    """`toolkit serve` on the adapter's Modelfile: its greedy /api/chat answer is generate's through
    the same Modelfile (one at a time and in the batched engine), not the base's alone; /api/show
    names the ADAPTER by file name only; the digest and size count the LoRA."""
    import re

    import httpx

    from toolkit.params import DEFAULTS
    from toolkit.runtime.backends import LlamaCppBackend, open_backend
    from toolkit.serve.server import named_models, serve_in_thread

    base, lora, modelfile = exported / "tiny-f32.gguf", exported / "run-lora-f32.gguf", exported / "run-F32.Modelfile"
    messages = [{"role": "user", "content": "Question 1: why does method 1 help?"}]
    params = DEFAULTS.replace(temperature=0, max_tokens=8, num_ctx=256)
    with open_backend("llamacpp", str(modelfile), n_ctx=256) as tuned:
        want = tuned.chat(messages, params).text
    with LlamaCppBackend(base, n_ctx=256) as alone:
        plain = alone.chat(messages, params).text
    assert want and want != plain  # the adapter changed the answer: serving must not drop it
    assert named_models(str(modelfile), name="tuned") == {"tuned:latest": modelfile.resolve()}  # the LoRA comes along

    body = {"messages": messages, "stream": False, "options": {"temperature": 0, "num_predict": 8}}
    with (serve_in_thread({"tuned": modelfile, "base": base}, n_ctx=256, n_threads=1, parallel=parallel) as url,
          httpx.Client(base_url=url, timeout=120) as http):
        answers = {name: http.post("/api/chat", json=body | {"model": name}).json()["message"]["content"]
                   for name in ("tuned", "base")}
        assert answers == {"tuned": want, "base": plain}
        shown = http.post("/api/show", json={"model": "tuned"}).json()["modelfile"]
        assert "FROM tiny-f32.gguf\n" in shown and "ADAPTER run-lora-f32.gguf\n" in shown
        assert str(exported) not in shown and "<|im_start|>" in shown
        assert "ADAPTER" not in http.post("/api/show", json={"model": "base"}).json()["modelfile"]
        listed = {m["name"]: m for m in http.get("/api/tags").json()["models"]}
        tuned_row, base_row = listed["tuned:latest"], listed["base:latest"]
        assert re.fullmatch(r"[0-9a-f]{64}", tuned_row["digest"]) and tuned_row["digest"] != base_row["digest"]
        assert tuned_row["size"] == base.stat().st_size + lora.stat().st_size == base_row["size"] + lora.stat().st_size
        embed = {name: http.post("/api/embed", json={"model": name, "input": "pooled estimates"}).json()["embeddings"][0]
                 for name in ("tuned", "base")}
        assert len(embed["tuned"]) == len(embed["base"]) and embed["tuned"] != embed["base"]  # the embedder has the LoRA too


def test_resolving_a_modelfile_keeps_its_adapter(tmp_path):
    from toolkit.models import embedded_gguf

    default_gguf = embedded_gguf()
    (tmp_path / "lora.gguf").write_bytes(b"GGUF")
    mf = tmp_path / "tuned.Modelfile"
    mf.write_text(f'FROM {default_gguf}\nADAPTER ./lora.gguf\nTEMPLATE """FROM nowhere\nADAPTER inside"""\n')
    model = resolve(mf, hf=False)
    assert (model.gguf, model.adapter) == (default_gguf.resolve(), (tmp_path / "lora.gguf").resolve())
    assert model.require_llamacpp() == (model.gguf, model.adapter)
    assert "+lora:" in model.weights_id()
    with pytest.raises(ModelError, match="LoRA ADAPTER, which this command does not apply"):
        model.require_gguf()  # a caller that would load the base alone never drops the adapter silently
    mf.write_text("FROM smollm2\nADAPTER ./missing.gguf\n")
    with pytest.raises(ModelError, match="is not a GGUF LoRA file"):
        resolve(mf, hf=False)
    mf.write_text("FROM smollm2\n")
    assert resolve(mf, hf=False).gguf == default_gguf and resolve(mf, hf=False).adapter is None


def test_modelfile_is_resolved_as_ollama_parses_it(tmp_path):
    """FROM and ADAPTER come from the one Modelfile parser: a quoted value loses only its quotes (Ollama
    unescapes nothing, so `\"` stays in the name), a FROM inside a TEMPLATE is template text, the last
    FROM and ADAPTER win, and a UTF-8 BOM is skipped. Resolving opens neither GGUF, so any bytes do."""
    base, lora = tmp_path / 'my \\"x\\" base.gguf', tmp_path / "the lora.gguf"
    for path in (base, lora, tmp_path / "first.gguf", tmp_path / "elsewhere.gguf"):
        path.write_bytes(b"GGUF")
    mf = tmp_path / "tuned.Modelfile"
    mf.write_text('# FROM ./elsewhere.gguf\nFROM ./first.gguf\nFROM "./my \\"x\\" base.gguf"\nADAPTER ./elsewhere.gguf\n'
                  'ADAPTER "./the lora.gguf"\nTEMPLATE """{{ .Prompt }}\nFROM elsewhere.gguf\nADAPTER elsewhere.gguf\n"""\n')
    model = resolve(mf, hf=False)
    assert (model.gguf, model.adapter) == (base.resolve(), lora.resolve())
    mf.write_bytes(b"\xef\xbb\xbfFROM ./first.gguf\n")  # a BOM, as some editors save it
    assert resolve(mf, hf=False) == resolve(tmp_path / "first.gguf", hf=False)
    mf.write_text('FROM ./first.gguf\nSYSTEM "one\nFROM elsewhere.gguf\ntwo"\n')  # an open " spans lines too
    assert resolve(mf, hf=False).gguf == (tmp_path / "first.gguf").resolve()


@pytest.mark.parametrize("text,line,message", [
    ("FROM ./base.gguf\nADAPTOR ./lora.gguf\n", 2, 'unknown instruction "ADAPTOR"'),  # not silently the base alone
    ("FROM ./base.gguf\nADAPTER\n", 2, "ADAPTER has no value"),
    ('FROM ./base.gguf\nSYSTEM """never closed\nFROM ./lora.gguf\n', 2, 'SYSTEM value opens """ that is never closed'),
    ('FROM "./base.gguf" ./lora.gguf\n', 1, "FROM has text after its closing"),
    ("PARAMETER seed 1\n", 1, "no FROM line"),
    (b"FROM ./base.gguf\nSYSTEM caf\xe9\n", 2, "not valid UTF-8"),
])
def test_modelfile_that_does_not_parse_is_a_one_line_model_error(tmp_path, text, line, message):
    for name in ("base.gguf", "lora.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    mf = tmp_path / "Modelfile"
    mf.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ModelError) as info:
        resolve(mf, hf=False)
    assert str(info.value).startswith(f"{mf}:{line}: {message}")
    assert "\n" not in str(info.value) and info.value.fix


@pytest.mark.parametrize("meta,config,reason", [
    ({"format": "tagged", "added_tokens": {"<problem>": 49152}}, {}, r"adds tokens \(<problem>\)"),
    ({}, {"modules_to_save": ["embed_tokens"]}, "trains whole modules"),
    ({}, {"trainable_token_indices": {"embed_tokens": [5]}}, "trains embedding rows"),
    ({}, {"target_modules": ["q_proj", "lm_head"]}, "adapts the embeddings or output head"),
    ({}, {"use_dora": True}, "DoRA"),
])
def test_adapters_that_must_merge_are_refused_in_one_line(tmp_path, meta, config, reason):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "target_modules": ["q_proj"], **config}))
    with pytest.raises(ModelError, match=reason) as info:
        check_exportable(Path(tmp_path), meta)
    assert "\n" not in str(info.value) and "toolkit merge" in info.value.fix
