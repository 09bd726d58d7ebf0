"""Tiny random-weight models of real architecture classes (hidden size 64, 2 layers), built offline
in a second from the default model's BPE tokenizer with the special tokens a family needs, and
converted to GGUF with llama.cpp's converter: the one helper behind tests/test_family_export.py,
tests/test_adapter_families.py and the base-model tests (tests/test_base_models.py).

`add_bos` decides `add_bos_token` in tokenizer_config.json, which the converter copies into the
GGUF (`tokenizer.ggml.add_bos_token`); `template=None` builds a base model without a chat template.
"""

from __future__ import annotations

import json
from pathlib import Path


def tiny_config(arch: str, vocab: int, bos: int, eos: int):
    """A 2-layer, hidden-64 config of `arch` (an HF causal-LM class name)."""
    import transformers

    name = {"Qwen2ForCausalLM": "Qwen2Config", "LlamaForCausalLM": "LlamaConfig", "MistralForCausalLM": "MistralConfig",
            "Gemma3ForCausalLM": "Gemma3TextConfig", "Phi3ForCausalLM": "Phi3Config", "GraniteForCausalLM": "GraniteConfig",
            "CohereForCausalLM": "CohereConfig"}[arch]
    # llama.cpp scales Gemma 3 queries by the head size below 27B: HF must be told the same
    extra = {"head_dim": 16, "query_pre_attn_scalar": 16} if arch == "Gemma3ForCausalLM" else {}
    return getattr(transformers, name)(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                       bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, tie_word_embeddings=True, **extra)


def build_tiny(base_hf: Path, dest: Path, arch: str, *, template: str | None, bos: str, eos: str,
               extra: tuple[str, ...] = (), add_bos: bool = False, stops: tuple[str, ...] = ()) -> Path:
    """A tiny random model of `arch` in `dest` (an HF directory): the base tokenizer plus `bos`,
    `eos` and `extra` as special tokens, `template` as its chat template (None: none), and a
    generation config stopping on `eos` and `stops`."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_hf)
    specials = [t for t in dict.fromkeys([bos, eos, *extra, *stops]) if t]
    tok.add_tokens([t for t in specials if t not in tok.get_vocab()], special_tokens=True)
    # (a model without a bos token keeps the base tokenizer's, which its template never writes)
    tok.bos_token, tok.eos_token, tok.pad_token = bos or tok.bos_token, eos, eos
    tok.chat_template = template
    dest.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(dest)
    config_path = dest / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config["add_bos_token"] = add_bos  # the converter copies it into the GGUF
    if template is None:
        tok_config.pop("chat_template", None)
        (dest / "chat_template.jinja").unlink(missing_ok=True)
    if arch == "Phi3ForCausalLM":
        tok_config["tokenizer_class"] = "GPT2Tokenizer"  # the converter's BPE path for Phi-3
    config_path.write_text(json.dumps(tok_config, ensure_ascii=False, indent=2))
    ids = tok.convert_tokens_to_ids
    torch.manual_seed(0)
    model = getattr(transformers, arch)(tiny_config(arch, len(tok), ids(tok.bos_token), ids(eos)))
    model.save_pretrained(dest)
    eos_ids = sorted({ids(eos), *(ids(s) for s in stops)})
    (dest / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_ids, "bos_token_id": ids(tok.bos_token)}))
    return dest


def base_model(base_hf: Path, dest: Path, arch: str = "Gemma3ForCausalLM", template: str | None = None) -> Path:
    """A base model whose tokenizer adds BOS (`add_bos_token` true), as a pretrained Gemma 3 or
    Llama is: `<bos>`/`<eos>` for Gemma 3, `<s>`/`</s>` for Llama; no chat template unless given."""
    bos, eos = ("<bos>", "<eos>") if arch.startswith("Gemma") else ("<s>", "</s>")
    extra = ("<start_of_turn>", "<end_of_turn>") if arch.startswith("Gemma") else ()
    return build_tiny(base_hf, dest, arch, template=template, bos=bos, eos=eos, extra=extra, add_bos=True)


def to_gguf(hf_dir: Path, dest: Path | None = None) -> Path:
    """`hf_dir` converted to an f32 GGUF by llama.cpp's converter (no export checks, no Modelfile)."""
    from toolkit.export.convert import convert

    dest = dest or hf_dir.parent / f"{hf_dir.name}-f32.gguf"
    return convert(hf_dir, dest, "f32").path
