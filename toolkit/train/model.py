"""The model side of training: the device and precision, the base loaded for PEFT (fp32, bf16 on a
GPU that has it, or 4-bit NF4 for QLoRA) with the LoRA adapter on top, and the adapter saved with
toolkit-adapter.json, which records the base's identity so merge never uses another base.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toolkit import __version__
from toolkit.errors import ConfigError, ModelError
from toolkit.io import atomic_dir, write_json
from toolkit.models import resolve
from toolkit.train.config import TrainConfig
from toolkit.train.tokens import TAGS, end_of_turn_id, prepare_tokenizer

ADAPTER_META = "toolkit-adapter.json"
# Whether the tokenizer adds BOS/EOS itself: the GGUF converter reads these from tokenizer_config.json
TOKENIZER_FLAGS = ("add_bos_token", "add_eos_token")


def device_kind() -> str:
    """cuda, mps or cpu: what Accelerator will pick (`accelerate launch --cpu` forces cpu)."""
    import torch

    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in {"1", "true", "yes"}:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_precision(precision: str) -> str:
    """`auto` -> bf16 on a CUDA GPU that supports it, fp16 on an older one, fp32 on CPU and MPS."""
    import torch

    if precision != "auto":
        return precision
    if device_kind() == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def load_for_training(model_spec: str = "smollm2", qlora: bool = False, fmt: str = "chat", precision: str = "fp32",
                      device_map: Any = None):
    """(model, tokenizer, ResolvedModel): the base ready for PEFT.

    Full precision: weights in fp32 (bf16/fp16 on GPUs, where the frozen base needs half the memory;
    LoRA weights stay fp32). QLoRA: Linear layers in 4-bit NF4 through bitsandbytes, which also runs
    on CPU. For `tagged`, the tag tokens are added, the embeddings resized and each new row set to
    the mean embedding of the tokens its text was split into before (`<problem>` ~ "<", "problem", ">").
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve(model_spec)
    hf_dir = resolved.require_hf()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    old_vocab = len(tokenizer)
    fresh = prepare_tokenizer(tokenizer, fmt)  # empty when the base already has the tags (trained before)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if qlora:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = device_map or {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(hf_dir, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load {hf_dir} for training: {str(exc).splitlines()[0]}",
                         fix="pass an HF causal-LM directory or an embedded name") from None
    if fresh:
        _add_token_rows(model, tokenizer, fresh, old_vocab)
    return model, tokenizer, resolved


def added_token_ids(tokenizer, fmt: str) -> list[int]:
    """Ids of the tokens the format adds (the tags), which must be trained and saved with the adapter."""
    return [tokenizer.convert_tokens_to_ids(t) for t in TAGS] if fmt == "tagged" else []


def _add_token_rows(model, tokenizer, new_ids: list[int], old_vocab: int) -> None:
    import torch

    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:  # some models already have spare rows
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        for tid in new_ids:
            pieces = [i for i in tokenizer(tokenizer.convert_ids_to_tokens(tid), add_special_tokens=False, split_special_tokens=True)["input_ids"]
                      if i < old_vocab]
            emb[tid] = emb[pieces].mean(0) if pieces else emb[:old_vocab].mean(0)
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.data_ptr():  # untied head: start the same way
            for tid in new_ids:
                out.weight[tid] = out.weight[:old_vocab].mean(0)


def linear_module_names(model) -> list[str]:
    """The distinct last-name parts of the model's Linear layers (what target_modules can name)."""
    import torch

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__.startswith("Linear"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def check_target_modules(model, targets: Sequence[str]) -> None:
    available = linear_module_names(model)
    for target in targets:
        if target not in available:
            raise ConfigError(f"target module {target!r} is not in this model",
                              fix=f"available: {', '.join(n for n in available if n != 'lm_head')}")


def base_identity(hf_dir: str | os.PathLike) -> dict:
    """What identifies a base model: a hash of its config (minus bookkeeping keys), its vocab size
    and a hash of one weight tensor, so an adapter is never merged into a different model."""
    hf_dir = Path(hf_dir)
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    volatile = {"transformers_version", "_name_or_path", "_model_name_or_path", "dtype", "torch_dtype", "use_cache",
                "quantization_config", "vocab_size", "architectures"}
    canon = json.dumps({k: v for k, v in config.items() if k not in volatile}, sort_keys=True)
    tensor, digest = _tensor_digest(hf_dir)
    return {"config_sha256": hashlib.sha256(canon.encode()).hexdigest(), "vocab_size": config.get("vocab_size"),
            "tensor": tensor, "tensor_sha256": digest}


def _tensor_digest(hf_dir: Path) -> tuple[str | None, str | None]:
    from safetensors import safe_open

    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
    elif (hf_dir / "model.safetensors").exists():
        with safe_open(hf_dir / "model.safetensors", framework="pt") as f:
            weight_map = {k: "model.safetensors" for k in f.keys()}
    else:
        return None, None
    names = sorted(weight_map)
    name = next((n for n in names if n.endswith("layers.0.self_attn.q_proj.weight")), names[0])
    with safe_open(hf_dir / weight_map[name], framework="pt") as f:
        t = f.get_tensor(name)
    return name, hashlib.sha256(t.float().contiguous().numpy().tobytes()).hexdigest()


def same_base(recorded: dict, actual: dict) -> bool:
    keys = [k for k in ("config_sha256", "tensor_sha256") if recorded.get(k) and actual.get(k)]
    return bool(keys) and all(recorded[k] == actual[k] for k in keys) and recorded.get("vocab_size") == actual.get("vocab_size")


def build_lora_model(cfg: TrainConfig, accelerator, precision: str):
    """(PEFT model, tokenizer, ResolvedModel, ids of added tokens)."""
    from accelerate.utils import set_seed
    from peft import LoraConfig, get_peft_model

    device_map = {"": accelerator.device} if cfg.qlora and accelerator.device.type != "cpu" else None
    model, tokenizer, resolved = load_for_training(cfg.model, cfg.qlora, cfg.format, precision, device_map)
    check_target_modules(model, cfg.target_modules)
    new_ids = added_token_ids(tokenizer, cfg.format)
    if cfg.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
    set_seed(cfg.seed)  # LoRA's A matrices are drawn here
    # added tokens: PEFT trainable tokens train (and save) just their rows, tied lm_head included
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
                      task_type="CAUSAL_LM", trainable_token_indices={"embed_tokens": new_ids} if new_ids else None)
    return get_peft_model(model, lora), tokenizer, resolved, new_ids


