"""How `toolkit serve` shows a model to Ollama clients (toolkit/serve/presentation.py), on small
files standing in for a GGUF and its LoRA: no model is loaded."""

from __future__ import annotations

import hashlib
import os
import re

from toolkit.serve.presentation import details, digest, listing, stamp
from toolkit.serve.registry import ServedModel


def test_listing_digest_and_details_in_ollama_shapes(tmp_path):
    gguf, lora = tmp_path / "base.gguf", tmp_path / "lora.gguf"
    gguf.write_bytes(b"base weights" * 100)
    lora.write_bytes(b"lora weights")
    os.utime(gguf, (0, 86400 + 1.5))
    meta = {"general.architecture": "llama", "general.file_type": "15", "general.parameter_count": "134515008"}
    plain, tuned = ServedModel("base:latest", gguf, meta=meta), ServedModel("tuned:latest", gguf, lora, meta=meta)
    assert digest(plain) == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest(tuned)) and digest(tuned) != digest(plain)  # the LoRA counts
    assert details(plain) == {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                              "parameter_size": "134.52M", "quantization_level": "Q4_K_M"}
    assert details(ServedModel("x", gguf, meta={"general.file_type": "99", "general.size_label": "7B"}))[
        "quantization_level"] == "type 99"
    assert stamp(gguf) == "1970-01-02T00:00:01.500000Z"
    row = listing(tuned)
    assert row == {"name": "tuned:latest", "model": "tuned:latest", "modified_at": stamp(gguf),
                   "size": gguf.stat().st_size + lora.stat().st_size, "digest": digest(tuned), "details": details(tuned)}
