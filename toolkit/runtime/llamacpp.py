"""Loading llama.cpp safely on CPUs that report features the machine cannot run.

Some virtual machines report AMX in the CPU flags but trap the instructions: llama.cpp then dies
(SIGILL/SIGSEGV in `ggml_backend_amx_mul_mat`) on the first quantized matmul, while f16 works. The
AMX kernels live in llama.cpp's "extra buffer types", so the toolkit probes once per machine and
llama.cpp build, in a child process that is allowed to crash, whether a quantized model decodes
with them; if not, every model is loaded with `use_extra_bufts = False`. The answer is cached in
`$TOOLKIT_HOME/llamacpp-probe.json`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from toolkit.errors import ModelError
from toolkit.io import toolkit_home, write_json
from toolkit.models import embedded_gguf
from toolkit.runtime.threads import thread_count

# Runs in a child process: load a quantized GGUF with llama.cpp's defaults, evaluate a prompt of
# several tokens (a one-token prompt never reaches the batched matmul kernels that crash) and
# decode a few tokens.
_PROBE = """
import os, sys, llama_cpp
m = llama_cpp.Llama(sys.argv[1], n_ctx=256, n_threads=len(os.sched_getaffinity(0)), verbose=False)
m.create_completion("A short probe of matrix kernels on this CPU. " * 6, max_tokens=4, temperature=0)
print("ok")
"""


def cpu_fingerprint() -> str:
    """CPU model and flags plus the llama.cpp version: the probe result holds for exactly these."""
    flags = model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].strip()
    try:
        from importlib.metadata import version

        llama_version = version("llama-cpp-python")
    except Exception:
        llama_version = "?"
    text = f"{platform.machine()}|{model}|{flags}|{llama_version}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# the flags that decide which llama.cpp kernels run (and so which sampled texts come out)
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd")


def machine_summary(*, probe: bool = True) -> dict:
    """The facts that make measured numbers differ between machines, for reports to record beside
    them: CPU model, the SIMD flags llama.cpp's kernels depend on, the llama.cpp version, whether
    the extra buffer types are on (`probe=False` leaves that out: no model is loaded), and the
    batched engine's prefill choice where it has been probed on this machine."""
    try:
        from importlib.metadata import version

        llama_version = version("llama-cpp-python")
    except Exception:
        llama_version = "?"
    flags = cpu_flags()
    summary = {"cpu": cpu_model(), "machine": platform.machine(), "cores": default_threads(),
               "simd": [f for f in KERNEL_FLAGS if f in flags], "llama_cpp_python": llama_version}
    if probe:
        summary["extra_bufts"] = probe_extra_bufts()["extra_bufts"]
    return summary


def describe_machine(summary: dict) -> str:
    """One line for a report: `AMD EPYC, 2 cores, avx2 avx512f; llama-cpp-python 0.3.36, extra buffer types off`."""
    simd = " ".join(summary.get("simd", [])) or "no SIMD flags found"
    text = f"{summary.get('cpu', '?')}, {summary.get('cores', '?')} cores, {simd}; llama-cpp-python {summary.get('llama_cpp_python', '?')}"
    if "extra_bufts" in summary:
        text += f", extra buffer types {'on' if summary['extra_bufts'] else 'off'}"
    return text


def probe_extra_bufts(gguf: Path | None = None, *, refresh: bool = False) -> dict:
    """Whether llama.cpp's extra buffer types (AMX, repacking) work here; probed once, then cached.

    Returns {"extra_bufts": bool, "detail": str}. `TOOLKIT_LLAMA_EXTRA_BUFTS=0/1` overrides.
    """
    forced = os.environ.get("TOOLKIT_LLAMA_EXTRA_BUFTS")
    if forced in {"0", "1"}:
        return {"extra_bufts": forced == "1", "detail": "set by TOOLKIT_LLAMA_EXTRA_BUFTS"}
    cache = toolkit_home() / "llamacpp-probe.json"
    key = cpu_fingerprint()
    if not refresh and cache.exists():
        with contextlib.suppress(ValueError, OSError):
            saved = json.loads(cache.read_text())
            if saved.get("key") == key:
                return saved["result"]
    if gguf is None:
        gguf = embedded_gguf()
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(gguf)], capture_output=True, text=True, timeout=300)
    if proc.returncode == 0 and "ok" in proc.stdout:
        result = {"extra_bufts": True, "detail": "quantized decode works with extra buffer types"}
    else:
        sig = -proc.returncode if proc.returncode < 0 else proc.returncode - 128
        name = signal.Signals(sig).name if 0 < sig < 65 else f"exit {proc.returncode}"
        amx = " (CPU reports AMX)" if any(f.startswith("amx") for f in cpu_flags()) else ""
        result = {"extra_bufts": False, "detail": f"quantized decode crashed with {name}{amx}; extra buffer types disabled"}
    write_json(cache, {"key": key, "result": result})
    return result


