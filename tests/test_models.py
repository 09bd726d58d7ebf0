import json

import pytest

from toolkit.errors import ModelError
from toolkit.models import resolve, scorer_path


def test_default_model_resolves_to_gguf_and_cached_hf_dir(default_hf_dir):
    model = resolve("smollm2")
    assert model.gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert model.hf_dir == default_hf_dir
    config = json.loads((default_hf_dir / "config.json").read_text())
    assert "quantization_config" not in config, "a cached model must be plain, not 'quantized with gguf'"
    assert (default_hf_dir / "model.safetensors").exists() and (default_hf_dir / "tokenizer.json").exists()
    assert resolve("default").hf_dir == default_hf_dir  # alias, and no second dequantization
    assert resolve(model.gguf).hf_dir == default_hf_dir
    assert resolve(default_hf_dir).hf_dir == default_hf_dir


def test_serving_resolution_skips_dequantization():
    model = resolve("smollm2", hf=False)
    assert model.hf_dir is None and model.gguf.exists()


def test_dequantized_model_is_the_real_llama_and_agrees_with_llama_cpp(default_hf_dir, llamacpp_backend):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.runtime.llamacpp import load

    tok = AutoTokenizer.from_pretrained(default_hf_dir)
    model = AutoModelForCausalLM.from_pretrained(default_hf_dir, dtype=torch.float32)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    hf_text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    assert "Paris" in hf_text
    # Q4_1 arithmetic in llama.cpp is not fp32: its chat answer may differ, its plain completion may not
    llm = load(llamacpp_backend.gguf, n_ctx=llamacpp_backend.n_ctx)  # llama-cpp-python itself, as the backend loads it
    try:
        raw = llm.create_completion("The capital of France is", max_tokens=4, temperature=0)
    finally:
        llm.close()
    assert "Paris" in raw["choices"][0]["text"]
    # the HF prompt and the llama.cpp prompt are the same string
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == llamacpp_backend.render(messages)


@pytest.mark.parametrize("spec,match", [("/no/such/model.gguf", "does not exist"), ("./nowhere/x", "does not exist"),
                                        ("not-a-model", "unknown model")])
def test_bad_specs_fail_clearly(spec, match):
    with pytest.raises(ModelError, match=match):
        resolve(spec)


def test_hub_id_offline_says_how_to_pass_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="local directory"):
        resolve("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        resolve(tmp_path)


def test_scorer_paths(tmp_path):
    path, layer = scorer_path("minilm")
    assert (path / "config.json").exists() and layer == 6
    with pytest.raises(ModelError, match="config.json"):
        scorer_path(tmp_path)