def adapter_meta(cfg: TrainConfig, resolved, tokenizer, new_ids: list[int]) -> dict:
    """toolkit-adapter.json of an SFT adapter: its base is the model `cfg.model` resolved to."""
    stops = [tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer))]
    if cfg.format == "tagged":
        stops.append(TAGS[3])
    return build_adapter_meta(cfg, spec=cfg.model, name=resolved.name, hf_dir=resolved.require_hf(), fmt=cfg.format,
                              system=cfg.system, stops=stops, qlora=cfg.qlora,
                              added_tokens={tokenizer.convert_ids_to_tokens(i): i for i in new_ids})


def build_adapter_meta(cfg: TrainConfig, *, spec: str, name: str, hf_dir: Path, fmt: str, system: str, stops: list[str],
                       qlora: bool = False, added_tokens: dict[str, int] | None = None,
                       preference: dict | None = None) -> dict:
    """The one shape of toolkit-adapter.json, for SFT and preference adapters alike: the base's
    identity (merge refuses another base), how to prompt (format, system, stops), the LoRA shape,
    and, for a preference adapter only, a `preference` block. `spec` is what the run was given as
    its base, `hf_dir` the HF directory it resolved to."""
    meta = {
        "toolkit_version": __version__,
        "base": {"spec": spec, "name": name, "hf_dir": str(hf_dir), **base_identity(hf_dir)},
        "format": fmt,
        "system": system,
        "added_tokens": added_tokens or {},
        "stop": stops,
        "qlora": qlora,
        "lora": {"r": cfg.r, "alpha": cfg.alpha, "dropout": cfg.dropout, "target_modules": list(cfg.target_modules)},
    }
    if preference is not None:
        meta["preference"] = preference
    return meta


def save_adapter(model, tokenizer, dest: Path, meta: dict) -> Path:
    """Write the PEFT adapter, its tokenizer (with any added tokens and the format's chat template)
    and toolkit-adapter.json atomically into `dest`."""
    import warnings

    with atomic_dir(dest) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PEFT's notes on resized embeddings: the new rows are saved as trainable tokens
            # save_embedding_layers=False: the trained rows of added tokens are stored as trainable tokens;
            # the full 49k-row matrices would add 200+ MB for nothing.
            model.save_pretrained(tmp, save_embedding_layers=False)
        tokenizer.save_pretrained(tmp)
        keep_tokenizer_flags(tokenizer.name_or_path, tmp)  # the folder it was loaded from: the base, or an adapter
        write_json(tmp / ADAPTER_META, meta)
        (tmp / "README.md").unlink(missing_ok=True)  # PEFT's empty model card template
    return dest


def keep_tokenizer_flags(source: str | os.PathLike | None, saved: Path) -> None:
    """Copy add_bos_token/add_eos_token from `source`'s tokenizer_config.json into the one just
    saved in `saved`. transformers' generic tokenizer class leaves them out when it saves, and the
    GGUF converter reads them there: without them a Mistral or Gemma model exported after training
    gets add_bos_token false, though its chat template writes a BOS."""
    if not source or not Path(source).is_dir():
        return
    try:
        original = json.loads((Path(source) / "tokenizer_config.json").read_text(encoding="utf-8"))
        config = json.loads((saved / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no config to copy from (a hub tokenizer, say) or none saved
        return
    flags = {k: original[k] for k in TOKENIZER_FLAGS if k in original}
    if any(config.get(k) != v for k, v in flags.items()):
        write_json(saved / "tokenizer_config.json", config | flags)
