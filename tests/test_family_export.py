"""Every chat family end to end: a tiny random-weight model of the family's architecture carrying
its chat template goes export -> verify (parity suite, BOS rule on token ids, stops).

Each model reuses the default model's BPE tokenizer with the family's special tokens added, so it
builds offline in a second; GemmaForCausalLM/Gemma2ForCausalLM need a sentencepiece
tokenizer.model to convert, so the Gemma family runs on Gemma3ForCausalLM (same templates).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chat_templates import CASES
from tiny_models import build_tiny

from toolkit.export.convert import export
from toolkit.export.modelfile.checks import validate_file
from toolkit.export.verify import check_templates

pytestmark = pytest.mark.slow

# family case -> (architecture class, extra special tokens)
MODELS = {
    # Qwen2ForCausalLM: transformers 5 then loads Qwen2Tokenizer, whose rebuilt pre-tokenizer the
    # converter does not recognise on this borrowed tokenizer, so the Qwen template runs on Llama
    "qwen2.5": ("LlamaForCausalLM", []),
    "tinyllama-chat": ("LlamaForCausalLM", ["<|user|>", "<|assistant|>", "<|system|>"]),
    "llama-2-chat": ("LlamaForCausalLM", []),
    "mistral-v0.2": ("MistralForCausalLM", []),
    "mistral-v0.3": ("MistralForCausalLM", ["[INST]", "[/INST]"]),
    "gemma-3": ("Gemma3ForCausalLM", ["<start_of_turn>", "<end_of_turn>"]),
    "llama-3.2": ("LlamaForCausalLM", ["<|start_header_id|>", "<|end_header_id|>"]),
    "phi-3": ("Phi3ForCausalLM", ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]),
    "granite-3.1": ("GraniteForCausalLM", ["<|start_of_role|>", "<|end_of_role|>"]),
    "command-r": ("CohereForCausalLM", ["<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>"]),
    "deepseek-llm-chat": ("LlamaForCausalLM", []),
}


def build_tiny_model(base_hf: Path, dest: Path, case: str) -> Path:
    """A 2-layer, hidden-64 random model of the case's architecture with its chat template; the
    tokenizer adds BOS exactly when the template writes a leading one (the converter copies it)."""
    template, bos, eos, _ = CASES[case]
    arch, extra = MODELS[case]
    return build_tiny(base_hf, dest, arch, template=template, bos=bos, eos=eos, extra=tuple(extra),
                      add_bos="bos_token" in template)


@pytest.mark.parametrize("case", sorted(MODELS))
def test_family_exports_and_verifies(case, default_hf_dir, tmp_path):
    hf_dir = build_tiny_model(default_hf_dir, tmp_path / case, case)
    out = tmp_path / "gguf"
    assert export(str(hf_dir), out=out, outtype="f32") == 0
    gguf = out / f"{case}-f32.gguf"
    mf = validate_file(gguf.with_suffix(".Modelfile"))
    _, _, eos, _ = CASES[case]
    assert eos in mf.stops
    assert check_templates(hf_dir, gguf, gguf.with_suffix(".Modelfile")) == []
    # our Jinja renderer is the transformers renderer for every conversation of the suite
    from transformers import AutoTokenizer

    from toolkit.chat.jinja import TemplateRefused, render_jinja
    from toolkit.chat.parity import SUITE, wants_generation_prompt

    tok = AutoTokenizer.from_pretrained(hf_dir)
    for messages in SUITE.values():
        gen = wants_generation_prompt(messages)
        try:
            ours = render_jinja(tok.chat_template, messages, bos_token=tok.bos_token or "", eos_token=tok.eos_token,
                                add_generation_prompt=gen)
        except TemplateRefused:
            continue
        assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen) == ours


def test_serve_answers_a_chat_through_an_exported_non_chatml_modelfile(default_hf_dir, tmp_path):
    """The tiny Mistral model served by `toolkit serve`: /api/chat (its GGUF chat template) and
    /api/generate with the exported Modelfile's TEMPLATE and stops both answer, and build the
    same prompt (the parity suite made them equal)."""
    import ollama

    from toolkit.serve.server import serve_in_thread

    hf_dir = build_tiny_model(default_hf_dir, tmp_path / "mistral", "mistral-v0.2")
    export(str(hf_dir), out=tmp_path, outtype="f32")
    gguf = tmp_path / "mistral-f32.gguf"
    mf = validate_file(gguf.with_suffix(".Modelfile"))
    options = {"num_predict": 4, "temperature": 0, "stop": mf.stops}
    with serve_in_thread({"tiny": gguf}, n_ctx=256, n_threads=1) as url:
        client = ollama.Client(host=url)
        chat = client.chat(model="tiny", messages=[{"role": "user", "content": "Hi there"}], options=options)
        assert chat.message.role == "assistant" and chat.eval_count >= 1
        gen = client.generate(model="tiny", prompt="Hi there", template=mf.template, options=options)
        assert gen.eval_count >= 1
        # the Go-template path adds BOS as the GGUF asks, as Ollama does: the same prompt as the chat's
        assert gen.prompt_eval_count == chat.prompt_eval_count
        # the BOS rule by hand: BOS + the Modelfile TEMPLATE's prompt, sent raw, is exactly the chat
        # prompt (no second BOS), so the answer is the same
        from toolkit.chat.render import render_chat

        prompt = "<s>" + render_chat(mf.template, [{"role": "user", "content": "Hi there"}])
        raw = client.generate(model="tiny", prompt=prompt, raw=True, options=options)
        assert raw.prompt_eval_count == chat.prompt_eval_count
        assert raw.response == chat.message.content