@contextlib.contextmanager
def _model_params(use_extra_bufts: bool) -> Iterator[None]:
    """`Llama()` does not expose `use_extra_bufts`; set it on the defaults it starts from."""
    import llama_cpp

    module = llama_cpp.llama.llama_cpp
    original = module.llama_model_default_params

    def patched():
        params = original()
        params.use_extra_bufts = use_extra_bufts
        return params

    module.llama_model_default_params = patched
    try:
        yield
    finally:
        module.llama_model_default_params = original


def default_threads() -> int:
    """llama.cpp's thread count: `--threads` (the CLI puts it in TOOLKIT_THREADS), else
    TOOLKIT_THREADS, else the CPUs this process may run on (toolkit.runtime.threads)."""
    return thread_count()[0]


# ggml's log levels as this llama.cpp numbers them (llama-cpp-python's own callback reads an older
# numbering, so WARN lines such as Gemma 3's "using full-size SWA cache" reached every user)
_LOG_ERROR, _LOG_CONT = 4, 5
_log_state = {"callback": None, "last": 0}


def quiet_logs() -> None:
    """Route llama.cpp's log through a callback that writes only its errors to stderr, or every
    line with `toolkit --verbose` (TOOLKIT_VERBOSE=1). Idempotent; called before each load."""
    if _log_state["callback"] is not None:
        return
    import ctypes
    import sys

    import llama_cpp

    verbose = os.environ.get("TOOLKIT_VERBOSE", "") not in ("", "0")

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data) -> None:
        if level != _LOG_CONT:
            _log_state["last"] = level
        if verbose or _log_state["last"] == _LOG_ERROR:
            print(text.decode("utf-8", "replace"), end="", flush=True, file=sys.stderr)

    _log_state["callback"] = callback  # kept alive: llama.cpp holds a pointer to it
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def load(gguf: Path, *, n_ctx: int = 2048, n_threads: int | None = None, seed: int = 0, lora: Path | None = None,
         **kwargs):
    """A `llama_cpp.Llama` for `gguf`, safe on this CPU (see the module docstring).

    `lora`: a GGUF LoRA (`toolkit export BASE --adapter RUN`) that llama.cpp applies at load, at
    scale 1 (alpha/rank, as PEFT trained it). llama-cpp-python then reads the base into memory
    instead of mapping it."""
    from llama_cpp import Llama

    gguf = Path(gguf)
    for path in (gguf, lora):
        if path is not None and not Path(path).exists():
            raise ModelError(f"GGUF file {path} does not exist", fix="check the path or run `toolkit export`")
    if lora is not None:
        kwargs["lora_path"] = str(lora)
    extra = probe_extra_bufts()["extra_bufts"]
    quiet_logs()
    with _model_params(extra):
        try:
            threads = n_threads or default_threads()
            # n_threads_batch defaults to every CPU even when n_threads is lower; on a busy
            # machine those extra threads spin, so both follow n_threads.
            kwargs.setdefault("n_threads_batch", threads)
            return Llama(str(gguf), n_ctx=n_ctx, n_threads=threads, seed=seed, verbose=False, **kwargs)
        except ValueError as exc:  # llama-cpp-python reports a bad file (or a LoRA for another base) as ValueError
            what = f"{gguf} with LoRA {lora}" if lora is not None else str(gguf)
            fix = "is the LoRA exported for this base GGUF?" if lora is not None and "LoRA" in str(exc) else "is it a complete GGUF file?"
            raise ModelError(f"llama.cpp cannot load {what}: {exc}", fix=fix) from None


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence C-level stderr (llama.cpp logs past `verbose=False` for vocab-only loads)."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def load_vocab(gguf: Path):
    """A `Llama` with only the vocabulary and metadata loaded (no weights), quietly."""
    with quiet_stderr():
        return load(gguf, n_ctx=256, vocab_only=True)


def read_metadata(gguf: Path) -> dict[str, str]:
    """A GGUF's key/value metadata as llama.cpp reads it (values as strings; no weights loaded)."""
    llm = load_vocab(gguf)
    try:
        return dict(llm.metadata)
    finally:
        llm.close()
