"""`toolkit train` on the real default model with a tiny dataset and a few steps."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.errors import ConfigError, DataError, ModelError, ToolkitError

PAIRS = [
    ("How can small language models be adapted to a new domain with little compute?",
     "We fine-tune low-rank adapters on a few thousand domain examples while the base weights stay frozen. The adapters train on one CPU in minutes."),
    ("Why do graph neural networks oversmooth when they are made deeper?",
     "We show that message passing acts as a low-pass filter and propose gated residual connections that keep high frequencies."),
    ("Can reinforcement learning agents generalise to unseen levels of a game?",
     "We train agents on generated levels; augmenting observations halves the gap between training and test levels."),
    ("How should missing values be handled in clinical time series?",
     "We model missingness with an indicator channel and a learned decay of the last observation, which beats imputation."),
    ("Is it possible to compress transformer models without losing accuracy?",
     "We prune attention heads, quantise the rest to eight bits and distil briefly; the models run four times faster."),
    ("What limits protein structure prediction for rare families?",
     "We find that alignment depth predicts accuracy and deepen shallow alignments with generated sequences."),
    ("How can we detect distribution shift in deployed classifiers?",
     "We run a two-sample test on confidences and penultimate features; it flags shifts before accuracy drops."),
    ("Do larger batch sizes hurt generalisation in deep networks?",
     "With warmup and a linearly scaled learning rate the gap vanishes up to 4096 examples per batch."),
    ("How can robots learn manipulation skills from few demonstrations?",
     "We pretrain visual features on human videos and clone behaviour from ten demonstrations per task."),
    ("Why do recommender systems amplify popularity bias?",
     "We model the feedback loop as a dynamical system and reweight the loss, which reduces the bias."),
]
VALIDATION = [
    ("Can speech recognition work well for low-resource languages?",
     "We pretrain on unlabelled multilingual audio and fine-tune on one hour of speech, cutting errors by a third."),
    ("What makes federated learning slow on heterogeneous clients?",
     "Client drift dominates the error; a control variate on each client's update removes it."),
]
FAST = dict(max_length=192, batch_size=2, grad_accum=2, eval_every=0, save_every=0)


def write_rows(path: Path, pairs) -> Path:
    rows = [{"id": f"{path.stem}-{i}", "prompt": p, "response": r, "kind": "problem-approach"} for i, (p, r) in enumerate(pairs)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("data")
    return {"train_data": str(write_rows(d / "train.jsonl", PAIRS)),
            "validation_data": str(write_rows(d / "validation.jsonl", VALIDATION))}


@pytest.fixture(scope="module")
def tokenizer(default_hf_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_hf_dir)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, f"error is not one line: {text!r}"
    return text


# --------------------------------------------------------------------------------- tokenizing


def test_loss_masking_on_a_real_tokenized_example(tokenizer):
    from toolkit.data.records import Example
    from toolkit.train.batches import Collator
    from toolkit.train.tokens import IGNORE, render, tokenize_example

    ex = Example("a", PAIRS[0][0], PAIRS[0][1], "problem-approach", {})
    ids, labels = tokenize_example(tokenizer, ex, "chat", 512)
    prompt, _ = render(tokenizer, [{"role": "user", "content": ex.prompt}, {"role": "assistant", "content": ex.response}])
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end == 2 and tokenizer.pad_token_id == im_end  # why masking must go by position
    assert labels[:n_prompt] == [IGNORE] * n_prompt  # system prompt, user turn, "<|im_start|>assistant\n"
    assert labels[n_prompt:] == ids[n_prompt:]
    assert labels[-1] == im_end  # the end of turn is learned: the model learns to stop
    assert tokenizer.decode(labels[n_prompt:]) == ex.response + "<|im_end|>"
    assert tokenizer.decode(ids[:n_prompt]).endswith("<|im_start|>assistant\n")
    assert ex.prompt in tokenizer.decode(ids[:n_prompt])

    # padding: by position, so the short row's own <|im_end|> stays a label and pads do not
    short = Example("b", "Why?", "Because.", "qa", {})
    batch = Collator(tokenizer.pad_token_id)([{"input_ids": ids, "labels": labels},
                                              {"input_ids": (s := tokenize_example(tokenizer, short, "chat", 512))[0], "labels": s[1]}])
    n_short = len(s[0])
    assert batch["input_ids"].shape == (2, len(ids))
    assert batch["attention_mask"][1, :n_short].all() and not batch["attention_mask"][1, n_short:].any()
    assert (batch["labels"][1, n_short:] == IGNORE).all()
    assert batch["labels"][1, n_short - 1] == im_end and (batch["input_ids"][1, n_short:] == im_end).all()
    # truncation keeps the prompt and cuts the reply
    cut_ids, cut_labels = tokenize_example(tokenizer, ex, "chat", n_prompt + 5)
    assert len(cut_ids) == n_prompt + 5 and cut_labels[-1] != im_end


def test_tagged_format_tokenization(tokenizer):
    from transformers import AutoTokenizer

    from toolkit.data.records import Example
    from toolkit.train.tokens import IGNORE, TAGS, prepare_tokenizer, tokenize_example

    tok = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    new = prepare_tokenizer(tok, "tagged")
    assert new == list(range(49152, 49156)) and [tok.convert_tokens_to_ids(t) for t in TAGS] == new
    ex = Example("a", "Why is the sky blue?", "Rayleigh scattering.", "qa", {})
    ids, labels = tokenize_example(tok, ex, "tagged", 512)
    text = tok.decode(ids)
    assert text == "<problem>Why is the sky blue?</problem>\n<approach>Rayleigh scattering.</approach><|im_end|>"
    first = next(i for i, label in enumerate(labels) if label != IGNORE)
    assert tok.decode(ids[:first]).endswith("<approach>")
    assert tok.decode(labels[first:]) == "Rayleigh scattering.</approach><|im_end|>"
    with pytest.raises(ModelError, match="tag tokens"):
        tokenize_example(tokenizer, ex, "tagged", 512)


# ------------------------------------------------------------------------------------- config


def test_config_from_yaml_recipes_and_overrides(tmp_path):
    from toolkit.train.config import RECIPES_DIR, TrainConfig, load_config

    assert load_config() == TrainConfig()
    for recipe in ("lora-chat", "lora-tagged", "qlora"):
        cfg = load_config(recipe)
        assert cfg.r == 8 and cfg.alpha == 16 and cfg.lr == 1e-4  # YAML's 1.0e-4 is a float
        text = (RECIPES_DIR / f"{recipe}.yaml").read_text()
        assert text.startswith("#") and f"toolkit train --config {recipe}" in text
    assert load_config("lora-tagged").format == "tagged" and load_config("qlora").qlora is True
    assert load_config("lora-chat", r=16, lr=3e-4, target_modules=["q_proj"]).r == 16

    path = tmp_path / "my.yaml"
    path.write_text("lr: 1e-4\nr: '4'\ntarget_modules: q_proj, v_proj\ngroup_by_length: false\n")
    cfg = load_config(path, r=None)  # None = not given on the command line
    assert (cfg.lr, cfg.r, cfg.target_modules, cfg.group_by_length) == (1e-4, 4, ["q_proj", "v_proj"], False)
    # the resolved config a run writes loads back unchanged
    (tmp_path / "back.yaml").write_text(cfg.to_yaml("header\nline two"))
    assert load_config(tmp_path / "back.yaml") == cfg

    path.write_text("lr: 1e-4\nlearning_rate: 2e-4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = one_line(info.value)
    assert "'learning_rate'" in text and "valid keys" in text and "lr" in text
    for bad, match in [({"r": 0}, "r=0"), ({"dropout": 1.5}, "dropout"), ({"format": "xml"}, "not one of"),
                       ({"r": 2.5}, "r: 2.5")]:
        with pytest.raises(ConfigError, match=match):
            load_config(**bad)
    with pytest.raises(ConfigError, match="recipe name"):
        load_config("no-such-recipe")


def test_train_help_documents_every_option():
    """`toolkit train` has one option per TrainConfig field, expanded from the dataclass: its help, its
    default in the help, and None ("not given") as the parsed value, so a --config's values survive."""
    from toolkit.cli import build_parser, collect_options, parse_docstring
    from toolkit.train.command import TrainOverrides, train
    from toolkit.train.config import FIELDS, field_default

    desc, args = parse_docstring(train.__doc__)
    assert set(args) == {"config", "resume"}
    assert "accelerate launch" in desc and "lora-chat" in desc
    parser = build_parser()._subparsers._group_actions[0].choices["train"]
    options = {a.dest: a for a in parser._actions}
    assert set(FIELDS) | {"config", "resume", "help", "threads"} == set(options)  # --threads: every model command's
    for name, f in FIELDS.items():
        assert options[name].help.startswith(f.metadata["help"].replace("%", "%%")) and options[name].default is None
    assert "LoRA rank" in options["r"].help and "(default: 8)" in options["r"].help
    assert "(default: q_proj,k_proj,v_proj,o_proj,gate_proj)" in options["target_modules"].help
    assert options["lr_scheduler"].choices == ["linear", "cosine", "constant"] and field_default("lr_scheduler") == "linear"
    parsed = collect_options(vars(parser.parse_args(["--config", "lora-chat", "--r", "16", "--target-modules", "q_proj", "v_proj",
                                                     "--no-group-by-length"])))
    assert parsed["config"] == "lora-chat" and parsed["resume"] is False
    assert parsed["options"] == TrainOverrides(r=16, target_modules=["q_proj", "v_proj"], group_by_length=False)
    assert parsed["options"].given() == {"r": 16, "target_modules": ["q_proj", "v_proj"], "group_by_length": False}


