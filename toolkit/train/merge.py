"""`toolkit merge`: base model + LoRA adapter -> one full-precision HF model, ready for GGUF export.

The adapter is always merged into an fp32 copy of the base: for the embedded default (a GGUF),
`resolve()` gives its dequantized fp32 directory; a QLoRA adapter, trained against 4-bit weights,
is merged into the same fp32 weights, never into 4-bit ones. The merged model is checked before it
is kept: its logits, reloaded from disk, must equal base+adapter logits (max |diff| < 1e-4 in fp32).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import ConfigError, ModelError
from toolkit.io import atomic_dir, write_json
from toolkit.models import _set_generation_defaults, resolve
from toolkit.train.model import ADAPTER_META, base_identity, keep_tokenizer_flags, same_base

TOLERANCE = 1e-4
# Above this size the float64 recheck (two extra copies of the model in fp64) is skipped.
FP64_RECHECK_MAX_PARAMS = 2_000_000_000
# Inputs for the logits check: a problem and the start of an approach, in the adapter's own format.
CHECK_MESSAGES = [
    [{"role": "user", "content": "How can small language models be adapted to a new domain with little compute?"},
     {"role": "assistant", "content": "We train low-rank adapters on a few thousand examples while the base stays frozen."}],
    [{"role": "user", "content": "Why do graph neural networks oversmooth when they get deeper?"},
     {"role": "assistant", "content": "We show that message passing acts as a low-pass filter on node features."}],
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
]


@dataclass
class MergeResult:
    out: Path
    max_abs_diff: float  # merged vs base+adapter logits, both in fp32
    adapter_effect: float  # base vs base+adapter logits: how much there was to merge
    base: str
    fp64_diff: float | None = None  # the same check in float64, run when fp32 rounding alone reaches the limit

    @property
    def passed(self) -> bool:
        return self.max_abs_diff < TOLERANCE or (self.fp64_diff is not None and self.fp64_diff < TOLERANCE)


def find_adapter(path: str | os.PathLike) -> Path:
    """The adapter directory: `path` itself or `path/adapter` (a run directory)."""
    path = Path(path)
    for candidate in (path, path / "adapter"):
        if (candidate / "adapter_config.json").exists():
            return candidate
    raise ModelError(f"{path} holds no LoRA adapter (no adapter_config.json)",
                     fix="pass a training run directory or its adapter/ folder")


def check_base(adapter: Path, meta: dict, hf_dir: Path, spec: str) -> None:
    """One-line ModelError when `hf_dir` is not the base the adapter was trained on."""
    recorded = meta.get("base") or {}
    actual = base_identity(hf_dir)
    if not same_base(recorded, actual):
        trained_on = recorded.get("spec") or recorded.get("name") or "another model"
        raise ModelError(f"adapter {adapter} was trained on a different base ({trained_on}) than {spec}: "
                         f"config or weights differ", fix=f"merge it into the model it was trained on: --base {trained_on}")


def _inputs(tokenizer):
    import torch

    texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in CHECK_MESSAGES]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    return input_ids, mask


def _logits(model, input_ids, mask):
    import torch

    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask).logits
    return logits[mask.bool()]  # real positions only: pad positions are not compared


def base_for(adapter: str | os.PathLike, base: str | None = None) -> tuple[Path, dict, str, Path]:
    """(adapter dir, its toolkit-adapter.json, base spec, base fp32 HF dir), checked to belong together."""
    adapter = find_adapter(adapter)
    meta_path = adapter / ADAPTER_META
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    peft_config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    spec = base or (meta.get("base") or {}).get("spec") or peft_config.get("base_model_name_or_path")
    if not spec:
        raise ModelError(f"{adapter} does not say which base it was trained on", fix="pass --base MODEL")
    hf_dir = resolve(spec).require_hf()
    if "quantization_config" in json.loads((hf_dir / "config.json").read_text(encoding="utf-8")):
        raise ModelError(f"base {hf_dir} is quantized; merging needs full-precision weights",
                         fix="pass the original fp16/fp32 model, or the .gguf (it is dequantized to fp32 first)")
    if meta:
        check_base(adapter, meta, hf_dir, str(spec))
    return adapter, meta, str(spec), hf_dir


def load_adapter(adapter: str | os.PathLike, base: str | None = None, dtype=None):
    """(PeftModel in eval mode, tokenizer, toolkit-adapter.json): the base in full precision, its
    embeddings resized for any added tokens (their trained rows come from the adapter), the adapter on top."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter, meta, _spec, hf_dir = base_for(adapter, base)
    tokenizer = AutoTokenizer.from_pretrained(adapter if (adapter / "tokenizer_config.json").exists() else hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype or torch.float32)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return PeftModel.from_pretrained(model, adapter).eval(), tokenizer, meta


