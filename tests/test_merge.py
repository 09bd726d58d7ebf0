"""`toolkit merge` on a real adapter trained for two steps on the default model."""

from __future__ import annotations

import json
import shutil

import pytest

from toolkit.errors import ConfigError, ModelError

pytestmark = pytest.mark.slow  # every test here merges a real adapter trained on the real model


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    from toolkit.train.command import TrainOverrides, train

    root = tmp_path_factory.mktemp("merge")
    rows = [{"prompt": f"Question {i}: why does method {i} help?", "response": f"Because method {i} reduces variance by pooling estimates."}
            for i in range(8)]
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # a high learning rate so the adapter moves logits clearly: the check must have something to catch
    result = train(options=TrainOverrides(train_data=str(data), validation_data="", out=str(root / "run"), max_steps=2, batch_size=2,
                                          grad_accum=1, max_length=128, lr=2e-3, eval_every=0, save_every=0))
    return result.adapter


def test_merge_writes_a_full_precision_model_whose_logits_match_base_plus_adapter(adapter, tmp_path, default_hf_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.train.merge import TOLERANCE, _inputs, merge

    out = tmp_path / "merged"
    report = merge(adapter.parent, out)  # the run directory works as well as its adapter/ folder
    # fp32 forward passes of x@W + (x@A)@B and of x@(W+BA) round differently: on logits of ~35
    # that noise alone approaches 1e-4, so merge rechecks in float64, where only the merge counts
    assert report.passed and TOLERANCE == 1e-4
    assert report.max_abs_diff < TOLERANCE or report.fp64_diff < TOLERANCE
    assert report.max_abs_diff < 1e-3  # fp32: noise-sized, not a wrong merge
    assert report.adapter_effect > 1.0  # the adapter changes the model a lot: the check is not vacuous
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja",
                 "toolkit-merge.json"):
        assert (out / name).exists(), name
    assert not list(out.glob("adapter_*"))
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32" and config["tie_word_embeddings"]
    generation = json.loads((out / "generation_config.json").read_text())
    assert 2 in generation["eos_token_id"]  # <|im_end|> stops generation
    check = json.loads((out / "toolkit-merge.json").read_text())["logits_check"]
    assert check["max_abs_diff"] == report.max_abs_diff and check["inputs"] == 3

    # an independent check in float64: base + adapter through PEFT vs the merged weights from disk
    tok = AutoTokenizer.from_pretrained(out)
    ids, mask = _inputs(tok)
    base = AutoModelForCausalLM.from_pretrained(default_hf_dir, dtype=torch.float64)
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base, adapter).double().eval()(input_ids=ids, attention_mask=mask).logits[mask.bool()]
        merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float64).eval()
        got = merged(input_ids=ids, attention_mask=mask).logits[mask.bool()]
    assert float((got - expected).abs().max()) < TOLERANCE
    assert merged.lm_head.weight.data_ptr() == merged.get_input_embeddings().weight.data_ptr()  # still tied


def test_adapter_for_a_different_base_is_refused_in_one_line(adapter, tmp_path, default_hf_dir):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from toolkit.train.merge import merge

    other = tmp_path / "other-base"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(other)
    AutoTokenizer.from_pretrained(default_hf_dir).save_pretrained(other)
    with pytest.raises(ModelError) as info:
        merge(adapter, tmp_path / "out", base=str(other))
    text = str(info.value)
    assert "\n" not in text and "different base" in text and "--base smollm2" in text
    assert not (tmp_path / "out").exists()

    # same architecture and config, different weights: the tensor hash catches it
    tampered = tmp_path / "tampered"
    shutil.copytree(adapter, tampered)
    meta = json.loads((tampered / "toolkit-adapter.json").read_text())
    meta["base"]["tensor_sha256"] = "0" * 64
    (tampered / "toolkit-adapter.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="different base"):
        merge(tampered, tmp_path / "out")


def test_bad_paths_fail_in_one_line(adapter, tmp_path):
    from toolkit.train.merge import merge

    with pytest.raises(ModelError, match="holds no LoRA adapter") as info:
        merge(tmp_path, tmp_path / "out")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="would overwrite the adapter"):
        merge(adapter, adapter / "merged")