# --------------------------------------------------------------------------------- data order


def test_data_order_is_seeded_grouped_and_position_addressed():
    import random

    from toolkit.train.batches import DataOrder, epoch_batches

    rng = random.Random(1)
    lengths = [rng.randint(20, 500) for _ in range(200)]
    a = epoch_batches(lengths, 4, seed=0, epoch=0)
    assert a == epoch_batches(lengths, 4, seed=0, epoch=0)
    assert a != epoch_batches(lengths, 4, seed=1, epoch=0) and a != epoch_batches(lengths, 4, seed=0, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(200))
    assert max(lengths[i] for i in a[0]) == max(lengths)  # longest batch first: OOM shows at once

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    plain = epoch_batches(lengths, 4, seed=0, epoch=0, group_by_length=False)
    assert padded(a) < 0.7 * padded(plain)  # grouping removes most padding

    order = DataOrder(lengths, 4, seed=0)
    assert order.per_epoch == 50 and order.batch(0) == a[0] and order.batch(51) == epoch_batches(lengths, 4, 0, 1)[1]
    ranks = [DataOrder(lengths, 4, seed=0, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].per_epoch == 25 and ranks[0].batch(0) == a[0] and ranks[1].batch(0) == a[1]


# ------------------------------------------------------------------------------ bad input


def test_bad_data_fails_in_one_line(tmp_path, data):
    from toolkit.train.command import TrainOverrides, train

    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"question": "What is LoRA?"}\n')
    with pytest.raises(DataError) as info:
        train(options=TrainOverrides(train_data=str(missing), validation_data="", out=str(tmp_path / "r1")))
    assert "missing field 'answer'" in one_line(info.value) and "missing.jsonl:1" in str(info.value)

    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"prompt": "What is LoRA?", "response": ""}\n{"prompt": "And QLoRA?", "response": "  "}\n')
    with pytest.raises(DataError) as info:
        train(options=TrainOverrides(train_data=str(empty), validation_data="", out=str(tmp_path / "r2")))
    assert "no usable rows (2 with an empty response)" in one_line(info.value) and "empty.jsonl" in str(info.value)

    with pytest.raises(DataError) as info:  # every prompt longer than max_length
        train(options=TrainOverrides(train_data=data["train_data"], validation_data="", out=str(tmp_path / "r3"), max_length=20))
    assert "prompt fills max_length=20" in one_line(info.value)

    with pytest.raises(DataError, match="train file not found.*toolkit data build"):
        train(options=TrainOverrides(train_data=str(tmp_path / "nope.jsonl"), out=str(tmp_path / "r4")))
    with pytest.raises(DataError, match="validation file not found.*--validation-data ''"):
        train(options=TrainOverrides(train_data=data["train_data"], validation_data=str(tmp_path / "nope.jsonl"), out=str(tmp_path / "r4")))
    assert not (tmp_path / "r1").exists()  # nothing is written before the data is known to be good