def merge(adapter: Path, out: Path, base: str | None = None) -> MergeResult:
    """Merge a LoRA adapter into a full-precision copy of its base model.

    Writes OUT as an HF model (safetensors, tokenizer with any added tokens, chat template,
    generation config stopping at end-of-turn) ready for `toolkit export`. Checks first that the
    adapter belongs to this base, and afterwards that the merged model's logits equal base+adapter
    logits (max abs difference < 1e-4 in fp32; when fp32 rounding alone reaches that on a strong
    adapter, the check is repeated in float64); reports the differences.

    Args:
        adapter: the adapter directory (RUN/adapter), or the training run directory holding it.
        out: directory for the merged model (replaced atomically).
        base: base model (embedded name, HF directory or .gguf); default: the one recorded in the adapter.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from toolkit.console import out as stdout
    from toolkit.console import status

    adapter_dir, meta, spec, hf_dir = base_for(adapter, base)
    out = Path(out)
    if out.resolve() == adapter_dir.resolve() or adapter_dir.resolve() in out.resolve().parents:
        raise ConfigError(f"--out {out} would overwrite the adapter", fix="choose a directory outside the adapter")
    with status(f"Merging {adapter_dir} into {spec} (fp32)"):
        peft_model, tokenizer, meta = load_adapter(adapter_dir, base)
        base_vocab = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))["vocab_size"]
        input_ids, mask = _inputs(tokenizer)
        expected = _logits(peft_model, input_ids, mask)
        with peft_model.disable_adapter():  # on the base vocabulary: added tokens have no base value
            effect = float((_logits(peft_model, input_ids, mask) - expected)[:, :base_vocab].abs().max())
        merged = peft_model.merge_and_unload()
        _stop_at_end_of_turn(merged, tokenizer, meta)
        with atomic_dir(out) as tmp:
            merged.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            keep_tokenizer_flags(hf_dir, tmp)  # the base's: an adapter saved before they were kept lacks them
            reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
            diff = float((_logits(reloaded, input_ids, mask) - expected).abs().max())
            fp64 = None
            if not diff < TOLERANCE and reloaded.num_parameters() <= FP64_RECHECK_MAX_PARAMS:
                # x@W + (x@A)@B and x@(W+BA) round differently; logits of ~35 carry fp32 noise near
                # 1e-4. In float64 that noise vanishes and only the merge itself is measured.
                fp64 = _fp64_diff(hf_dir, adapter_dir, tokenizer, reloaded, input_ids, mask)
            del reloaded
            if not (diff < TOLERANCE or (fp64 is not None and fp64 < TOLERANCE)):
                raise ModelError(f"merged model's logits differ from base+adapter by {diff:.2e} (limit {TOLERANCE:g})",
                                 fix="this is a bug: report it with the adapter's adapter_config.json")
            write_json(tmp / "toolkit-merge.json", {
                "adapter": str(adapter_dir.resolve()), "base": {"spec": spec, "hf_dir": str(hf_dir)},
                "format": meta.get("format", "chat"), "system": meta.get("system", ""), "stop": meta.get("stop", []),
                "added_tokens": meta.get("added_tokens", {}), "qlora_adapter": bool(meta.get("qlora")),
                "logits_check": {"inputs": len(CHECK_MESSAGES), "max_abs_diff": diff, "fp64_max_abs_diff": fp64,
                                 "tolerance": TOLERANCE, "adapter_effect_max_abs": effect}})
    check = f"max |diff| = {diff:.2e} in fp32" + (f", {fp64:.2e} in fp64" if fp64 is not None else "")
    stdout.print(f"merged model {out}\nlogits check: merged vs base+adapter {check} (limit {TOLERANCE:g}) "
                 f"on {len(CHECK_MESSAGES)} inputs; the adapter moves logits by up to {effect:.3g}", highlight=False, soft_wrap=True)
    return MergeResult(out, diff, effect, spec, fp64)


def _stop_at_end_of_turn(model, tokenizer, meta: dict) -> None:
    """Generation stops at the template's end of turn (<|im_end|>) and, for the tagged format, </approach>."""
    _set_generation_defaults(model, tokenizer)
    vocab = tokenizer.get_vocab()
    extra = [vocab[t] for t in meta.get("stop", []) if t in vocab]
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = sorted(set((eos if isinstance(eos, list) else [eos]) + extra))


def _fp64_diff(hf_dir: Path, adapter: Path, tokenizer, merged, input_ids, mask) -> float:
    """The logits check in float64: base+adapter vs the merged (fp32-saved) weights."""
    import torch

    peft64, _, _ = load_adapter(adapter, str(hf_dir), dtype=torch.float64)
    expected = _logits(peft64.double(), input_ids, mask)  # .double(): the adapter's weights too
    del peft64
    got = _logits(merged.double(), input_ids, mask)
    merged.float()
    return float((got - expected).abs().max())


__all__ = ["merge", "MergeResult", "load_adapter", "base_for", "find_adapter", "check_base", "TOLERANCE"]
