"""How `toolkit serve` shows its models to Ollama clients: the entries of /api/tags and /api/ps,
the `details` of /api/show, digests and modification times, in Ollama's shapes and units.

Reads a `ServedModel` (its files and GGUF metadata) and never changes it; which models are served,
and how they generate, is `toolkit.serve.registry`'s business.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from toolkit.models import ResolvedModel, file_digest
from toolkit.serve.registry import ServedModel

# general.file_type (llama_ftype) -> Ollama's quantization_level
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
              11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
              17: "Q5_K_M", 18: "Q6_K", 30: "IQ4_XS", 32: "BF16"}


def stamp(path: Path) -> str:
    """A file's modification time as Ollama writes times (RFC 3339, UTC)."""
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat().replace("+00:00", "Z")


def human_count(count: str) -> str:
    """A parameter count the way Ollama shows it: "134515008" -> "134.52M" ("" if not a number)."""
    if not count.isdigit():
        return ""
    n = int(count)
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.2f}K"


def digest(model: ServedModel) -> str:
    """The model's sha256 as Ollama lists it: the GGUF's, or with a LoRA one hash naming base and
    LoRA together (Ollama's digests are one sha256). File hashes are remembered by `file_digest`,
    so the ~100 MB are read once, and only when a client asks."""
    if model.lora is None:
        return file_digest(model.gguf)
    weights = ResolvedModel(model.name, None, model.gguf, model.lora).weights_id()
    return hashlib.sha256(weights.encode()).hexdigest()


def details(model: ServedModel) -> dict[str, Any]:
    """/api/show's and /api/tags' `details`: format, family, parameter size, quantization level."""
    arch = model.meta.get("general.architecture", "")
    file_type = model.meta.get("general.file_type", "")
    level = FILE_TYPES.get(int(file_type), f"type {file_type}") if file_type.isdigit() else "unknown"
    return {"parent_model": "", "format": "gguf", "family": arch, "families": [arch] if arch else [],
            "parameter_size": model.meta.get("general.size_label") or human_count(model.meta.get("general.parameter_count", "")),
            "quantization_level": level}


def listing(model: ServedModel) -> dict[str, Any]:
    """The model as /api/tags lists it (and /api/ps, with its running fields added)."""
    return {"name": model.name, "model": model.name, "modified_at": stamp(model.gguf),
            "size": model.size(), "digest": digest(model), "details": details(model)}