@pytest.mark.slow
def test_unknown_target_module_names_it_and_lists_the_real_ones(tmp_path, data):
    from toolkit.train.command import TrainOverrides, train

    with pytest.raises(ConfigError) as info:
        train(options=TrainOverrides(**data, out=str(tmp_path / "run"), target_modules=["q_proj", "query_key_value"], max_steps=1))
    text = one_line(info.value)
    assert "'query_key_value'" in text
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert name in text


# ------------------------------------------------------------------------ resume, determinism


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, data):
    """An uninterrupted 4-step run, and the same run stopped at step 2 then resumed."""
    from toolkit.train.command import TrainOverrides, train

    root = tmp_path_factory.mktemp("resume")
    kw = dict(**data, **{**FAST, "eval_every": 2, "save_every": 2}, max_steps=4, seed=3)
    whole = train(options=TrainOverrides(out=str(root / "whole"), **kw))
    first = train(options=TrainOverrides(out=str(root / "cut"), stop_after=2, **kw))
    assert not first.completed and (root / "cut" / "checkpoints" / "step-000002").is_dir()
    assert not (root / "cut" / "adapter").exists()
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(options=TrainOverrides(out=str(root / "cut"), **kw))  # without --resume a run is never overwritten
    with pytest.raises(ConfigError, match="lr=0.001 differs"):
        train(options=TrainOverrides(out=str(root / "cut"), lr=1e-3), resume=True)
    second = train(options=TrainOverrides(out=str(root / "cut")), resume=True)  # `--out DIR --resume`: the run's own config
    return whole, first, second


