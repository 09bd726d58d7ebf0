"""`toolkit train --method dpo|simpo` on a tiny random-weight Llama (hidden 64, 2 layers) with the
SmolLM2 tokenizer and a handful of pairs: the reference is the SFT model, metrics and table are
written, a stopped-and-resumed run ends with the numbers of an uninterrupted one."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from toolkit.errors import DataError

PAIRS = [
    ("How can small language models be adapted to a new domain?", "We train low-rank adapters on a few thousand examples.",
     "Models are big and the answer is maybe."),
    ("Why do graph neural networks oversmooth?", "Message passing acts as a low-pass filter on node features.",
     "Graphs are networks of nodes, which is why."),
    ("Can agents generalise to unseen game levels?", "Training on generated levels halves the generalisation gap.",
     "Agents play games and sometimes they win."),
    ("How should missing clinical values be handled?", "An indicator channel and a learned decay beat imputation.",
     "Missing values are missing, so they are handled."),
    ("Can transformers be compressed without losing accuracy?", "Pruning heads and eight-bit quantisation keep accuracy.",
     "Compression is compressing things into less space."),
    ("What limits protein structure prediction for rare families?", "Shallow alignments; deepening them helps.",
     "Proteins are made of amino acids in a chain."),
]
VALIDATION = [
    ("How can distribution shift be detected?", "A two-sample test on confidences flags shift early.", "Shift happens when it shifts."),
    ("Do large batches hurt generalisation?", "With warmup and scaled learning rates the gap vanishes.", "Batches are large or small."),
]
TINY = dict(max_length=96, batch_size=2, grad_accum=1, r=4, alpha=8, lr=5e-3, beta=0.5, warmup_ratio=0.0, eval_every=2,
            save_every=2, target_modules=["q_proj", "v_proj"], validation_data="")


def write_pairs(path: Path, pairs) -> Path:
    rows = [{"id": f"{path.stem}-{i}", "prompt": p, "chosen": c, "rejected": r} for i, (p, c, r) in enumerate(pairs)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A random 2-layer Llama with the SmolLM2 tokenizer (its chat template included)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from toolkit.models import resolve

    dest = tmp_path_factory.mktemp("tiny") / "model"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(dest)
    AutoTokenizer.from_pretrained(resolve("smollm2").require_hf()).save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def sft_adapter(tiny, tmp_path_factory) -> Path:
    """A LoRA 'SFT' adapter on the tiny model with non-zero weights, saved as toolkit train saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.train.model import base_identity, save_adapter

    dest = tmp_path_factory.mktemp("sft") / "adapter"
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    meta = {"base": {"spec": str(tiny), **base_identity(tiny)}, "format": "chat", "system": "", "stop": ["<|im_end|>"]}
    return save_adapter(model, AutoTokenizer.from_pretrained(tiny), dest, meta)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("prefs")
    return {"train_data": str(write_pairs(d / "train.jsonl", PAIRS)), "validation_data": str(write_pairs(d / "val.jsonl", VALIDATION))}


def _run(out: Path, model: Path, data: dict, **overrides):
    from toolkit.train.config import load_config
    from toolkit.train.dpo import run_preference

    options = {**TINY, **data, "model": str(model), "out": str(out), "method": "dpo", "max_steps": 4, **overrides}
    resume = options.pop("resume", False)
    return run_preference(load_config(**options), resume=resume, show_progress=False)


