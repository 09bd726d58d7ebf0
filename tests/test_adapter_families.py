"""Training through other chat families: a tiny random-weight Mistral and Gemma 3 (their families'
chat templates, built as in test_family_export.py) train an adapter for two steps whose labels end
with the token the exported Modelfile stops on; the adapter ships unmerged as a GGUF LoRA that
matches its merged twin in llama.cpp, and merged it goes export -> verify (parity suite).
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["mistral-v0.2", "gemma-3"])
def trained(request, default_hf_dir, tmp_path_factory):
    """(case, tiny base, adapter, merged twin, root)."""
    from test_family_export import build_tiny_model

    from toolkit.train.command import TrainOverrides, train
    from toolkit.train.merge import merge

    root = tmp_path_factory.mktemp(request.param)
    tiny = build_tiny_model(default_hf_dir, root / "tiny", request.param)
    config = json.loads((tiny / "config.json").read_text())
    if "query_pre_attn_scalar" in config:
        # llama.cpp scales Gemma 3 queries by 1/sqrt(head_dim) (it reads no query_pre_attn_scalar below
        # 27B, where the two are equal); transformers' default 256 would make the tiny model another
        # model in llama.cpp (~75% top-1 against HF, base alone or not). Then both agree exactly.
        config["query_pre_attn_scalar"] = config["head_dim"]
        (tiny / "config.json").write_text(json.dumps(config, indent=2))
    rows = [{"prompt": f"Why does method {i} help?", "response": f"It pools estimates {i}."} for i in range(4)]
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = train(options=TrainOverrides(model=str(tiny), train_data=str(data), validation_data="", out=str(root / "run"), max_steps=2,
                                       batch_size=2, grad_accum=1, max_length=256, lr=5e-2, eval_every=0, save_every=0))
    return request.param, tiny, run.adapter, merge(run.adapter, root / "merged").out, root


def test_family_adapter_ships_unmerged_and_stops_where_training_taught(trained):
    from transformers import AutoTokenizer

    from toolkit.data.records import Example
    from toolkit.export.convert import convert, export
    from toolkit.export.modelfile.checks import validate_file
    from toolkit.export.verify import check_templates, compare_gguf, reference_sequences
    from toolkit.train.tokens import IGNORE, tokenize_example

    case, tiny, adapter, merged, root = trained
    out = root / "lora"
    assert export(str(tiny), out=out, outtype="f32", adapter=adapter) == 0
    base, lora, modelfile = out / "tiny-f32.gguf", out / "run-lora-f32.gguf", out / "run-F32.Modelfile"
    mf = validate_file(modelfile)
    assert check_templates(tiny, base, modelfile) == []
    # what training taught the model to end a reply with is a token the Modelfile stops on
    tok = AutoTokenizer.from_pretrained(tiny)
    _, labels = tokenize_example(tok, Example("0", "Why does method 0 help?", "It pools estimates 0.", "qa"), max_length=256)
    taught = tok.convert_ids_to_tokens([i for i in labels if i != IGNORE])
    assert any(t in mf.stops for t in taught), (taught, mf.stops)
    # base + LoRA in llama.cpp is the merged twin in llama.cpp: the same agreement with the merged HF
    # model, position for position, and both match the merged HF model itself
    seqs, starts, logprobs = reference_sequences(merged, ["Why does pooling help?", "What is a baseline?"], 12)
    with_lora = compare_gguf(base, seqs, starts, logprobs, lora)
    twin = compare_gguf(convert(merged, root / "merged-f32.gguf", "f32").path, seqs, starts, logprobs)
    assert with_lora.per_prompt == twin.per_prompt and abs(with_lora.mean_kl - twin.mean_kl) < 1e-6
    assert with_lora.max_kl < 0.01
    assert with_lora.passed and with_lora.top1_agreement >= 0.99 and with_lora.mean_kl < 1e-4, case


def test_family_merged_twin_exports_and_verifies(trained):
    """train and merge keep the base's add_bos_token (build_tiny_model states it only in
    tokenizer_config.json, which transformers' generic tokenizer class drops on save): the merged
    GGUF adds the BOS its family's template writes, and passes the parity suite."""
    from toolkit.export.convert import export
    from toolkit.export.verify import check_templates

    _case, tiny, adapter, merged, root = trained
    base_config = json.loads((tiny / "tokenizer_config.json").read_text())
    for saved in (adapter, merged):
        config = json.loads((saved / "tokenizer_config.json").read_text())
        assert config.get("add_bos_token") == base_config["add_bos_token"], saved
    assert export(str(merged), out=root / "m", outtype="f32") == 0
    gguf = root / "m" / "merged-f32.gguf"
    assert check_templates(merged, gguf, gguf.with_suffix(".Modelfile")) == []


@pytest.fixture(scope="module")
def base_tokenizer(default_hf_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_hf_dir)


@pytest.mark.parametrize("case", ["qwen2.5", "tinyllama-chat", "llama-2-chat", "mistral-v0.2", "mistral-v0.3", "gemma-3",
                                  "llama-3.2", "phi-3", "phi-3.5", "granite-3.1", "command-r", "deepseek-llm-chat"])
def test_training_ends_a_turn_with_the_template_familys_token(case, base_tokenizer):
    """The default model's vocabulary has ChatML's <|im_end|>; a model carrying another family's
    template still ends its turns with that family's token (EOS where the family ends turns with it)."""
    import copy

    from chat_templates import CASES

    from toolkit.chat.families import by_name
    from toolkit.train.tokens import TAGGED_TEMPLATE, end_of_turn_id

    template, bos, eos, family = CASES[case]
    tok = copy.deepcopy(base_tokenizer)
    ends = by_name(family).end_of_turn
    tok.add_tokens([t for t in dict.fromkeys([bos, eos, *ends]) if t and t not in tok.get_vocab()], special_tokens=True)
    tok.bos_token, tok.eos_token, tok.chat_template = bos or tok.bos_token, eos, template
    assert tok.convert_ids_to_tokens(end_of_turn_id(tok)) == (ends[0] if ends else eos)
    # a template of no family: the first family end-of-turn token in the vocabulary
    tok.chat_template = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert tok.convert_ids_to_tokens(end_of_turn_id(tok)) == "<|im_end|>"
    tok.chat_template = TAGGED_TEMPLATE  # the tagged format ends a reply with </approach> and EOS (issue 23)
    assert tok.convert_ids_to_tokens(end_of_turn_id(tok)) == eos
