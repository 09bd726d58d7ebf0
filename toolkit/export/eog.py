"""End-of-generation tokens in a fresh GGUF: every token the HF generation config stops on must end
generation in llama.cpp too, or llama.cpp (and `toolkit generate`, which applies no Modelfile
stops) writes past the end of a reply.

llama.cpp ends generation at the GGUF's EOS, EOT and EOM ids and at a few token texts it knows
(`<|im_end|>`, `<end_of_turn>`, ...). The converter sets EOS from the tokenizer, so a stop token of
our own, such as the tagged format's `</approach>`, is none of these: `mark_end_of_turn` writes it
into the GGUF as its EOT (and a second one as EOM) with gguf-py's metadata rewriter, in a child
process like the converter. The GGUF is still at its temporary name then: export checks it after,
and only a file that passes is moved into place.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from toolkit.export.outputs import run_tool
from toolkit.runtime.llamacpp import load_vocab

SLOTS = ("eot", "eom")  # the GGUF's end-of-generation ids besides EOS, filled in this order


def stop_ids(hf_dir: Path) -> list[int]:
    """The token ids the HF generation config ends generation on."""
    path = hf_dir / "generation_config.json"
    eos = json.loads(path.read_text()).get("eos_token_id", []) if path.exists() else []
    return [int(t) for t in (eos if isinstance(eos, list) else [eos]) if t is not None]


def not_ending(gguf: Path, ids: list[int]) -> tuple[list[int], list[str]]:
    """(those of `ids` inside the vocabulary that do not end generation in llama.cpp, the SLOTS
    the GGUF leaves free)."""
    import llama_cpp

    llm = load_vocab(gguf)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        missing = [t for t in ids if 0 <= t < n_vocab and not llama_cpp.llama_vocab_is_eog(vocab, t)]
        return missing, [slot for slot in SLOTS if f"tokenizer.ggml.{slot}_token_id" not in llm.metadata]
    finally:
        llm.close()


def mark_end_of_turn(gguf: Path, hf_dir: Path, converter: Path) -> list[int]:
    """Make the generation config's stop tokens that llama.cpp would not stop on the EOT/EOM ids
    of `gguf` (rewritten in place); returns the ids written. Ids that fit no free slot, or lie
    outside the vocabulary, are left for `check_tokens` to report."""
    missing, free = not_ending(gguf, stop_ids(hf_dir))
    marks = list(zip(free, missing))
    if not marks:
        return []
    rewritten = gguf.with_name(gguf.name + ".eog")
    args = [a for slot, tid in marks for a in ("--special-token-by-id", slot, str(tid))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(converter), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    try:
        run_tool([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(gguf), str(rewritten), "--force", *args],
                 f"marking end-of-turn tokens in {gguf.name}", env)
        os.replace(rewritten, gguf)
    finally:
        rewritten.unlink(missing_ok=True)
    return [tid for _, tid in marks]