def test_dpo_from_an_sft_adapter_uses_the_sft_model_as_reference(tmp_path, sft_adapter, data):
    out = tmp_path / "run"
    result = _run(out, sft_adapter.parent, data, max_steps=4)
    assert result.completed and result.adapter and (result.adapter / "adapter_model.safetensors").exists()
    assert (out / "start" / "toolkit-merge.json").exists()  # the SFT adapter, merged: the reference
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    step0 = evals[0]
    # the policy starts as the reference: every reward 0, loss ln 2, accuracy 0 (never 1)
    assert step0["eval_rewards/chosen"] == 0 and step0["eval_rewards/rejected"] == 0
    assert step0["val_loss"] == pytest.approx(math.log(2), abs=1e-6) and step0["eval_rewards/accuracies"] == 0
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected",
                "logits/chosen", "logits/rejected"):
        assert all(f"eval_{key}" in r for r in evals)
    assert evals[-1]["eval_rewards/margins"] > 0  # lr 5e-3 on six pairs: it learns to separate them
    assert all("loss" in r for r in rows if r["step"] > 0 and "val_loss" not in r)
    with open(out / "eval.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [int(r["step"]) for r in table] == [0, 2, 4] and table[0]["train_loss"] == "" and table[1]["train_loss"]
    assert (out / "dpo.png").stat().st_size > 1000 and (out / "loss.png").exists()
    meta = json.loads((out / "adapter" / "toolkit-adapter.json").read_text())
    assert meta["base"]["spec"] == str((out / "start").resolve()) and meta["preference"]["method"] == "dpo"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] and summary["val_accuracy_start"] == 0 and summary["reference"] == str(out / "start")


def test_merge_takes_a_dpo_run(tmp_path, sft_adapter, data):
    from toolkit.train.merge import merge

    out = tmp_path / "run"
    _run(out, sft_adapter.parent, data, max_steps=2, eval_every=0, validation_data="")
    result = merge(out, tmp_path / "merged")
    assert result.passed and result.adapter_effect > 0 and (tmp_path / "merged" / "model.safetensors").exists()


def test_stopped_and_resumed_run_ends_with_the_same_numbers(tmp_path, tiny, data):
    whole = _run(tmp_path / "whole", tiny, data, max_steps=6)
    stopped = _run(tmp_path / "parts", tiny, data, max_steps=6, stop_after=3)
    assert not stopped.completed and stopped.adapter is None and stopped.steps == 3
    resumed = _run(tmp_path / "parts", tiny, data, max_steps=6, resume=True)
    assert resumed.completed
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-5, abs=1e-7)
    assert resumed.val_losses == pytest.approx(whole.val_losses, rel=1e-5, abs=1e-7)
    again = _run(tmp_path / "again", tiny, data, max_steps=6)  # same seed, same numbers
    assert again.losses == whole.losses and again.val_losses == whole.val_losses


@pytest.mark.parametrize("overrides", [dict(loss_type="ipo"), dict(loss_type="robust", label_smoothing=0.1),
                                       dict(method="simpo", beta=2.0, lr=1e-3)], ids=["ipo", "robust", "simpo"])
def test_other_losses_run(tmp_path, tiny, data, overrides):
    result = _run(tmp_path / "run", tiny, data, max_steps=2, eval_every=0, **overrides)
    assert result.completed and all(math.isfinite(v) for v in result.losses)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_rewards/margins" in r for r in rows)


