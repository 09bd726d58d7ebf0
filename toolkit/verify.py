"""`toolkit verify`: does the GGUF behave like the HF model it came from?

Fidelity: the HF model greedily continues N validation prompts; both models then score the same
token sequence, and we compare their next-token distributions at every generated position: top-1
agreement and mean KL(P_hf || P_gguf). Templates: the same conversation rendered by the HF chat
template, the template embedded in the GGUF and the Modelfile TEMPLATE must be the same string,
and every end-of-turn token must be a Modelfile stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import ToolkitError

# Minimum top-1 agreement per GGUF type on the default model (issue 4); other types are reported.
TARGETS = {"F32": 0.99, "F16": 0.99, "BF16": 0.99, "Q8_0": 0.97}

PROBE_CONVERSATION = [
    {"role": "user", "content": "What is a learning-rate warmup?"},
    {"role": "assistant", "content": "A short phase where the learning rate rises from a small value."},
    {"role": "user", "content": "Why does it help?"},
]


class VerifyError(ToolkitError):
    """The GGUF or its Modelfile does not match the HF model."""

    exit_code = 1


@dataclass
class Fidelity:
    """Agreement of one GGUF with the HF model over the generated positions."""

    gguf: str
    type: str
    positions: int
    top1_agreement: float
    mean_kl: float
    max_kl: float
    target: float | None = None
    passed: bool = True
    per_prompt: list[float] = field(default_factory=list)


def gguf_type(path: Path) -> str:
    """The file's quantization type name (F16, Q8_0, Q4_K_M, ...) from its metadata."""
    from .export import gguf_metadata

    ftype = gguf_metadata(path).get("general.file_type")
    import llama_cpp

    for name in dir(llama_cpp):
        if name.startswith("LLAMA_FTYPE_") and getattr(llama_cpp, name) == ftype:
            return name.removeprefix("LLAMA_FTYPE_MOSTLY_").removeprefix("LLAMA_FTYPE_ALL_")
    return f"type {ftype}"


def reference_sequences(hf_dir: Path, prompts: list[str], n_tokens: int) -> tuple[list[list[int]], list[int], list]:
    """Token sequences (prompt + greedy HF continuation), prompt lengths and HF log-probs per position."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    seqs, starts, logprobs = [], [], []
    with torch.no_grad():
        for prompt in prompts:
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)["input_ids"]
            out = model.generate(ids, max_new_tokens=n_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            logits = model(out).logits[0, ids.shape[1] - 1 : out.shape[1] - 1]
            seqs.append(out[0].tolist())
            starts.append(ids.shape[1])
            logprobs.append(torch.log_softmax(logits.double(), dim=-1))
    return seqs, starts, logprobs


def compare_gguf(gguf: Path, seqs: list[list[int]], starts: list[int], hf_logprobs: list) -> Fidelity:
    """Score `seqs` with llama.cpp and compare with the HF log-probs."""
    import numpy as np
    import torch

    from .llamacpp import load

    kind = gguf_type(gguf)
    llm = load(gguf, n_ctx=max(len(s) for s in seqs) + 8, logits_all=True)
    agree = total = 0
    kls: list[float] = []
    per_prompt = []
    try:
        for seq, start, hf in zip(seqs, starts, hf_logprobs):
            llm.reset()
            llm.eval(seq[:-1])
            scores = torch.from_numpy(np.array(llm.scores[start - 1 : len(seq) - 1], dtype=np.float64))
            gg = torch.log_softmax(scores, dim=-1)
            same = (gg.argmax(-1) == hf.argmax(-1)).sum().item()
            kl = (hf.exp() * (hf - gg)).sum(-1)
            agree += same
            total += len(kl)
            kls.extend(kl.tolist())
            per_prompt.append(same / max(1, len(kl)))
    finally:
        llm.close()
    target = TARGETS.get(kind)
    top1 = agree / max(1, total)
    return Fidelity(str(gguf), kind, total, top1, sum(kls) / max(1, len(kls)), max(kls, default=0.0), target,
                    target is None or top1 >= target, per_prompt)