@pytest.mark.slow
def test_resume_after_interruption_matches_an_uninterrupted_run(resumed):
    from safetensors.torch import load_file

    whole, first, second = resumed
    assert second.completed and second.steps == whole.steps == 4
    assert second.losses == pytest.approx(whole.losses, abs=1e-6)
    assert second.val_losses == pytest.approx(whole.val_losses, abs=1e-6)
    a = load_file(whole.out / "adapter" / "adapter_model.safetensors")
    b = load_file(second.out / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    rows = [json.loads(line) for line in (second.out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]  # no step logged twice across the resume


@pytest.mark.slow
def test_same_seed_same_losses_and_run_dir_contents(resumed):
    whole, first, _ = resumed
    assert first.losses == whole.losses[:2]  # two processes, same seed and data: identical losses
    assert all(math.isfinite(x) for x in whole.losses)
    assert whole.val_losses[4] < whole.val_losses[0]
    out = whole.out
    for name in ("config.yaml", "metrics.jsonl", "loss.png", "summary.json", "adapter/adapter_model.safetensors",
                 "adapter/tokenizer.json", "adapter/toolkit-adapter.json"):
        assert (out / name).exists(), name
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0] == {"step": 0, "val_loss": whole.val_losses[0]}
    assert {"step", "loss", "lr", "tokens_per_s", "padded_tokens_per_s", "grad_norm"} <= set(rows[1])
    assert "val_loss" in rows[2] and "val_loss" in rows[4] and rows[1]["lr"] > rows[4]["lr"]
    meta = json.loads((out / "adapter" / "toolkit-adapter.json").read_text())
    assert meta["base"]["vocab_size"] == 49152 and meta["format"] == "chat" and meta["stop"] == ["<|im_end|>"]
    config = (out / "config.yaml").read_text()
    assert config.startswith("#") and "seed: 3" in config


# ----------------------------------------------------------------------- tagged round trip


@pytest.mark.slow
def test_tagged_round_trip_train_reload_merge_generate(tmp_path, data, default_hf_dir):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.train.command import TrainOverrides, train
    from toolkit.train.merge import merge
    from toolkit.train.model import load_for_training
    from toolkit.train.tokens import TAGS

    result = train(options=TrainOverrides(**data, **{**FAST, "eval_every": 3}, out=str(tmp_path / "run"), format="tagged", max_steps=3, lr=5e-4))
    adapter = result.adapter
    tok = AutoTokenizer.from_pretrained(adapter)
    assert [tok.convert_tokens_to_ids(t) for t in TAGS] == [49152, 49153, 49154, 49155]
    # the new rows were trained and saved with the adapter (not the 49k-row matrices)
    saved = load_file(adapter / "adapter_model.safetensors")
    deltas = [v for k, v in sorted(saved.items()) if "trainable_tokens_delta" in k and "embed_tokens" in k]
    assert len(deltas) == 1 and deltas[0].shape == (4, 576)
    assert sum(v.numel() for v in saved.values()) < 3_000_000
    init, _, _ = load_for_training("smollm2", fmt="tagged")
    init_rows = init.get_input_embeddings().weight[49152:].detach()
    assert (deltas[0] - init_rows).abs().max() > 1e-4  # trained away from the initialisation
    del init

    # reload: base + resized embeddings + adapter
    base = AutoModelForCausalLM.from_pretrained(default_hf_dir, dtype=torch.float32)
    base.resize_token_embeddings(len(tok), mean_resizing=False)
    reloaded = PeftModel.from_pretrained(base, adapter).eval()
    assert torch.equal(reloaded.get_input_embeddings()(torch.tensor([49152, 49155])), deltas[0][[0, 3]])
    messages = [{"role": "user", "content": VALIDATION[0][0]}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == f"<problem>{VALIDATION[0][0]}</problem>\n<approach>"
    x = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        from_adapter = reloaded.generate(**x, max_new_tokens=12, do_sample=False)

    merged_dir = tmp_path / "merged"
    report = merge(adapter, merged_dir)
    assert report.passed
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    merged_tok = AutoTokenizer.from_pretrained(merged_dir)
    assert merged_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == prompt
    assert merged.get_input_embeddings().weight.shape[0] == 49156
    assert 49155 in merged.generation_config.eos_token_id and 2 in merged.generation_config.eos_token_id
    with torch.no_grad():
        from_merged = merged.generate(**x, max_new_tokens=12, do_sample=False)
    assert from_merged.tolist() == from_adapter.tolist()
    assert merged_tok.decode(from_merged[0]).startswith("<problem>")


# ------------------------------------------------------------------------------------ QLoRA


@pytest.mark.slow
def test_qlora_trains_a_few_steps_and_merges_into_fp32(tmp_path, data):
    from safetensors.torch import load_file

    from toolkit.train.command import TrainOverrides, train
    from toolkit.train.merge import merge

    result = train(options=TrainOverrides(train_data=data["train_data"], validation_data="", out=str(tmp_path / "run"), qlora=True,
                                          gradient_checkpointing=True, max_steps=2, batch_size=1, grad_accum=1, max_length=128, lr=1e-3,
                                          eval_every=0, save_every=0))
    assert result.completed and all(math.isfinite(x) for x in result.losses)
    saved = load_file(result.adapter / "adapter_model.safetensors")
    assert any("lora_B" in k and float(v.abs().max()) > 0 for k, v in saved.items())
    assert json.loads((result.adapter / "toolkit-adapter.json").read_text())["qlora"] is True
    report = merge(result.adapter, tmp_path / "merged")
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert report.passed


# ------------------------------------------------------------------------- several processes


@pytest.mark.slow
@pytest.mark.parametrize("launch", [["--cpu"], ["--multi_gpu"]], ids=["cpu", "two-processes"])
def test_training_entry_point_under_accelerate_launch(tmp_path, data, launch):
    """`accelerate launch --num_processes 2 ... -m toolkit train`: one adapter, each step logged once.

    accelerate 1.x's `launch --cpu --num_processes 2` starts a single process unless MPI is set up
    (`--mpirun_hostfile`); `--multi_gpu` on a machine without GPUs starts two CPU processes through
    torch.distributed (gloo), which is what exercises the data-parallel path here.
    """
    from toolkit.cli import COMMANDS

    if "train" not in COMMANDS:
        pytest.skip("`toolkit train` is not registered in toolkit/cli.py yet")
    out = tmp_path / "run"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "toolkit", "train",
           "--train-data", data["train_data"], "--validation-data", data["validation_data"], "--out", str(out),
           "--max-steps", "2", "--batch-size", "1", "--grad-accum", "1", "--max-length", "128",
           "--eval-every", "0", "--save-every", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    adapters = sorted(p.parent for p in tmp_path.rglob("adapter_model.safetensors"))
    assert adapters == [out / "adapter"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] and summary["processes"] == (2 if "--multi_gpu" in launch else summary["processes"])
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]
    assert sum(line.startswith("adapter ") for line in proc.stdout.splitlines()) == 1  # only the main process reports


# ----------------------------------------------------------------------------------- search


@pytest.mark.slow
def test_search_runs_trials_into_sqlite_resumes_and_writes_a_best_config(tmp_path, data):
    import optuna

    from toolkit.train.config import load_config
    from toolkit.train.search import search

    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 1.0e-4, high: 1.0e-3, log: true}\nr: {choices: [4, 8]}\nalpha: [8, 16]\n"
                     "dropout: {low: 0.0, high: 0.1}\n")
    kw = dict(space=str(space), trial_steps=2, eval_every=1, out=str(tmp_path / "search"), seed=0, max_length=128,
              train_data=data["train_data"], validation_data=data["validation_data"])
    first = search(trials=2, **kw)
    assert first["trials"] == 2
    db = tmp_path / "search" / "study.db"
    before = [(t.params, t.value) for t in optuna.load_study(study_name="lora", storage=f"sqlite:///{db}").trials]
    again = search(trials=3, **kw)  # re-running continues the study: one more trial, none lost
    study = optuna.load_study(study_name="lora", storage=f"sqlite:///{db}")
    assert len(study.trials) == 3 == again["trials"]
    assert [(t.params, t.value) for t in study.trials[:2]] == before
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3
    best = load_config(again["best_config"])  # what `toolkit train --config best.yaml` reads
    assert best.lr == pytest.approx(study.best_params["lr"]) and best.r == study.best_params["r"]
    assert best.alpha == study.best_params["alpha"] and best.max_steps == 0  # the full budget, not the trial's
    assert (tmp_path / "search" / "best.yaml").read_text().startswith("# Best of")


def test_search_space_errors_are_one_line(tmp_path):
    from toolkit.train.search import load_space

    assert {d.name for d in load_space("search-space")} == {"lr", "r", "alpha", "dropout"}
    for text, match in [("learning_rate: {low: 1, high: 2}\n", "cannot be searched"), ("lr: {low: 2, high: 1}\n", "low < high"),
                        ("r: {choices: []}\n", "non-empty"), ("lr: {min: 1}\n", "unknown key 'min'"), ("", "empty")]:
        path = tmp_path / "s.yaml"
        path.write_text(text)
        with pytest.raises(ToolkitError, match=match) as info:
            load_space(path)
        one_line(info.value)