def test_bad_rows_stop_before_the_model_loads(tmp_path, data):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"}) + "\n"
                   + json.dumps({"prompt": "q2", "chosen": "a"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        _run(tmp_path / "run", tmp_path / "no-such-model", {**data, "train_data": str(bad)})
    text = str(info.value)
    assert "\n" not in text and f"{bad}:1: chosen is identical to rejected" in text and f"{bad}:2: missing rejected" in text
    assert "--skip-bad" in text


def test_column_options_read_what_data_check_reads(tmp_path):
    """`train --prompt-col/--chosen-col/--rejected-col` as `data check`: a file that checks with the
    options trains with them, and without them both stop on the same row."""
    from toolkit.data.check import check
    from toolkit.train.config import load_config
    from toolkit.train.dpo import load_pairs

    path = tmp_path / "pairs.jsonl"
    rows = [{"ask": f"question {i}?", "good": f"a good answer {i}.", "poor": f"no {i}"} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    names = dict(prompt_col="ask", chosen_col="good", rejected_col="poor")
    assert check(path, kind="preference", **names)["records"] == 3
    pairs = load_pairs(load_config(None, method="dpo", train_data=str(path), validation_data="", **names))
    assert [p.prompt[-1]["content"] for p in pairs.train] == [r["ask"] for r in rows]
    assert [(p.chosen, p.rejected) for p in pairs.train] == [(r["good"], r["poor"]) for r in rows]
    with pytest.raises(DataError, match=f"{path}:1: "):
        load_pairs(load_config(None, method="dpo", train_data=str(path), validation_data=""))


class _Tokenizer:
    """The few tokenizer calls the adapter metadata makes: a vocabulary whose end of turn is <|im_end|>."""

    chat_template, bos_token, eos_token, eos_token_id = "", "", "<|endoftext|>", 0
    vocab = {"<|endoftext|>": 0, "<|im_end|>": 2}

    def get_vocab(self):
        return dict(self.vocab)

    def convert_ids_to_tokens(self, i):
        return {v: k for k, v in self.vocab.items()}[i]


def test_sft_and_preference_adapters_write_the_same_metadata_shape(tmp_path):
    """merge and export read every toolkit-adapter.json alike: a preference adapter's is an SFT
    adapter's with the same keys in the same order, plus its `preference` block."""
    import shutil
    from types import SimpleNamespace

    from toolkit.train.config import load_config
    from toolkit.train.dpo import preference_adapter_meta
    from toolkit.train.model import adapter_meta

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"vocab_size": 3, "hidden_size": 8}), encoding="utf-8")
    start = tmp_path / "run" / "start"  # the SFT model merged: same weights, so the same identity
    shutil.copytree(base, start)
    resolved = SimpleNamespace(name="base", hf_dir=base, require_hf=lambda: base)
    sft = adapter_meta(load_config(None, model=str(base)), resolved, _Tokenizer(), [])
    dpo = preference_adapter_meta(load_config(None, model=str(tmp_path / "sft"), method="dpo"), start,
                                  {"format": "chat", "stop": sft["stop"]}, _Tokenizer(), "")
    assert list(dpo) == [*sft, "preference"] and list(dpo["base"]) == list(sft["base"])
    assert list(dpo["lora"]) == list(sft["lora"]) and sft["stop"] == ["<|im_end|>"]
    assert dpo["base"]["config_sha256"] == sft["base"]["config_sha256"]
    assert dpo["base"]["spec"] == str(start.resolve()) and sft["base"]["spec"] == str(base)
    assert {k: v for k, v in dpo.items() if k not in ("base", "preference")} == {k: v for k, v in sft.items() if k != "base"}
    assert dpo["preference"]["method"] == "dpo" and dpo["preference"]["reference"] == str(start.resolve())


def _eval(step, loss, acc, margin, chosen, rejected):
    return {"step": step, "val_loss": loss, "eval_rewards/accuracies": acc, "eval_rewards/margins": margin,
            "eval_logps/chosen": chosen, "eval_logps/rejected": rejected}


def test_health_warnings_name_the_usual_dpo_mistakes():
    from toolkit.train.dpo_report import health

    good = [_eval(0, math.log(2), 0.0, 0.0, -100, -80), _eval(10, 0.6, 0.7, 0.2, -99, -85)]
    assert health(good, warmup_steps=1, loss_type="sigmoid") == []
    wrong_reference = [_eval(0, 0.01, 1.0, 5.0, -100, -80), _eval(10, 0.001, 1.0, 6.0, -99, -85)]
    assert any("1.0 at step 0" in w for w in health(wrong_reference, 1, "sigmoid"))
    flat = [_eval(0, math.log(2), 0.0, 0.0, -100, -80), _eval(10, math.log(2) + 1e-4, 0.0, 1e-5, -100, -80)]
    assert any("flat at ln 2" in w for w in health(flat, 1, "sigmoid"))
    collapse = [_eval(0, math.log(2), 0.0, 0.0, -100, -80), _eval(10, 0.3, 0.9, 3.0, -140, -150)]
    assert any("collapsing" in w for w in health(collapse, 1, "sigmoid"))
    nan = good + [{"step": 11, "loss": float("nan")}]
    assert any("NaN" in w for w in health(nan, 1, "sigmoid"))
